"""Pixel size estimated from the width of nuclei (vnumba.analysis.pixelsize; issue 20,
"Pixel size without metadata").

Synthetic H&E-like tiles of known scale are drawn in micrometres and rendered at a given
µm/px: pink stroma (eosin), dark round lymphocyte nuclei, paler elliptical tumour nuclei with
chromatin texture, optical blur of fixed physical width, and noise.  The lymphocyte profiles are
3.9-5.1 µm across: what lymphocyte nuclei measure in paraffin sections (a ~6 µm nucleus, shrunk
by processing and cut off its equator), and the prior the estimator states
(``NUCLEAR_WIDTH_UM``).  The estimate must come within ±15 % of the true pixel size at every
scale, which only holds if the measurement in pixels scales with the image.
"""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from vnumba.analysis.pixelsize import (
    NOMINAL_MPP,
    NUCLEAR_WIDTH_UM,
    PixelSizeError,
    PixelSizeEstimate,
    estimate_mpp,
    local_thickness,
    nuclear_density,
    require_confident,
)

ROOT = Path(__file__).resolve().parents[1]

# Beer-Lambert optical densities of the stains per unit amount (R, G, B): haematoxylin absorbs
# red and green (blue-purple), eosin mostly green (pink).
_HEMA = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])


def synthetic_tissue(mpp, rng, field_um=100.0, n_lymph=45, n_tumour=12, lymph_um=(3.9, 5.1),
                     tumour_um=(8.0, 12.0), blur_um=0.35, noise=0.02, fluorescence=False):
    """A tile of ``field_um`` x ``field_um`` micrometres at ``mpp`` µm/px.

    Returns float32 RGB in [0, 1] (H, W, 3), or a grey (H, W) fluorescence image (bright nuclei
    on a dark background) with ``fluorescence=True``.  Nuclei do not overlap (gap >= 1 µm).
    Rendered on a 2x finer grid, blurred by a Gaussian of ``blur_um`` micrometres, averaged
    down, plus Gaussian noise.
    """
    ss = 2
    n = int(round(field_um / mpp))
    N = n * ss
    px = mpp / ss
    hema = np.zeros((N, N))
    texture = ndi.gaussian_filter(rng.standard_normal((N, N)), 0.4 / px)
    texture /= texture.std()
    placed = []

    def put(count, dlo, dhi, aspect, strength, grain):
        k = tries = 0
        while k < count and tries < 20000:
            tries += 1
            d, a = rng.uniform(dlo, dhi), rng.uniform(*aspect)
            ra, rb = d / 2 * math.sqrt(a), d / 2 / math.sqrt(a)     # area of the disc of diameter d
            cy, cx = rng.uniform(ra, field_um - ra, 2)
            if any((cy - y) ** 2 + (cx - x) ** 2 < (ra + r + 1.0) ** 2 for y, x, r in placed):
                continue
            th = rng.uniform(0, math.pi)
            r0, r1 = max(0, int((cy - ra) / px) - 1), min(N, int((cy + ra) / px) + 2)
            c0, c1 = max(0, int((cx - ra) / px) - 1), min(N, int((cx + ra) / px) + 2)
            yy, xx = np.mgrid[r0:r1, c0:c1] * px + px / 2
            u = (yy - cy) * math.cos(th) + (xx - cx) * math.sin(th)
            v = -(yy - cy) * math.sin(th) + (xx - cx) * math.cos(th)
            inside = (u / ra) ** 2 + (v / rb) ** 2 <= 1
            hema[r0:r1, c0:c1][inside] = strength * (1 + grain * texture[r0:r1, c0:c1][inside])
            placed.append((cy, cx, ra))
            k += 1

    put(n_tumour, *tumour_um, (1.2, 1.6), 0.9, 0.2)   # pale, vesicular
    put(n_lymph, *lymph_um, (1.0, 1.15), 1.6, 0.05)   # dark, dense
    blur = blur_um / px
    if fluorescence:
        x = ndi.gaussian_filter(0.05 + 0.45 * hema, blur)
        x = x.reshape(n, ss, n, ss).mean(axis=(1, 3)) + noise * rng.standard_normal((n, n))
        return np.clip(x, 0, 1).astype(np.float32)
    eosin = 0.2 + 0.05 * ndi.gaussian_filter(rng.standard_normal((N, N)), 8 / px) / 0.01
    eosin = np.clip(eosin, 0.05, 0.5)
    rgb = np.exp(-(hema[..., None] * _HEMA + eosin[..., None] * _EOSIN))
    rgb = ndi.gaussian_filter(rgb, (blur, blur, 0))
    rgb = rgb.reshape(n, ss, n, ss, 3).mean(axis=(1, 3)) + noise * rng.standard_normal((n, n, 3))
    return np.clip(rgb, 0, 1).astype(np.float32)


