"""Run by tests/test_simd_width.py in a subprocess (``python tests/simd_width_probe.py OUT``),
whose environment may set VNUMBA_SIMD_BITS: computes every CPU kernel that uses explicit
vectors, on rows of every awkward width, and a whole small network (forward pass and the
exact gradient of the training loss), and saves the results with the lane counts the
compiled kernels report and, per kernel of vnumba.ops.fused that ran, how often Numba loaded it
from its on-disk cache and how often it compiled it (``cache:NAME`` = [hits, misses]) into OUT
(.npz)."""
import sys

import numpy as np
from numba.core.registry import CPUDispatcher

from vnumba.ops import fused, simd
from vnumba.ops.conv import conv_adjoint, corr_valid, corr_valid_adjoint, corr_valid_kernel_grad
from vnumba.ops.rbf import RBFGrid, conv_rbf_apply, rbf_apply, rbf_weight_grad
from vnumba.vn.config import ModelConfig
from vnumba.vn.model import forward, init_params, loss_and_grad

# narrow rows (scalar and one-vector paths at every width), a vector ± 1 at 8 and 16 lanes,
# row ends after 4- and 8-vector tiles, the article's width
WIDTHS = (1, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 97, 129, 150, 161, 300)


def main(path):
    out = {"lanes": np.array([*fused.vector_lanes(np.zeros(1, np.float32)),
                              *fused.vector_lanes(np.zeros(1, np.float64))]),
           "bits": np.array(simd.VECTOR_BITS)}
    rng = np.random.default_rng(2026)
    cfg = ModelConfig()
    grid = RBFGrid(cfg)
    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        for W in WIDTHS:
            H = 3 if W > 100 else 4
            xp = rng.standard_normal((2, 3, H + 4, W + 4)).astype(dtype)  # output rows of width W
            k = rng.standard_normal((5, 3, 5, 5)).astype(dtype)
            y = corr_valid(xp, k)
            out[f"{tag}/conv/{W}"] = y
            out[f"{tag}/adjoint/{W}"] = corr_valid_adjoint(y, k)
            out[f"{tag}/kgrad/{W}"] = corr_valid_kernel_grad(y, xp, 5)
            v = rng.uniform(-1.2, 1.2, (1, 2, H, W)).astype(dtype)
            v[0, 0, 0, :2] = [np.nan, 7.0][:W]  # NaN and a value out of reach
            w = rng.standard_normal((2, grid.n_w)).astype(dtype)
            for order in (0, 1, 2):
                for j, a in enumerate(rbf_apply(v, w, grid, order=order)):
                    out[f"{tag}/rbf{order}.{j}/{W}"] = a
            # the activation in the convolution's epilogue, the product in the adjoint's padding
            xs = xp  # rows of width W + 4 (symmetric padding needs W >= 2 here)
            ws = rng.standard_normal((5, grid.n_w)).astype(dtype)
            for order in (0, 1, 2):
                res = conv_rbf_apply(xs, k * 0.2, ws, grid, order=order, keep_conv=True)
                for j, a in enumerate(res):
                    out[f"{tag}/convrbf{order}.{j}/{W}"] = a
            ys = res[0]                          # (2, 5, H + 4, W + 4)
            out[f"{tag}/scaled_adjoint/{W}"] = conv_adjoint(ys[:, 1:4], k[1:4],
                                                            scale=ys[:, :3] * 0.5)
            c0 = rng.standard_normal(v.shape).astype(dtype)
            out[f"{tag}/rbf_wgrad/{W}"] = rbf_weight_grad(np.nan_to_num(v), c0, c0 * 0.5, grid)
    # a whole small network: forward pass, loss and the gradient of every parameter
    small = ModelConfig(n_steps=2)
    params = init_params(small, np.random.default_rng(7))
    u0 = rng.uniform(0, 1, (2, 3, 21, 37)).astype(np.float32)
    gu = np.clip(u0 + 0.05, 0, 1).astype(np.float32)
    gm = (rng.uniform(0, 1, (2, 21, 37)) > 0.7).astype(np.float32)
    u_T, m_T = forward(params, small, u0)[:2]
    out["net/u_T"], out["net/m_T"] = u_T, m_T
    loss, grads = loss_and_grad(params, small, u0, gu, gm)[:2]
    out["net/loss"] = np.asarray(loss)
    for name, g in grads.items():
        out[f"net/grad/{name}"] = g
    for name, disp in vars(fused).items():
        if isinstance(disp, CPUDispatcher) and (disp.stats.cache_hits or disp.stats.cache_misses):
            st = disp.stats
            out[f"cache:{name}"] = np.array([sum(st.cache_hits.values()), sum(st.cache_misses.values())])
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
