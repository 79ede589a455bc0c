"""One synthetic sample from a script: :func:`generate_sample` and the :class:`Sample` record.

The scenario kind named by the script (see :mod:`synth.script`) builds the layers and the
target mask; :func:`compose` turns layers into the clean target and the noisy input, so every
kind shares the same rendering:

* clean ``g_u``: the layers' clean RGBA (objects in their mean colours; ``both`` filters
  applied) merged bottom to top, flattened onto the backdrop colour;
* noisy ``u_0``: every layer's colour plus its colour noise, its ``noisy`` filters, merged the
  same way, then the global blur and additive white noise of the ``[render]`` section;
* both clipped to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from .layers import merge_layers, over_backdrop
from .params import param

if TYPE_CHECKING:  # annotations only: synth.script imports this module
    from .script import Script

__all__ = ["Sample", "RenderSpec", "compose", "generate_sample", "sample_rng"]


@dataclass(frozen=True)
class RenderSpec:
    """Global rendering (``[render]`` table).

    Attributes
    ----------
    backdrop : 3 floats
        Colour under pixels no layer covers.
    blur : float
        Gaussian blur (sigma, px) of the merged noisy image (optics); 0 = none.
    noise_std : float
        Standard deviation of additive white Gaussian noise on the noisy image (sensor).
    """

    backdrop: tuple[float, float, float] = param((0.0, 0.0, 0.0), ge=0.0, le=1.0)
    blur: float = param(0.0, ge=0.0, le=20.0)
    noise_std: float = param(0.0, ge=0.0, le=1.0)


@dataclass
class Sample:
    """One generated sample.

    Attributes
    ----------
    layers : list of Layer
        Bottom to top.
    noisy : ndarray (3, H, W) float32 in [0, 1]
        Input image ``u_0``.
    clean : ndarray (3, H, W) float32 in [0, 1]
        Target image ``g_u``.
    mask : ndarray (H, W) or (C_m, H, W) float32 in {0, 1}
        Target mask ``g_m`` (one channel per class of a per-class target).
    info : dict
        Free diagnostics (counts, concentrations).
    """

    layers: list
    noisy: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    info: dict = field(default_factory=dict)

    def validate(self, shape=None) -> "Sample":
        """Check shapes, dtypes and ranges; raise ValueError naming the offending array."""
        h, w = self.mask.shape[-2:] if shape is None else shape
        mshape = (h, w) if np.ndim(self.mask) == 2 else (np.shape(self.mask)[0], h, w)
        for name, arr, shp in (("noisy", self.noisy, (3, h, w)), ("clean", self.clean, (3, h, w)),
                               ("mask", self.mask, mshape)):
            if not isinstance(arr, np.ndarray) or arr.shape != shp or arr.dtype != np.float32:
                raise ValueError(f"sample.{name} must be float32 {shp}, got "
                                 f"{getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', '')}")
            if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
                raise ValueError(f"sample.{name} must be finite and in [0, 1]")
        if not np.all((self.mask == 0) | (self.mask == 1)):
            raise ValueError("sample.mask must be binary {0, 1}")
        return self


def compose(layers, rng: np.random.Generator, render: RenderSpec | None = None):
    """Render the clean target and the noisy input from layers (see module docstring).

    Returns
    -------
    noisy, clean : ndarray (3, H, W) float32 in [0, 1]
    """
    render = render or RenderSpec()
    clean = over_backdrop(merge_layers([l.clean_rgba() for l in layers]), render.backdrop)
    noisy = over_backdrop(merge_layers([l.noisy_rgba(rng) for l in layers]), render.backdrop)
    if render.blur > 0:
        noisy = ndimage.gaussian_filter(noisy, sigma=(render.blur, render.blur, 0), mode="nearest")
    if render.noise_std > 0:
        noisy = noisy + np.float32(render.noise_std) * rng.standard_normal(noisy.shape, dtype=np.float32)
    clean = np.ascontiguousarray(np.clip(clean, 0, 1).transpose(2, 0, 1), dtype=np.float32)
    noisy = np.ascontiguousarray(np.clip(noisy, 0, 1).transpose(2, 0, 1), dtype=np.float32)
    return noisy, clean


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a dataset with ``seed``.

    Equal to ``default_rng(SeedSequence(seed).spawn(n)[index])`` for any ``n > index``, so a
    sample does not depend on how many samples or workers there are.
    """
    if index < 0:
        raise ValueError("index must be >= 0")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def generate_sample(script: Script, rng: np.random.Generator, reference: Any = None) -> Sample:
    """Generate one sample of ``script`` with ``rng``.

    Parameters
    ----------
    script : Script
    rng : numpy.random.Generator
        The only source of randomness.
    reference : object, optional
        Passed through to the scenario kind (e.g. scenario 3's reference bundle).

    Returns
    -------
    Sample
        Validated: float32, values in [0, 1], binary mask, shapes ``script.size``.
    """
    # Duck-typed: synth.script (which defines Script) sits above this module.
    if not (hasattr(script, "kind") and hasattr(script, "sections") and hasattr(script, "text")):
        raise TypeError(f"script must be a synth.script.Script, got {type(script).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator")
    sample = script.kind.generate(script, rng, reference)
    return sample.validate(tuple(script.size))
