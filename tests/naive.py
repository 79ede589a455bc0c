"""Plain, slow NumPy references for every kernel (compare the Numba/CUDA kernels to these).

Each helper area appends its own block under a clearly separated header.
"""
import numpy as np

# --- core network references (vnumba.conv, vnumba.rbf, vnumba.projections) ---


def pad_symmetric(x, r):
    return np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="symmetric")


def corr_valid(xp, k):
    """y[n,o,p,q] = sum_{c,i,j} k[o,c,i,j] xp[n,c,p+i,q+j]."""
    N, C, Hp, Wp = xp.shape
    O, _, ks, _ = k.shape
    H, W = Hp - ks + 1, Wp - ks + 1
    y = np.zeros((N, O, H, W), dtype=np.float64)
    for i in range(ks):
        for j in range(ks):
            y += np.einsum("oc,nchw->nohw", k[:, :, i, j], xp[:, :, i:i + H, j:j + W])
    return y


def corr_valid_adjoint(y, k):
    N, O, H, W = y.shape
    _, C, ks, _ = k.shape
    xp = np.zeros((N, C, H + ks - 1, W + ks - 1), dtype=np.float64)
    for i in range(ks):
        for j in range(ks):
            xp[:, :, i:i + H, j:j + W] += np.einsum("oc,nohw->nchw", k[:, :, i, j], y)
    return xp


def corr_valid_kernel_grad(y, xp, ks):
    N, O, H, W = y.shape
    C = xp.shape[1]
    g = np.zeros((O, C, ks, ks), dtype=np.float64)
    for i in range(ks):
        for j in range(ks):
            g[:, :, i, j] = np.einsum("nohw,nchw->oc", y, xp[:, :, i:i + H, j:j + W])
    return g


def pad_symmetric_adjoint(xp, r):
    """Adjoint of symmetric padding built from its definition: the transpose of the 0/1
    matrix that copies each source pixel to its padded positions."""
    N, C, Hp, Wp = xp.shape
    H, W = Hp - 2 * r, Wp - 2 * r

    def src(i, n):
        s = i - r
        if s < 0:
            s = -s - 1
        elif s >= n:
            s = 2 * n - s - 1
        return s

    out = np.zeros((N, C, H, W), dtype=np.float64)
    for p in range(Hp):
        for q in range(Wp):
            out[:, :, src(p, H), src(q, W)] += xp[:, :, p, q]
    return out


def rbf(x, w, centres, sigma):
    """phi, phi', phi'' with every Gaussian evaluated (no window)."""
    d = (x[..., None] - centres) / sigma
    G = np.exp(-0.5 * d * d)
    wb = w[None, :, None, None, :]
    v0 = np.sum(wb * G, axis=-1)
    v1 = np.sum(wb * G * (-d / sigma), axis=-1)
    v2 = np.sum(wb * G * (d * d - 1.0) / sigma**2, axis=-1)
    return v0, v1, v2


def rbf_weight_grad(x, c0, c1, centres, sigma):
    d = (x[..., None] - centres) / sigma
    G = np.exp(-0.5 * d * d)
    t = c0[..., None] * G
    if c1 is not None:
        t = t + c1[..., None] * G * (-d / sigma)
    return t.sum(axis=(0, 2, 3))


def project_l1_ball(v, radius):
    """Euclidean projection onto the l1 ball via bisection on the soft threshold."""
    v = np.asarray(v, dtype=np.float64)
    if np.abs(v).sum() <= radius:
        return v.copy()
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        t = 0.5 * (lo + hi)
        if np.maximum(np.abs(v) - t, 0).sum() > radius:
            lo = t
        else:
            hi = t
    t = 0.5 * (lo + hi)
    return np.sign(v) * np.maximum(np.abs(v) - t, 0)
