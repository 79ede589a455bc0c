"""Plain, slow NumPy references for every kernel (compare the Numba/CUDA kernels to these).

Each helper area appends its own block under a clearly separated header.
"""
import numpy as np

# --- core network references (vnumba.ops.conv, vnumba.ops.rbf, vnumba.ops.projections) ---


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


# --- prediction / evaluation references (vnumba.evaluate, vnumba.analysis.objects) ---


def match_points_bruteforce(pred, gt, radius):
    """Best one-to-one matching by exhaustive search (tiny inputs only).

    Returns ``(n_pairs, total_distance)`` of the matching with the most pairs at distance
    ``<= radius`` and, among those, the smallest total distance.
    """
    import itertools
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    best = (0, 0.0)
    P, G = len(pred), len(gt)
    # Every injective partial map pred -> gt: choose for each pred a gt index or None.
    for choice in itertools.product(range(-1, G), repeat=P):
        used = [c for c in choice if c >= 0]
        if len(used) != len(set(used)):
            continue
        n, tot, ok = 0, 0.0, True
        for i, j in enumerate(choice):
            if j < 0:
                continue
            d = float(np.hypot(*(pred[i] - gt[j])))
            if d > radius:
                ok = False
                break
            n += 1
            tot += d
        if ok and (n > best[0] or (n == best[0] and n > 0 and tot < best[1] - 1e-12)):
            best = (n, tot)
    return best


def disc_fraction(coverage, center, radius):
    """Fraction of the in-image pixels within ``radius`` of ``round(center)`` (halves up)
    that are covered; pixel by pixel."""
    H, W = coverage.shape
    cy, cx = int(np.floor(center[0] + 0.5)), int(np.floor(center[1] + 0.5))
    n = hit = 0
    for y in range(H):
        for x in range(W):
            if (y - cy) ** 2 + (x - cx) ** 2 <= radius * radius:
                n += 1
                hit += bool(coverage[y, x])
    return hit / n if n else 0.0


# --- U-Net references (vnumba.unet.kernels, vnumba.unet.network) ---


def unet_zero_pad(x, r):
    return np.pad(x, [(0, 0), (0, 0), (r, r), (r, r)])


def unet_conv2d(x, w, b, relu=False):
    """Zero-padded "same" cross-correlation with bias, one tap at a time."""
    N, C, H, W = x.shape
    ks = w.shape[2]
    xp = unet_zero_pad(x, ks // 2)
    y = np.zeros((N, w.shape[0], H, W), dtype=np.float64)
    for i in range(ks):
        for j in range(ks):
            y += np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i:i + H, j:j + W])
    y += b[None, :, None, None]
    return np.maximum(y, 0.0) if relu else y


def unet_conv2d_input_adjoint(dy, w):
    """Scatter every output pixel back through the filter onto the padded input, then drop the
    border (the transpose of "pad with zeros, then correlate")."""
    N, O, H, W = dy.shape
    ks = w.shape[2]
    r = ks // 2
    dxp = np.zeros((N, w.shape[1], H + 2 * r, W + 2 * r))
    for i in range(ks):
        for j in range(ks):
            dxp[:, :, i:i + H, j:j + W] += np.einsum("oc,nohw->nchw", w[:, :, i, j], dy)
    return dxp[:, :, r:r + H, r:r + W]


def unet_conv2d_param_grad(dy, x, ks):
    N, O, H, W = dy.shape
    xp = unet_zero_pad(x, ks // 2)
    dw = np.zeros((O, x.shape[1], ks, ks))
    for i in range(ks):
        for j in range(ks):
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, xp[:, :, i:i + H, j:j + W])
    return dw, dy.sum(axis=(0, 2, 3))


def unet_relu_backward(dy, y):
    return np.where(y > 0, dy, 0.0)


def unet_maxpool2(x):
    """Values and window positions 2a+b of the maxima (first on ties)."""
    N, C, H, W = x.shape
    win = x.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2, W // 2, 4)
    return win.max(axis=-1), win.argmax(axis=-1)