def _rel_err(est, mpp):
    return abs(est.mpp / mpp - 1.0)


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("mpp, seed", [(0.25, 1), (0.35, 2), (0.5, 3)])
def test_estimate_is_within_15_percent_of_the_known_pixel_size(mpp, seed):
    img = synthetic_tissue(mpp, np.random.default_rng(seed))
    est = estimate_mpp(img)
    assert est.confident, est.basis
    assert _rel_err(est, mpp) <= 0.15, (mpp, est)
    assert est.low < est.mpp < est.high and est.low <= mpp <= est.high
    assert est.n_nuclei >= 10
    assert "\n" not in est.basis and "px" in est.basis and f"{NUCLEAR_WIDTH_UM:g} um" in est.basis


def test_estimate_scales_with_the_image_from_5_to_40_px_wide_nuclei():
    """The same tissue at 0.125 µm/px (lymphocytes ~36 px wide) and 1 µm/px (~4.5 px)."""
    fine = estimate_mpp(synthetic_tissue(0.125, np.random.default_rng(5), field_um=70.0))
    coarse = estimate_mpp(synthetic_tissue(1.0, np.random.default_rng(5), field_um=70.0))
    assert fine.confident and coarse.confident, (fine, coarse)
    assert _rel_err(fine, 0.125) <= 0.15 and _rel_err(coarse, 1.0) <= 0.15, (fine, coarse)
    assert 25 < fine.width_px < 50 and 3 < coarse.width_px < 7


def test_the_nearest_nominal_scan_size_within_two_deviations_is_used():
    est = estimate_mpp(synthetic_tissue(0.5, np.random.default_rng(3)))
    assert est.nominal == 0.5
    mk = lambda mpp, lo, hi, ok=True: PixelSizeEstimate(mpp, lo, hi, 30, "b", ok)
    assert mk(0.3, 0.24, 0.37).nominal == 0.25
    assert mk(0.33, 0.26, 0.42).nominal == 0.25          # 1.3 sigma off: still the nearest
    assert mk(0.34, 0.26, 0.44).nominal == 0.25          # 0.25 and 0.5 both fit: the nearer
    assert mk(0.37, 0.29, 0.47).nominal == 0.5
    assert mk(0.35, 0.33, 0.37).nominal is None          # narrow, between 40x and 20x: none
    assert mk(0.3, 0.24, 0.37, ok=False).nominal is None  # never for a refused estimate
    assert mk(1.1, 0.8, 1.4).nominal == 1.0 and 1.0 in NOMINAL_MPP


def test_fluorescence_nuclei_are_measured_too():
    img = synthetic_tissue(0.35, np.random.default_rng(4), fluorescence=True)
    for x in (img, img[..., None], np.repeat(img[..., None], 3, axis=2)):
        est = estimate_mpp(x)
        assert est.confident and _rel_err(est, 0.35) <= 0.15, est
        assert "fluorescent" in est.basis
    assert nuclear_density(img)[1] == "fluorescence"
    with pytest.raises(ValueError, match="RGB"):
        nuclear_density(img, modality="brightfield")


# ----------------------------------------------------------------------------- refusal
def _blank(rng):
    return np.clip(np.full((200, 200, 3), [0.93, 0.72, 0.82]) + 0.02 * rng.standard_normal((200, 200, 3)),
                   0, 1).astype(np.float32)


@pytest.mark.parametrize("case", ["constant", "blank slide", "noise", "three nuclei"])
def test_no_estimate_without_enough_nuclei(case):
    rng = np.random.default_rng(11)
    img = {"constant": lambda: np.full((120, 120, 3), 0.8, np.float32),
           "blank slide": lambda: _blank(rng),
           "noise": lambda: rng.uniform(0, 1, (160, 160, 3)).astype(np.float32),
           "three nuclei": lambda: synthetic_tissue(0.5, rng, n_lymph=3, n_tumour=0)}[case]()
    est = estimate_mpp(img)
    assert not est.confident and est.reason, est
    if case == "three nuclei":
        assert est.n_nuclei == 3 and "3 nuclei" in est.reason
    with pytest.raises(PixelSizeError) as info:
        require_confident(est, "tile.png")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("tile.png:") and "--mpp" in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(PixelSizeError, match="--mpp"):
        estimate_mpp(img, strict=True)


