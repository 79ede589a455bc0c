"""The fast kernels of vnumba.ops.fused against plain NumPy references (tests/naive.py), on the
awkward cases the tiling creates: output channels not a multiple of the block of three, rows
narrower than a tile or a vector (each of the three code paths of the convolution), the
overlapping last tile of a row, float32 accuracy of long sums, the Taylor-polynomial
exponentials, and the RBF window semantics; and the SIMD primitives the convolution is
written with (vnumba.ops.simd) against NumPy."""
import math
from fractions import Fraction

import naive
import numpy as np
import pytest
from helpers import corr_data
from numba import njit

from vnumba.ops import fused, simd
from vnumba.ops.rbf import RBFGrid, rbf_apply, rbf_weight_grad
from vnumba.vn.config import ModelConfig


@pytest.mark.parametrize("N,C,O,H,W,ks", [(1, 3, 5, 7, 9, 5), (2, 2, 3, 6, 5, 3), (1, 1, 8, 5, 6, 1)])
def test_tiled_correlation_and_flipped_adjoint_match_reference(N, C, O, H, W, ks):
    xp, k, y = corr_data(np.random.default_rng(10), N, C, O, H, W, ks)
    np.testing.assert_allclose(fused.corr_valid_fast(xp, k), naive.corr_valid(xp, k), rtol=1e-12, atol=1e-12)
    # the flip identity itself, in NumPy, then the kernel that relies on it
    np.testing.assert_allclose(naive.corr_valid_adjoint_by_flip(y, k), naive.corr_valid_adjoint(y, k),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.corr_valid_adjoint_fast(y, k), naive.corr_valid_adjoint(y, k),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C,O,ks", [(2, 5, 5), (3, 4, 11), (1, 3, 7), (2, 6, 3), (1, 2, 1), (2, 1, 5)])
def test_tiled_correlation_matches_reference_for_every_kernel_size_and_channel_count(C, O, ks):
    # output channels filled up to a multiple of the block of three (1, 2, 4, 5)
    rng = np.random.default_rng(20 + ks)
    N, H, W = 2, 6, 9
    xp = rng.standard_normal((N, C, H + ks - 1, W + ks - 1))
    k = rng.standard_normal((O, C, ks, ks))
    got = fused.corr_valid_fast(xp, k)
    assert got.shape == (N, O, H, W) and got.flags.c_contiguous
    np.testing.assert_allclose(got, naive.corr_valid(xp, k), rtol=1e-12, atol=1e-12)


def _path_widths(dtype):
    """Row widths that reach each code path of _corr_valid_tiled: narrower than a vector
    (scalar), one vector up to a tile (1-vector tiles, the last one overlapping), a tile
    and more (exact multiples; a rest of at most two vectors as an overlapping 2-vector
    tile, a longer rest as an overlapping full tile), and with the 8-vector tiles of a
    512-bit host (fused.CONV_VECS == 8) each rest after them."""
    L = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    T = 4 * L
    widths = [1, L - 1, L, L + 3, 2 * L, T - 1, T, T + 1, T + 2 * L, T + 2 * L + 1, 2 * T,
              2 * T + L + 1]
    if fused.CONV_VECS == 8:
        widths += [2 * T + 2 * L, 2 * T + T, 2 * T + T + 1, 4 * T - 1, 4 * T + 2 * L + 1, 5 * T + 1]
    return widths


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_tiled_correlation_matches_reference_on_every_code_path(dtype, rtol):
    rng = np.random.default_rng(21)
    C, O, ks, H = 2, 4, 3, 3
    for W in _path_widths(dtype):
        xp = rng.standard_normal((1, C, H + ks - 1, W + ks - 1)).astype(dtype)
        k = rng.standard_normal((O, C, ks, ks)).astype(dtype)
        got = fused.corr_valid_fast(xp, k)
        assert got.dtype == dtype
        ref = naive.corr_valid(xp.astype(np.float64), k.astype(np.float64))
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max(),
                                   err_msg=f"row width {W}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tiled_correlation_of_a_pixel_does_not_depend_on_row_width_or_code_path(dtype):
    # what tiled prediction relies on: a pixel's value is the same bits whether it falls in
    # a full tile, an overlapping last tile, a one-vector tile or the scalar loop
    rng = np.random.default_rng(22)
    C, O, ks, H = 3, 5, 5, 2
    widths = _path_widths(dtype)
    Wmax = max(widths)
    xp = rng.standard_normal((1, C, H + ks - 1, Wmax + ks - 1)).astype(dtype)
    k = rng.standard_normal((O, C, ks, ks)).astype(dtype)
    full = fused.corr_valid_fast(xp, k)
    for W in widths:
        part = fused.corr_valid_fast(np.ascontiguousarray(xp[..., :W + ks - 1]), k)
        assert np.array_equal(part, full[..., :W]), f"row width {W}"


def test_filter_packing_is_tap_major_with_repeated_last_channel():
    k = np.arange(4 * 2 * 3 * 3, dtype=np.float64).reshape(4, 2, 3, 3)
    kt, orow = fused.pack_filters(k)
    assert kt.shape == (2, 3 * 2 * 9) and list(orow) == [0, 1, 2, 3, 3, 3]
    for b in range(2):
        for t in range(3):
            o = orow[3 * b + t]
            for m, (c, i, j) in enumerate(np.ndindex(2, 3, 3)):
                assert kt[b, 3 * m + t] == k[o, c, i, j]
    offs = fused.tap_offsets(2, 7, 9, 3)
    assert list(offs[:4]) == [0, 1, 2, 9] and offs[9] == 63 and offs.dtype == np.intp


@njit
def _simd_ops(a, b, c, out):
    """out[0] = a*b + c (vectors), out[1] = splat of a[1], out[2] = splat of 0.5 (first
    simd.lanes(a) values of each row), scalar fma of the first elements in out[3, 0]."""
    L = simd.lanes(a)
    simd.vstore(out[0], 0, simd.vfma(simd.vload(a, 0), simd.vload(b, 0), simd.vload(c, 0)))
    simd.vstore(out[0], L, simd.vfma(simd.vload(a, L), simd.vload(b, L), simd.vload(c, L)))
    simd.vstore(out[1], 0, simd.vbcast(a, 1))
    simd.vstore(out[2], 0, simd.vsplat(out[3, 1]))
    out[3, 0] = simd.sfma(a[0], b[0], c[0])
    return L


def _fma_exact(a, b, c, dtype):
    """a*b + c computed exactly (fractions), rounded once to the nearest value of dtype."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    x = dtype(float(exact))  # may be one ulp off for float32 (double rounding): look around
    cands = [np.nextafter(x, dtype(-np.inf)), x, np.nextafter(x, dtype(np.inf))]
    return min(cands, key=lambda v: abs(Fraction(float(v)) - exact))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_primitives_match_numpy_and_round_once(dtype):
    L = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(23)
    a, b, c = (rng.standard_normal(2 * L).astype(dtype) for _ in range(3))
    # a*b + c with a single rounding: (1 + e)^2 - (1 + 2e) = e^2 exactly, which a separate
    # multiply then add loses (e = 2^-(mantissa/2 + 1): e^2 is below half an ulp of 1 + 2e)
    e = dtype(2.0 ** -(np.finfo(dtype).nmant // 2 + 1))
    a[0] = b[0] = dtype(1) + e
    c[0] = -(dtype(1) + dtype(2) * e)
    out = np.zeros((4, 2 * L), dtype)
    out[3, 1] = 0.5
    assert _simd_ops(a, b, c, out) == L
    np.testing.assert_array_equal(out[0], [_fma_exact(*v, dtype) for v in zip(a, b, c)])
    assert out[0, 0] == e * e and out[3, 0] == e * e
    assert dtype(a[0] * b[0]) + c[0] != e * e  # the unfused sum would differ
    np.testing.assert_array_equal(out[1, :L], np.full(L, a[1]))
    np.testing.assert_array_equal(out[2, :L], np.full(L, 0.5, dtype))
    assert not out[1, L:].any() and not out[2, L:].any()  # a vector is exactly L lanes


@pytest.mark.parametrize("O,ks", [(6, 5), (4, 3), (1, 5), (5, 11), (2, 1)])
def test_tiled_kernel_gradient_matches_reference(O, ks):
    # output channels not a multiple of three, tap counts C·ks² not a multiple of four
    rng = np.random.default_rng(11)
    N, C, H, W = 2, 3, 6, 7
    y = rng.standard_normal((N, O, H, W))
    xp = rng.standard_normal((N, C, H + ks - 1, W + ks - 1))
    np.testing.assert_allclose(fused.kernel_grad_fast(y, xp, ks), naive.corr_valid_kernel_grad(y, xp, ks),
                               rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_tiled_kernel_gradient_matches_reference_for_every_row_end(dtype, rtol):
    # rows narrower than a vector, exact multiples, and a zero-filled partial vector at the
    # end; more image rows than the row blocks and chunks of the kernel
    rng = np.random.default_rng(13)
    C, O, ks = 2, 4, 3
    for N, H, W in [(1, 3, 1), (1, 2, 3), (2, 5, 8), (1, 4, 9), (3, 11, 16), (1, 70, 21), (1, 3, 37)]:
        y = rng.standard_normal((N, O, H, W)).astype(dtype)
        xp = rng.standard_normal((N, C, H + ks - 1, W + ks - 1)).astype(dtype)
        got = fused.kernel_grad_fast(y, xp, ks)
        assert got.dtype == dtype and got.shape == (O, C, ks, ks)
        ref = naive.corr_valid_kernel_grad(y.astype(np.float64), xp.astype(np.float64), ks)
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max() * 10,
                                   err_msg=f"N, H, W = {N, H, W}")


def test_tiled_kernel_gradient_does_not_depend_on_the_number_of_threads():
    import numba
    rng = np.random.default_rng(14)
    y = rng.standard_normal((2, 4, 37, 19)).astype(np.float32)
    xp = rng.standard_normal((2, 3, 41, 23)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fused.kernel_grad_fast(y, xp, 5)
        numba.set_num_threads(before)
        many = fused.kernel_grad_fast(y, xp, 5)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, many)


def test_float32_kernel_gradient_of_a_long_sum_stays_accurate():
    # 8 x 64 x 64 terms per entry: partial sums of a few rows go to float64, so float32
    # keeps ~1e-6.
    rng = np.random.default_rng(12)
    N, C, O, H, W, ks = 8, 2, 4, 64, 64, 5
    y = rng.random((N, O, H, W)).astype(np.float32)
    xp = rng.random((N, C, H + ks - 1, W + ks - 1)).astype(np.float32)
    got = fused.kernel_grad_fast(y, xp, ks)
    assert got.dtype == np.float32
    ref = naive.corr_valid_kernel_grad(y.astype(np.float64), xp.astype(np.float64), ks)
    np.testing.assert_allclose(got, ref, rtol=2e-6)


@njit
def _vector_tail_and_sum(row, i, n):
    v = simd.vload_head(row, i, n)
    out = np.zeros(simd.lanes(row), row.dtype)
    simd.vstore(out, 0, v)
    return out, simd.vsum(v)


@njit
def _pointwise_ops(x, y, lo, hi, out, idx):
    a = simd.vload(x, 0)
    b = simd.vload(y, 0)
    simd.vstore(out[0], 0, simd.vadd(a, b))
    simd.vstore(out[1], 0, simd.vsub(a, b))
    simd.vstore(out[2], 0, simd.vdiv(a, b))
    simd.vstore(out[3], 0, simd.vfloor(a))
    simd.vstore(out[4], 0, simd.vwhere_between(a, lo, hi, a, b))
    simd.vstore_index(idx, 0, simd.vfloor(a), np.int32(7))
    out[5, 0] = simd.sfloor(x[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_vector_primitives_match_numpy(dtype):
    L = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(24)
    x = rng.uniform(-3, 3, L).astype(dtype)
    x[0] = np.nan
    x[1] = -2.5
    y = rng.uniform(0.5, 2, L).astype(dtype)
    out = np.zeros((6, L), dtype)
    idx = np.zeros(L, np.int32)
    lo, hi = dtype(-1), dtype(1)
    _pointwise_ops(x, y, lo, hi, out, idx)
    np.testing.assert_array_equal(out[0], x + y)
    np.testing.assert_array_equal(out[1], x - y)
    np.testing.assert_array_equal(out[2], x / y)
    np.testing.assert_array_equal(out[3], np.floor(x))
    # NaN is not between the bounds: it takes the other value
    np.testing.assert_array_equal(out[4], np.where((x >= lo) & (x <= hi), x, y))
    assert out[4, 0] == y[0]
    np.testing.assert_array_equal(idx[1:], np.floor(x[1:]).astype(np.int32) + 7)  # lane 0: NaN
    assert out[5, 0] == -3 and out.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_partial_vector_load_zero_fills_and_lane_sum_adds_every_lane(dtype):
    L = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    row = np.arange(1, 2 * L + 1, dtype=dtype)
    for i, n in [(0, L), (3, 1), (L + 1, L - 1), (2 * L - 2, 2)]:
        v, total = _vector_tail_and_sum(row, i, n)
        expect = np.zeros(L, dtype)
        expect[:n] = row[i:i + n]
        np.testing.assert_array_equal(v, expect)
        assert total == expect.sum()


def test_taylor_exponential_is_exact_to_double_precision_on_its_range():
    grid = RBFGrid(ModelConfig())
    cst, m = fused.rbf_constants(grid, np.float64)
    assert m == 0
    y = np.linspace(-0.5, 0.5, 1001)
    got = np.array([fused._exp_taylor(v, cst) for v in y])
    np.testing.assert_allclose(got, np.exp(y), rtol=2e-15)


def test_float32_taylor_exponential_is_within_one_rounding_unit_with_fewer_terms():
    grid = RBFGrid(ModelConfig())
    cst, _ = fused.rbf_constants(grid, np.float32)
    y = np.linspace(-0.5, 0.5, 1001).astype(np.float32)
    got = np.array([fused._exp_taylor(v, cst) for v in y], dtype=np.float64)
    ref = np.exp(y.astype(np.float64))
    assert np.max(np.abs(got - ref) / ref) <= np.finfo(np.float32).eps
    # the float32 evaluation stops after fused._NT_FLOAT32 terms: without the last of them
    # the error would show (0.5^8 / 8! is above the rounding unit)
    assert fused._NT_FLOAT32 < fused._NT and 0.5 ** (fused._NT_FLOAT32 - 1) / math.factorial(
        fused._NT_FLOAT32 - 1) > np.finfo(np.float32).eps / 2


@pytest.mark.parametrize("sigma_factor,radius", [(1.0, 6), (1.0, 2), (0.5, 6), (1.7, 4)])
def test_rbf_window_matches_reference_definition(sigma_factor, radius):
    # sigma_factor 0.5: s^2 = 4, the exponentials go through two squarings.
    cfg = ModelConfig(nf_u=3, rbf_sigma_factor=sigma_factor, rbf_radius=radius)
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(13)
    x = rng.uniform(-2.2, 2.2, size=(2, 3, 4, 11))
    x[0, 0, 0, :5] = [-40.0, 40.0, -1.2, 1.2, np.nan]  # out of reach, on the end centres, NaN
    w = rng.standard_normal((3, cfg.n_w))
    got = rbf_apply(x, w, grid, order=2)
    ref = naive.rbf_window(x, w, grid.mu0, grid.h, grid.sigma, grid.n_w, grid.radius)
    for g, r in zip(got, ref):
        bad = np.isnan(x)
        assert np.all(g[bad] == 0.0)
        np.testing.assert_allclose(g[~bad], r[~bad], rtol=1e-10, atol=1e-10 * np.nanmax(np.abs(r)))


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("W", [9, 10, 11, 12])
def test_each_rbf_order_matches_reference_for_every_row_remainder(order, W):
    # order 0 evaluates four pixels per Horner pass, order 1 two, order 2 one: row widths
    # 9..12 leave every possible remainder of those groups
    cfg = ModelConfig(nf_u=2)
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(30 + W)
    x = rng.uniform(-1.5, 1.5, size=(2, 2, 3, W))
    w = rng.standard_normal((2, cfg.n_w))
    got = rbf_apply(x, w, grid, order=order)
    ref = naive.rbf_window(x, w, grid.mu0, grid.h, grid.sigma, grid.n_w, grid.radius)
    assert len(got) == order + 1
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10 * np.abs(r).max())


@pytest.mark.parametrize("order", [0, 1, 2])
def test_rbf_orders_agree_with_the_full_evaluation(order):
    cfg = ModelConfig(nf_u=2)
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(14)
    x = rng.uniform(-1.5, 1.5, size=(1, 2, 3, 10))
    w = rng.standard_normal((2, cfg.n_w))
    full = rbf_apply(x, w, grid, order=2)
    part = rbf_apply(x, w, grid, order=order)
    assert len(part) == order + 1
    for a, b in zip(part, full):
        # same sums; only fastmath's instruction choice differs between the variants
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * np.abs(b).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rbf_value_does_not_depend_on_row_width(dtype):
    # the setup runs vector by vector (last vector overlapping) or, in rows narrower than a
    # vector, pixel by pixel; the Horner passes interleave four or two pixels: none of it
    # may change a value's bits (tiled prediction relies on it)
    grid = RBFGrid(ModelConfig())
    rng = np.random.default_rng(31)
    L = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    Wmax = 4 * L + 3
    x = rng.uniform(-1.5, 1.5, (1, 2, 3, Wmax)).astype(dtype)
    x[0, 0, 0, :3] = [np.nan, 5.0, -5.0]  # NaN and values out of reach
    w = rng.standard_normal((2, grid.n_w)).astype(dtype)
    full = rbf_apply(x, w, grid, order=2)
    assert np.all(np.isfinite(full[0]))
    for W in (1, 3, L - 1, L, L + 1, 2 * L + 3, Wmax - 1):
        part = rbf_apply(np.ascontiguousarray(x[..., :W]), w, grid, order=2)
        for k in range(3):
            assert np.array_equal(part[k], full[k][..., :W]), f"order {k}, row width {W}"


def test_float32_rbf_and_weight_gradient_match_float64_reference():
    cfg = ModelConfig(nf_u=4)
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(15)
    x = rng.uniform(-1.4, 1.4, size=(2, 4, 16, 33))
    w = rng.standard_normal((4, cfg.n_w))
    c0 = rng.standard_normal(x.shape)
    c1 = rng.standard_normal(x.shape)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    ref = naive.rbf_window(x32.astype(np.float64), w32.astype(np.float64), grid.mu0, grid.h,
                           grid.sigma, grid.n_w, grid.radius)
    for g, r in zip(rbf_apply(x32, w32, grid, order=2), ref):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-5 * np.abs(r).max())
    g32 = rbf_weight_grad(x32, c0.astype(np.float32), c1.astype(np.float32), grid)
    g64 = rbf_weight_grad(x32.astype(np.float64), c0.astype(np.float32).astype(np.float64),
                          c1.astype(np.float32).astype(np.float64), grid)
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, g64, rtol=0, atol=1e-5 * np.abs(g64).max())


@njit
def _lookup_ops(tab, base, jb, off, x, out, neg):
    """out[q] = tab[base + jb[q] - off] (in-register look-up, a vector at a time), neg = -x."""
    L = simd.lanes(tab)
    for q in range(0, jb.shape[0], L):
        simd.vstore(out, q, simd.vlookup64(tab, base, simd.vcells(jb, q, off, tab)))
    simd.vstore(neg, 0, simd.vneg(simd.vload(x, 0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_table_lookup_in_registers_returns_each_lanes_entry(dtype):
    # every one of the 64 cells (each permute source and each half of the select tree), at a
    # table offset, and the sign flip of vneg (-0 stays distinct from +0)
    L = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(40)
    tab = rng.standard_normal(64 * 3).astype(dtype)
    off = 5
    cells = np.concatenate([np.arange(64), rng.integers(0, 64, 4 * L)])
    cells = cells[: len(cells) // L * L]
    jb = (cells + off).astype(np.int32)
    out = np.zeros(len(jb), dtype)
    x = rng.standard_normal(L).astype(dtype)
    x[0] = 0.0
    neg = np.zeros(L, dtype)
    _lookup_ops(tab, 64, jb, off, x, out, neg)
    np.testing.assert_array_equal(out, tab[64 + cells])
    np.testing.assert_array_equal(neg, -x)
    assert np.signbit(neg[0])


def test_rbf_with_too_many_centres_for_the_register_table_uses_the_scalar_reads():
    # n_w + 2r + 2 = 74 reachable cells > 64: no look-up table, the scalar chains do it all
    cfg = ModelConfig(nf_u=2, n_w=60, rbf_radius=6)
    grid = RBFGrid(cfg)
    tab = fused.rbf_tables(np.zeros((2, cfg.n_w)), grid, np.float32)
    assert fused.rbf_lookup_tables(tab, grid.radius) is None
    default = RBFGrid(ModelConfig())
    tab = fused.rbf_tables(np.zeros((2, default.n_w)), default, np.float32)
    assert (fused.rbf_lookup_tables(tab, default.radius) is not None) == simd.PERMUTE_LOOKUP
    rng = np.random.default_rng(41)
    x = rng.uniform(-1.3, 1.3, (1, 2, 3, 37))
    w = rng.standard_normal((2, cfg.n_w))
    ref = naive.rbf_window(x, w, grid.mu0, grid.h, grid.sigma, grid.n_w, grid.radius)
    for g, r in zip(rbf_apply(x, w, grid, order=2), ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10 * np.abs(r).max())


# --------------------------------------------------------------------------- conv + activation
@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("O, W", [(3, 11), (4, 70), (5, 300)])
def test_convolution_with_activation_epilogue_matches_reference(order, O, W):
    from vnumba.ops.rbf import conv_rbf_apply

    cfg = ModelConfig(nf_u=2)
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(O + W)
    x = rng.uniform(0, 1, size=(2, 2, 4, W))
    k = rng.standard_normal((O, 2, 3, 3)) * 0.4
    w = rng.standard_normal((O, cfg.n_w))
    ref = naive.conv_rbf(x, k, w, grid.mu0, grid.h, grid.sigma, grid.n_w, grid.radius)
    got = conv_rbf_apply(x, k, w, grid, order=order, keep_conv=True)
    assert len(got) == order + 2
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10 * np.abs(r).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("W", [3, 8, 17, 33, 70, 129, 300])
def test_fused_activation_equals_convolution_then_activation_bit_for_bit(dtype, W):
    # every row-end code path of the tiled convolution (widths below one vector up to many
    # tiles) and a channel count that leaves a padding row in the last block of three
    from vnumba.ops.conv import conv_forward
    from vnumba.ops.rbf import conv_rbf_apply

    cfg = ModelConfig()
    grid = RBFGrid(cfg)
    rng = np.random.default_rng(W)
    x = rng.uniform(0, 1, size=(2, 3, 5, W)).astype(dtype)
    k = (rng.standard_normal((7, 3, 5, 5)) * 0.2).astype(dtype)
    w = rng.standard_normal((7, cfg.n_w)).astype(dtype)
    a = conv_forward(x, k)
    for order in (0, 1, 2):
        ref = rbf_apply(a, w, grid, order=order)
        got = conv_rbf_apply(x, k, w, grid, order=order)
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g, r)
        out = np.full((2, 11, 5, W), 9, dtype)       # into a wider feature array, at offset 3
        kept, phi, *rest = conv_rbf_apply(x, k, w, grid, order=order, out=out, offset=3,
                                          keep_conv=True)
        np.testing.assert_array_equal(kept, a)
        np.testing.assert_array_equal(out[:, 3:10], ref[0])
        assert np.all(out[:, :3] == 9) and np.all(out[:, 10:] == 9)
        for g, r in zip(rest, ref[1:]):
            np.testing.assert_array_equal(g, r)


def test_fused_activation_checks_its_arguments():
    from vnumba.ops.rbf import conv_rbf_apply

    grid = RBFGrid(ModelConfig())
    x = np.zeros((1, 2, 6, 6), np.float32)
    k = np.zeros((3, 2, 3, 3), np.float32)
    w = np.zeros((3, grid.n_w), np.float32)
    with pytest.raises(ValueError, match="weights shape"):
        conv_rbf_apply(x, k, w[:2], grid)
    with pytest.raises(TypeError):
        conv_rbf_apply(x, k.astype(np.float64), w, grid)
    with pytest.raises(ValueError, match="order"):
        conv_rbf_apply(x, k, w, grid, order=3)
    with pytest.raises(ValueError, match="cannot take"):
        conv_rbf_apply(x, k, w, grid, out=np.zeros((1, 4, 6, 6), np.float32), offset=2)
