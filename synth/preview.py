"""Preview figure of a script, like Fig. 2 of the article: for a few samples, every layer
(alpha shown as a checkerboard), the noisy input, the clean target and the target mask."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .generator import generate_sample, sample_rng
from .script import Script, load_script

__all__ = ["checkerboard", "layer_image", "write_preview"]


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


def write_preview(script, output, n: int = 3, seed: int = 0, reference=None, dpi: int = 100) -> Path:
    """Render ``n`` samples of ``script`` into a PNG grid (rows: samples; columns: layers,
    noisy, clean, mask).

    Parameters
    ----------
    script : Script, str or Path
    output : str or Path
        PNG file.
    n : int
        Number of samples (rows), generated with ``sample_rng(seed, i)``.
    seed : int
    reference : object, optional
        Passed to the generator.
    dpi : int
        Each panel is ``size / dpi`` inches, i.e. shown at its pixel size.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(script, Script):
        script = load_script(script)
    if n < 1:
        raise ValueError("n must be >= 1")
    samples = [generate_sample(script, sample_rng(seed, i), reference) for i in range(n)]
    ncol = len(samples[0].layers) + 3
    H, W = script.size
    pw, ph = W / dpi, H / dpi
    fig, axes = plt.subplots(n, ncol, figsize=(ncol * pw * 1.04, n * (ph + 0.3)), dpi=dpi,
                             squeeze=False)
    for r, smp in enumerate(samples):
        panels = [(f"L{k} {l.name}", layer_image(l)) for k, l in enumerate(smp.layers)]
        panels += [("noisy u0", smp.noisy.transpose(1, 2, 0)), ("clean gu", smp.clean.transpose(1, 2, 0)),
                   (f"mask gm ({smp.mask.mean() * 100:.1f} %)", smp.mask)]
        for c, (title, img) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or c >= ncol - 1:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"{script.name} ({script.scenario}, {script.mpp} um/px, {H}x{W}), seed {seed}", fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.25 / (n * (ph + 0.3))))
    output = Path(output)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    return output
