"""Model and training configuration: frozen dataclasses with the article's defaults.

Unknown keys are errors that name the key (``from_dict``), so a typo in a config file or a
model written by a newer version never passes silently.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from vnumba.ops.fields import Checked, PositiveFloat, PositiveInt, PositiveOddInt, bounded

__all__ = ["ModelConfig", "PARAM_NAMES", "param_shapes", "from_dict"]

#: Parameter groups of one step, in the article's order θ_t = (K^u, w^u, K^m, w^m, K, w, λ).
PARAM_NAMES = ("Ku", "wu", "Km", "wm", "K", "w", "lam")


@dataclass(frozen=True)
class ModelConfig(Checked):
    """Architecture of the coupled variational network (article, section 2).

    Attributes
    ----------
    n_steps : int
        Number of unrolled gradient steps ``N_t`` (article: 10).
    n_channels : int
        Image channels (3 for RGB / three-colour immunofluorescence).
    n_mask : int
        Mask channels ``C_m``: 1 (the article's single mask, the default) or one per nucleus
        class (``m ∈ [0, 1]^{C_m}``, e.g. tumour / immune / other); ``K^m`` then reads
        ``C_m`` channels and loss (3) sums its mask term over them (``docs/gradients.md`` §6).
    nf_u, nf_m : int
        Feature channels extracted from the image (20) and from the mask (4).
    ks_u, ks_m, ks : int
        Kernel sizes of ``K^u`` (11), ``K^m`` (5) and the coupling ``K`` (5); odd.
    n_w : int
        Gaussian radial basis functions per pointwise function (31).
    rbf_min, rbf_max : float
        Interval of the equally spaced RBF centres ([-1.2, 1.2]).
    rbf_sigma_factor : float
        ``sigma = rbf_sigma_factor * spacing`` of the centres.
    rbf_radius : int
        Each value is evaluated against the ``2*rbf_radius+1`` nearest centres only; farther
        Gaussians are below ``exp(-rbf_radius**2 / (2*rbf_sigma_factor**2))`` and would only
        cost time (and denormals).  Use ``n_w`` to evaluate every centre.
    zero_mean_u, zero_mean_m : bool
        Constrain the feature filters ``K^u`` / ``K^m`` to zero mean (article: on, except
        ``K^u`` in scenario 1).
    l1_radius : float
        Radius of the l1 balls of all filters (1).

    Examples
    --------
    A tiny two-step network (the defaults are the article's):

    >>> from vnumba.vn.config import ModelConfig, param_shapes
    >>> cfg = ModelConfig(n_steps=2, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    >>> cfg.nf, cfg.receptive_radius
    (3, 8)
    >>> param_shapes(cfg)["Ku"]
    (2, 2, 3, 3, 3)

    Kernel sizes must be odd:

    >>> try:
    ...     ModelConfig(ks=4)
    ... except ValueError:
    ...     print("refused")
    refused
    """

    n_steps: PositiveInt = 10
    n_channels: PositiveInt = 3
    n_mask: PositiveInt = 1
    nf_u: PositiveInt = 20
    nf_m: PositiveInt = 4
    ks_u: PositiveOddInt = 11
    ks_m: PositiveOddInt = 5
    ks: PositiveOddInt = 5
    n_w: int = bounded(31, ge=2)
    rbf_min: float = -1.2
    rbf_max: float = 1.2
    rbf_sigma_factor: PositiveFloat = 1.0
    rbf_radius: PositiveInt = 6
    zero_mean_u: bool = True
    zero_mean_m: bool = True
    l1_radius: PositiveFloat = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not self.rbf_max > self.rbf_min:
            raise ValueError("ModelConfig.rbf_max must exceed rbf_min")

    @property
    def nf(self) -> int:
        """Coupled feature channels ``N_f = nf_u + nf_m``."""
        return self.nf_u + self.nf_m

    @property
    def rbf_spacing(self) -> float:
        return (self.rbf_max - self.rbf_min) / (self.n_w - 1)

    @property
    def rbf_sigma(self) -> float:
        return self.rbf_sigma_factor * self.rbf_spacing

    @property
    def receptive_radius(self) -> int:
        """Pixels one unrolled network looks beyond a pixel (for tiling with overlap)."""
        per_step = (self.ks_u // 2) * 2 + (self.ks // 2) * 2
        per_step = max(per_step, (self.ks_m // 2) * 2 + (self.ks // 2) * 2)
        return self.n_steps * per_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def param_shapes(cfg: ModelConfig) -> dict:
    """Shapes of the parameter arrays, stacked over the ``n_steps`` steps.

    Returns
    -------
    dict
        ``name -> shape`` for the names in :data:`PARAM_NAMES`:
        ``Ku (T, nf_u, C, ks_u, ks_u)``, ``wu (T, nf_u, n_w)``, ``Km (T, nf_m, n_mask, ks_m, ks_m)``,
        ``wm (T, nf_m, n_w)``, ``K (T, nf, nf, ks, ks)`` (output channel first),
        ``w (T, nf, n_w)``, ``lam (T,)``.
    """
    T = cfg.n_steps
    return {
        "Ku": (T, cfg.nf_u, cfg.n_channels, cfg.ks_u, cfg.ks_u),
        "wu": (T, cfg.nf_u, cfg.n_w),
        "Km": (T, cfg.nf_m, cfg.n_mask, cfg.ks_m, cfg.ks_m),
        "wm": (T, cfg.nf_m, cfg.n_w),
        "K": (T, cfg.nf, cfg.nf, cfg.ks, cfg.ks),
        "w": (T, cfg.nf, cfg.n_w),
        "lam": (T,),
    }


def from_dict(cls, d: dict, where: str = "config"):
    """Build the frozen dataclass ``cls`` from ``d``; unknown keys raise ``KeyError`` naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    return cls(**d)
