"""The fused pointwise passes of the backward step (vnumba.vn.pointwise) give the very bits of
the NumPy expressions they replace (tests/naive.py), on strided channel slices as well, and
reject mismatched inputs."""
import naive
import numpy as np
import pytest

from vnumba.vn.pointwise import scaled_concat, step_input_terms


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_input_terms_equal_numpy_bit_for_bit_on_channel_slices(dtype):
    rng = np.random.default_rng(3)
    N, F, H, W = 2, 5, 4, 7
    f1, f2, d = (rng.standard_normal((N, F, H, W)).astype(dtype) for _ in range(3))
    g_all = rng.standard_normal((N, F + 3, H, W)).astype(dtype)
    dg_all = rng.standard_normal((N, F + 3, H, W)).astype(dtype)
    g, dg = g_all[:, 1:F + 1], dg_all[:, 3:]  # strided views, as in the model
    got = step_input_terms(f1, f2, d, g, dg)
    for a, b in zip(got, naive.step_input_terms(f1, f2, d, g, dg)):
        assert a.dtype == dtype and a.flags.c_contiguous and a.tobytes() == b.tobytes()


def test_scaled_concat_equals_numpy_bit_for_bit():
    rng = np.random.default_rng(4)
    a1, da = (rng.standard_normal((2, 4, 3, 5)).astype(np.float32) for _ in range(2))
    b1, db = (rng.standard_normal((2, 1, 3, 5)).astype(np.float32) for _ in range(2))
    assert scaled_concat(a1, da, b1, db).tobytes() == naive.scaled_concat(a1, da, b1, db).tobytes()


def test_mismatched_inputs_are_one_clear_error():
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="^dg: expected shape"):
        step_input_terms(x, x, x, x, np.zeros((1, 2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="^f2: expected shape .* dtype float32"):
        step_input_terms(x, x.astype(np.float64), x, x, x)
    with pytest.raises(ValueError, match="^scaled_concat: incompatible"):
        scaled_concat(x, x, x[:, :1], np.zeros((1, 1, 3, 4), np.float32))
