"""Preview figure of a script, like Fig. 2 of the article: for a few samples, every layer
(alpha shown as a checkerboard), the noisy input, the clean target and the target mask."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .generator import generate_sample, sample_rng
from .script import Script, load_script

__all__ = ["PREVIEW_MAX_ROWS", "checkerboard", "layer_image", "real_crops", "write_preview"]

#: Most samples (rows) one preview figure shows: each row is generated and drawn at its pixel
#: size, so the figure's height and the time grow with it.
PREVIEW_MAX_ROWS = 32


def checkerboard(shape, tile: int = 8, light=0.85, dark=0.6) -> np.ndarray:
    """Grey checkerboard (H, W, 3) float32 that shows through transparent pixels."""
    h, w = shape
    y, x = np.mgrid[:h, :w]
    c = np.where(((y // tile) + (x // tile)) % 2 == 0, light, dark).astype(np.float32)
    return np.repeat(c[..., None], 3, axis=2)


def layer_image(layer, with_noise: bool = True) -> np.ndarray:
    """A layer over a checkerboard, with its colour noise (H, W, 3) float32 in [0, 1]."""
    rgba = layer.rgba
    rgb = rgba[..., :3] + (layer.noise if (with_noise and layer.noise is not None) else 0.0)
    a = rgba[..., 3:4]
    return np.clip(rgb * a + checkerboard(rgba.shape[:2]) * (1 - a), 0, 1)


def real_crops(script: Script, image, mpp: float | None, k: int, seed: int = 0) -> list:
    """``k`` random crops of a real RGB image at the script's scale and colour normalisation.

    The image is resampled by ``mpp / script.mpp`` (not when ``mpp`` is None) and, for a
    script with ``[normalization] method = "reinhard"``, Reinhard-normalised to its target —
    what a model trained on the script sees at inference.  Crops of ``script.size`` (or the
    whole image when smaller) at uniform positions drawn from ``seed``.

    Returns
    -------
    list of ndarray float32 (h, w, 3) in [0, 1]
    """
    from scipy import ndimage as ndi

    from .color import reinhard_normalize

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"real image must be RGB (H, W, 3), got shape {img.shape}")
    img = img[..., :3]
    img = img.astype(np.float32) / (np.iinfo(img.dtype).max if img.dtype.kind == "u" else 1.0)
    if mpp is not None:
        s = float(mpp) / float(script.mpp)
        if abs(s - 1) > 1e-6:
            img = ndi.zoom(img, (s, s, 1), order=1, grid_mode=True, mode="nearest")
    norm = script.normalization
    if norm is not None and norm.method == "reinhard":
        img = reinhard_normalize(np.clip(img, 0, 1), norm.target_mean, norm.target_std)
    H, W = script.size
    h, w = min(H, img.shape[0]), min(W, img.shape[1])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        y = int(rng.integers(0, img.shape[0] - h + 1))
        x = int(rng.integers(0, img.shape[1] - w + 1))
        out.append(np.clip(img[y:y + h, x:x + w], 0, 1).astype(np.float32))
    return out


def write_preview(script, output, n: int = 3, seed: int = 0, reference=None, dpi: int = 100,
                  real=None, real_mpp: float | None = None) -> Path:
    """Render ``n`` samples of ``script`` into a PNG grid (rows: samples; columns: layers,
    noisy, clean, mask), and with ``real`` a last row of real crops beside them.

    Parameters
    ----------
    script : Script, str or Path
    output : str or Path
        PNG file.
    n : int
        Number of samples (rows), generated with ``sample_rng(seed, i)``; 1 to
        :data:`PREVIEW_MAX_ROWS`.
    seed : int
    reference : object, optional
        Passed to the generator.
    dpi : int
        Each panel is ``size / dpi`` inches, i.e. shown at its pixel size.
    real : ndarray (H, W, 3), optional
        A real image shown in a last row as crops at the script's scale (:func:`real_crops`),
        so that synthetic and real tissue can be compared side by side.
    real_mpp : float, optional
        Pixel size of ``real`` in µm (None: taken to be the script's).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(script, Script):
        script = load_script(script)
    if not 1 <= n <= PREVIEW_MAX_ROWS:
        raise ValueError(f"n must lie in [1, {PREVIEW_MAX_ROWS}], got {n}")
    samples = [generate_sample(script, sample_rng(seed, i), reference) for i in range(n)]
    ncol = max(len(s.layers) for s in samples) + 3
    H, W = script.size
    pw, ph = W / dpi, H / dpi
    rows = n + (real is not None)
    fig, axes = plt.subplots(rows, ncol, figsize=(ncol * pw * 1.04, rows * (ph + 0.3)), dpi=dpi,
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, smp in enumerate(samples):
        panels = [(f"L{k} {l.name}", layer_image(l)) for k, l in enumerate(smp.layers)]
        panels += [("noisy u0", smp.noisy.transpose(1, 2, 0)), ("clean gu", smp.clean.transpose(1, 2, 0)),
                   (f"mask gm ({smp.mask.mean() * 100:.1f} %)", smp.mask)]
        # Layers fill the row from the left; u0, gu and gm always take the last three columns.
        cols = list(range(len(panels) - 3)) + [ncol - 3, ncol - 2, ncol - 1]
        for c, (title, img) in zip(cols, panels):
            ax = axes[r, c]
            ax.set_axis_on()
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
    if real is not None:
        for c, img in enumerate(real_crops(script, real, real_mpp, ncol, seed)):
            ax = axes[n, c]
            ax.set_axis_on()
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"real crop {c + 1}", fontsize=7)
    fig.suptitle(f"{script.name} ({script.scenario}, {script.mpp} um/px, {H}x{W}), seed {seed}", fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.25 / (rows * (ph + 0.3))))
    import io

    from vnumba.io.outputs import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    output = Path(output)
    atomic_write_bytes(output, buf.getvalue())   # nothing half-written on any error
    return output