def unet_maxpool2_backward(dy, idx):
    N, C, Ho, Wo = dy.shape
    dx = np.zeros((N, C, 2 * Ho, 2 * Wo))
    for n in range(N):
        for c in range(C):
            for p in range(Ho):
                for q in range(Wo):
                    a, b = divmod(int(idx[n, c, p, q]), 2)
                    dx[n, c, 2 * p + a, 2 * q + b] = dy[n, c, p, q]
    return dx


def unet_upsample2(x):
    return np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)


def unet_upsample2_adjoint(dy):
    N, C, H, W = dy.shape
    return dy.reshape(N, C, H // 2, 2, W // 2, 2).sum(axis=(3, 5))


def unet_sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def unet_output_head(z, u0):
    """Mask (N, H, W) for one logit channel, (N, C_m, H, W) for C_m of them."""
    C = u0.shape[1]
    m = unet_sigmoid(z[:, C:])
    return np.clip(u0 + z[:, :C], 0.0, 1.0), (m[:, 0] if m.shape[1] == 1 else m)


def unet_output_head_backward(ubar, mbar, z, u0):
    C = u0.shape[1]
    v = u0 + z[:, :C]
    m = unet_sigmoid(z[:, C:])
    mb = mbar[:, None] if mbar.ndim == 3 else mbar
    return np.concatenate([np.where((v > 0) & (v < 1), ubar, 0.0), mb * m * (1 - m)], axis=1)


def unet_forward(params, scales, convs_per_scale, u0):
    """Whole U-Net in float64 from the references above, written from the architecture
    description (not from vnumba.unet.network).

    Returns
    -------
    u, m : the outputs
    pre : list of every convolution's pre-activation (ReLU kinks at 0)
    gaps : list of every pooling window's (largest - second largest) value where the largest
        is > 0 (ties switch the arg-max), inf elsewhere
    v : u0 + residual before the clip (kinks at 0 and 1)
    """
    pre, gaps = [], []
    h = u0
    skips = []

    def conv_relu(name, x):
        y = unet_conv2d(x, params[name + "_w"], params[name + "_b"])
        pre.append(y)
        return np.maximum(y, 0.0)

    for s in range(scales):
        for k in range(convs_per_scale):
            h = conv_relu(f"enc{s}_conv{k}", h)
        if s < scales - 1:
            skips.append(h)
            N, C, H, W = h.shape
            win = np.sort(h.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5)
                          .reshape(N, C, H // 2, W // 2, 4), axis=-1)
            # All-zero windows (every input dead) do not switch: their gradient is 0 anyway.
            gaps.append(np.where(win[..., 3] > 0, win[..., 3] - win[..., 2], np.inf))
            h = win[..., 3]
    for s in range(scales - 2, -1, -1):
        h = np.concatenate([unet_upsample2(h), skips[s]], axis=1)
        for k in range(convs_per_scale):
            h = conv_relu(f"dec{s}_conv{k}", h)
    z = unet_conv2d(h, params["head_w"], params["head_b"])
    C = u0.shape[1]
    u, m = unet_output_head(z, u0)
    return u, m, pre, gaps, u0 + z[:, :C]


# --- synthetic data generator references (synth.fmm, synth.layers, synth.masks) ---


def synth_godunov_solution(sources, speed, max_iter=100000):
    """Discrete upwind Eikonal solution by Jacobi iteration (slow; same equations as FMM).

    T = 0 on sources; elsewhere T = min(T, update(a, b)) with a/b the smaller vertical /
    horizontal neighbour values, iterated until nothing changes.
    """
    src = np.asarray(sources, bool)
    f = 1.0 / np.asarray(speed, np.float64)
    H, W = src.shape
    T = np.where(src, 0.0, np.inf)
    for _ in range(max_iter):
        P = np.pad(T, 1, constant_values=np.inf)
        a = np.minimum(P[:-2, 1:-1], P[2:, 1:-1])
        b = np.minimum(P[1:-1, :-2], P[1:-1, 2:])
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        with np.errstate(invalid="ignore"):  # inf - inf where no neighbour is known yet
            two = 0.5 * (lo + hi + np.sqrt(np.maximum(2 * f * f - (hi - lo) ** 2, 0.0)))
            new = np.where(hi - lo >= f, lo + f, two)
        new = np.where(np.isfinite(lo), new, np.inf)
        new = np.where(src, 0.0, np.minimum(T, new))
        if np.array_equal(new, T):
            return T
        T = new
    raise RuntimeError("no convergence")


def synth_labels_from_times(T, source_labels):
    """First-arrival labels: visit pixels by increasing T; each takes the label of its
    4-neighbour with the smallest T (first in the order up, down, left, right)."""
    H, W = T.shape
    lab = np.array(source_labels, dtype=np.int64)
    for idx in np.argsort(T, axis=None, kind="stable"):
        i, j = divmod(int(idx), W)
        if lab[i, j] >= 0 or not np.isfinite(T[i, j]):
            continue
        best = np.inf
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ii, jj = i + di, j + dj
            if 0 <= ii < H and 0 <= jj < W and T[ii, jj] < best:
                best = T[ii, jj]
                lab[i, j] = lab[ii, jj]
    return lab


def synth_voronoi(shape, seeds):
    """Nearest seed by a per-pixel loop (ties to the lowest index)."""
    H, W = shape
    out = np.zeros((H, W), np.int64)
    for y in range(H):
        for x in range(W):
            best, arg = np.inf, -1
            for k, (sy, sx) in enumerate(seeds):
                d = (y - sy) ** 2 + (x - sx) ** 2
                if d < best:
                    best, arg = d, k
            out[y, x] = arg
    return out


def synth_ellipse_mask(shape, cy, cx, a, b, th):
    """Pixels whose centre satisfies the rotated-ellipse inequality."""
    y, x = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(th) + dy * np.sin(th)
    v = -dx * np.sin(th) + dy * np.cos(th)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def synth_place_ellipses(shape, params, region, blocked, centre_forbidden, no_overlap, max_count):
    """Sequential placement with full-image masks (see synth.layers.place_ellipses)."""
    labels = np.zeros(shape, np.int32)
    acc = []
    for k, (cy, cx, a, b, th) in enumerate(params):
        if len(acc) >= max_count:
            break
        iy, ix = int(np.floor(cy + 0.5)), int(np.floor(cx + 0.5))
        if not (0 <= iy < shape[0] and 0 <= ix < shape[1]):
            continue
        if not region[iy, ix] or centre_forbidden[iy, ix]:
            continue
        m = synth_ellipse_mask(shape, cy, cx, a, b, th)
        if np.any(m & blocked) or (no_overlap and np.any(m & (labels > 0))):
            continue
        labels[m] = len(acc) + 1
        acc.append(k)
    return labels, np.array(acc, np.int64)


def synth_merge(rgbas):
    """Closed form of bottom-to-top "over" compositing.

    alpha = 1 - prod_k (1 - a_k);  colour = sum_k c_k a_k prod_{j>k} (1 - a_j) / alpha.
    """
    st = np.asarray(rgbas, np.float64)
    K = st.shape[0]
    a = st[..., 3]
    num = np.zeros(st.shape[1:3] + (3,))
    for k in range(K):
        w = a[k].copy()
        for j in range(k + 1, K):
            w *= 1.0 - a[j]
        num += st[k, ..., :3] * w[..., None]
    alpha = 1.0 - np.prod(1.0 - a, axis=0)
    col = np.where(alpha[..., None] > 0, num / np.where(alpha > 0, alpha, 1.0)[..., None], 0.0)
    return np.concatenate([col, alpha[..., None]], axis=-1)


def synth_disc_concentration(coverage, centers, radius):
    """Per-centre loop over every image pixel."""
    H, W = coverage.shape
    y, x = np.mgrid[:H, :W]
    out = []
    for cy, cx in centers:
        iy, ix = np.floor(cy + 0.5), np.floor(cx + 0.5)
        d = (y - iy) ** 2 + (x - ix) ** 2 <= radius * radius
        out.append(coverage[d].sum() / d.sum() if d.sum() else 0.0)
    return np.array(out)


# --- scenario 3 references (synth.scenario3) ---


def lattice_blend(tiles, window, stride):
    """Weighted average of tiles (ny, nx, P, P, C) whose top-left corners are ``stride`` apart.

    Every output pixel is sum_k w_k(p) tile_k(p) / sum_k w_k(p) over the tiles covering it.
    """
    ny, nx, P = tiles.shape[0], tiles.shape[1], tiles.shape[2]
    C = tiles.shape[4]
    Hc, Wc = (ny - 1) * stride + P, (nx - 1) * stride + P
    num = np.zeros((Hc, Wc, C))
    den = np.zeros((Hc, Wc))
    for i in range(ny):
        for j in range(nx):
            for y in range(P):
                for x in range(P):
                    num[i * stride + y, j * stride + x] += window[y, x] * tiles[i, j, y, x]
                    den[i * stride + y, j * stride + x] += window[y, x]
    return num / den[..., None]


def warp_channels(src, channels, inv, offset, origin, shape):
    """synth.tme._warp by scipy: each channel as float32 through
    ``ndimage.affine_transform(order=1, mode="constant")``, scaled by float32 1/255."""
    from scipy import ndimage as ndi

    off = offset + inv @ np.asarray(origin, np.float64)
    out = []
    for k in range(*channels):
        c = ndi.affine_transform(np.asarray(src[..., k], np.float32), inv, offset=off,
                                 output_shape=tuple(shape), order=1, mode="constant", cval=0.0)
        out.append(c * np.float32(1.0 / 255.0))
    return np.stack(out, axis=-1)


def rescale_stacked(img, s, order):
    """synth.degrade.rescale's zoom as one call over all axes (factor 1 on the leading ones)."""
    from scipy import ndimage as ndi

    return ndi.zoom(img, (1.0,) * (img.ndim - 2) + (s, s), order=order, grid_mode=True,
                    mode="nearest")


# --- fused kernels (perf) (vnumba.ops.fused) ---


def corr_valid_adjoint_by_flip(y, k):
    """C_valid^T y written as a valid correlation of the zero-padded y with the flipped,
    channel-transposed kernel (the identity vnumba.ops.fused relies on), in plain NumPy."""
    ks = k.shape[2]
    yp = np.pad(y, ((0, 0), (0, 0), (ks - 1, ks - 1), (ks - 1, ks - 1)))
    return corr_valid(yp, k[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def rbf_window(x, w, mu0, h, sigma, n_w, radius):
    """phi, phi', phi'' summing only the 2r+1 centres nearest to x (clipped to the grid),
    zero beyond reach (t outside [-r-1, n_w+r]); every Gaussian by np.exp, float64."""
    x = np.asarray(x, dtype=np.float64)
    t = (x - mu0) / h
    inside = (t >= -radius - 1.0) & (t <= n_w + radius)
    j0 = np.floor(np.where(inside, t, 0.0) + 0.5).astype(np.int64)
    v = [np.zeros_like(x) for _ in range(3)]
    c = np.arange(x.shape[1])[None, :, None, None] * np.ones_like(j0)
    for k in range(-radius, radius + 1):
        j = j0 + k
        ok = inside & (j >= 0) & (j < n_w)
        jj = np.clip(j, 0, n_w - 1)
        d = (x - (mu0 + jj * h)) / sigma
        G = np.where(ok, np.exp(-0.5 * d * d), 0.0)
        wg = w[c, jj] * G
        v[0] += wg
        v[1] += -wg * d / sigma
        v[2] += wg * (d * d - 1.0) / sigma**2
    return tuple(v)


# --- synthetic data generator references, continued (synth.layers) ---


def synth_colorize(labels, colors):
    """RGBA of labelled objects by a per-pixel loop (synth.layers.colorize)."""
    H, W = labels.shape
    out = np.zeros((H, W, 4))
    for i in range(H):
        for j in range(W):
            if labels[i, j] > 0:
                out[i, j, :3] = colors[labels[i, j] - 1]
                out[i, j, 3] = 1.0
    return out


def synth_add_noise(rgba, noise):
    """Colour + noise clipped to [0, 1], alpha unchanged (synth.layers.Layer.noisy_rgba)."""
    out = np.array(rgba, np.float64)
    out[..., :3] = np.clip(out[..., :3] + noise, 0.0, 1.0)
    return out


# --- GPU backend references (vnumba.vn.gpu) ---


def gpu_project_zero_mean_l1_ball(v, radius):
    """Projection onto {sum = 0} ∩ {‖x‖₁ <= radius}: bisection on the mean multiplier ν of
    ``project_l1_ball(v − ν)`` (its sum is non-increasing in ν)."""
    v = np.asarray(v, dtype=np.float64)
    lo, hi = v.min(), v.max()
    for _ in range(200):
        nu = 0.5 * (lo + hi)
        if project_l1_ball(v - nu, radius).sum() > 0:
            lo = nu
        else:
            hi = nu
    return project_l1_ball(v - 0.5 * (lo + hi), radius)


def gpu_adam_step(p, g, m, v, t, lr, b1, b2, eps):
    """One Adam step (Kingma & Ba 2015) in float64; returns new (p, m, v)."""
    g = np.asarray(g, dtype=np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat = m / (1 - b1 ** t)
    vhat = v / (1 - b2 ** t)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v


def gpu_training_loss(u_T, gu, m_T, gm):
    """Loss mean_s [1/6‖u_T − g_u‖² + 1/2‖m_T − g_m‖²]/(HW) and its gradient, float64."""
    N, _, H, W = u_T.shape
    du = u_T.astype(np.float64) - gu
    dm = m_T.astype(np.float64) - gm
    s = 1.0 / (N * H * W)
    return s * ((du ** 2).sum() / 6 + (dm ** 2).sum() / 2), du * s / 3, dm * s


# --- training loss (3) reference (vnumba.ops.loss) ---


def training_loss(u_T, gu, m_T, gm, batch_size=None, mask_weights=None):
    """Loss (3) image by image in float64: ``Σ_s [1/6 ‖u_s − gu_s‖² + 1/2 Σ_c w_c ‖m_s,c − gm_s,c‖²]``
    divided by ``batch_size · H · W`` (default: the N images given; ``w_c`` = 1 unless
    ``mask_weights`` gives one per channel of an (N, C_m, H, W) mask), and its gradients
    ``∂/∂u = 2/6 (u − gu) / (batch_size H W)``, ``∂/∂m_c = 2/2 w_c (m_c − gm_c) / (batch_size H W)``."""
    N, _, H, W = u_T.shape
    n = N if batch_size is None else batch_size
    total = 0.0
    du = np.zeros(u_T.shape)
    dm = np.zeros(m_T.shape)
    for s in range(N):
        eu = u_T[s].astype(np.float64) - gu[s].astype(np.float64)
        em = m_T[s].astype(np.float64) - gm[s].astype(np.float64)
        w = np.ones(1) if mask_weights is None else np.asarray(mask_weights, np.float64)
        w = w.reshape((-1,) + (1,) * (em.ndim - 1)) if em.ndim == 3 else w[0]
        total += (eu ** 2).sum() / 6 + (w * em ** 2).sum() / 2
        du[s] = 2 * eu / 6 / (n * H * W)
        dm[s] = 2 * w * em / 2 / (n * H * W)
    return total / (n * H * W), du, dm


# ----------------------------------------------------------------------------- vn pointwise
def step_input_terms(f1, f2, d, g, dg):
    """NumPy reference of vnumba.vn.pointwise.step_input_terms: the expressions it replaced."""
    return f1 * dg + f2 * d * g, f1 * g, d * g, np.ascontiguousarray(dg)


def scaled_concat(a1, da, b1, db):
    return np.concatenate([a1 * da, b1 * db], axis=1)


def conv_rbf(x, k, w, mu0, h, sigma, n_w, radius):
    """phi, phi', phi'' of the symmetric-padded "same" correlation ``K x``
    (vnumba.ops.rbf.conv_rbf_apply): the plain references composed, float64."""
    ks = k.shape[2]
    a = corr_valid(pad_symmetric(np.asarray(x, np.float64), ks // 2), np.asarray(k, np.float64))
    return (a,) + rbf_window(a, w, mu0, h, sigma, n_w, radius)