def test_a_stricter_nucleus_count_refuses_what_the_default_accepts():
    img = synthetic_tissue(0.5, np.random.default_rng(3))
    est = estimate_mpp(img)
    assert est.confident
    strict = estimate_mpp(img, min_nuclei=est.n_nuclei + 1)
    assert not strict.confident and "nuclei found" in strict.reason
    assert strict.mpp == pytest.approx(est.mpp)
    assert require_confident(est) is est


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("bad, exc, word", [
    (np.zeros((64, 64, 3), np.uint8), TypeError, "float"),
    ([[0.5] * 64] * 64, TypeError, "numpy"),
    (np.zeros((64, 64, 2), np.float32), ValueError, "shape"),
    (np.zeros((2, 64, 64, 3), np.float32), ValueError, "shape"),
    (np.zeros(64, np.float32), ValueError, "shape"),
    (np.zeros((8, 64, 3), np.float32), ValueError, "16 x 16"),
    (np.full((64, 64, 3), 1.5, np.float32), ValueError, "[0, 1]"),
    (np.full((64, 64, 3), -0.1, np.float32), ValueError, "[0, 1]"),
])
def test_bad_images_are_refused_naming_the_argument(bad, exc, word):
    with pytest.raises(exc, match="img") as info:
        estimate_mpp(bad)
    assert word in str(info.value)


def test_nan_and_bad_parameters_are_refused():
    img = np.full((64, 64, 3), 0.5, np.float32)
    img[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="img contains NaN"):
        estimate_mpp(img)
    ok = np.full((64, 64, 3), 0.5, np.float32)
    for kw, name in [({"prior_um": 0.0}, "prior_um"), ({"prior_um": float("inf")}, "prior_um"),
                     ({"min_nuclei": 0}, "min_nuclei"), ({"max_spread": 1.0}, "max_spread"),
                     ({"modality": "xray"}, "modality")]:
        with pytest.raises(ValueError, match=name):
            estimate_mpp(ok, **kw)
    with pytest.raises(TypeError, match="PixelSizeEstimate"):
        require_confident(0.25)


def test_estimate_is_frozen():
    est = PixelSizeEstimate(0.25, 0.2, 0.3, 40, "b", True)
    with pytest.raises(AttributeError):
        est.mpp = 0.5


def test_local_thickness_is_the_width_of_the_widest_disc_covering_a_pixel():
    yy, xx = np.mgrid[0:80, 0:120]
    mask = (yy - 40) ** 2 + (xx - 30) ** 2 <= 15 ** 2          # disc of radius 15
    mask |= (np.abs(yy - 40) <= 3) & (xx >= 60) & (xx < 115)    # bar 7 px wide
    radii = np.arange(1, 21, dtype=float)
    lev = local_thickness(mask, radii)
    assert lev.dtype == np.int16 and np.all(lev[~mask] == 0)
    # radii are counted to the centre of the first background pixel: R = (width + 1) / 2
    assert np.all(lev[40, 20:41] == 15)                          # the whole disc: R = 15.8
    assert np.all(lev[37:44, 70:110] == 4)                       # all of the bar: 7 px -> 4
    with pytest.raises(TypeError):
        local_thickness(mask.astype(np.uint8), radii)
    with pytest.raises(ValueError):
        local_thickness(mask, [3.0, 2.0])


# ----------------------------------------------------------------------------- predict
def _write_png(path, img):
    import imageio.v3 as iio
    iio.imwrite(path, (np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def _predict(args, cwd):
    return subprocess.run([sys.executable, "-m", "vnumba.predict", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_predict_estimates_the_pixel_size_of_a_png_without_one(tmp_path):
    # 100 µm at 0.5 µm/px: 200 x 200 px; the shipped model works at 0.48 µm/px
    _write_png(tmp_path / "tile.png", synthetic_tissue(0.5, np.random.default_rng(3)))
    r = _predict(["tile.png", "--model", "scenario3", "--out", "o", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("tile.png: no pixel size in the file; estimated ") and "--mpp" in line
    est = float(line.split("estimated ")[1].split()[0])
    assert abs(est / 0.5 - 1) <= 0.15, line
    assert "taken as the nominal 0.5 um/px" in line
    assert (tmp_path / "o" / "tile_mask.png").is_file()


def test_predict_refuses_a_blank_png_in_one_line_and_writes_nothing(tmp_path):
    _write_png(tmp_path / "blank.png", _blank(np.random.default_rng(0)))
    (tmp_path / "o").mkdir()
    r = _predict(["blank.png", "--model", "scenario3", "--out", "o", "-q"], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "blank.png" in lines[0] and "--mpp" in lines[0] and "Traceback" not in r.stderr
    assert list((tmp_path / "o").iterdir()) == []
