"""The layer engine: a general generator driven entirely by the script (scenarios 1 and 2).

Sections of a layered script (besides ``[scenario]`` and ``[normalization]``):

``[domain]`` (:class:`DomainSpec`)
    Region decomposition of the image: ``method = "none" | "voronoi" | "fast_marching"``
    with ``regions`` random seeds; ``groups`` assigns randomly chosen regions to named
    groups (e.g. ``{tumour = 5, immune = 2}`` of 7).  Layers refer to a group by name, or to
    ``"all"`` (the whole image).
``[colors.NAME]`` (:class:`synth.color.ColorSpec`)
    Mean colour, between-object and pixel-noise covariances, noise correlation length.
``[[layers]]`` (one table per layer, bottom first)
    ``name``, ``kind`` and kind-specific keys; see :data:`LAYER_KINDS` and ``docs/synth.md``.
    Shipped kinds: ``noise`` (fills a region), ``cells`` (elliptic objects with placement
    rules), ``nuclei`` (one ellipse inside some cells of an earlier layer), ``ribbons``
    (connective tissue from fast-marching distance bands).
``[render]`` (:class:`synth.generator.RenderSpec`)
    Backdrop colour, global blur and sensor noise of the noisy image.
``[mask]`` (:class:`MaskSpec`)
    The target-mask rule.

Further layer kinds register with :func:`register_layer_kind`; another scenario kind can reuse
the whole engine with :func:`register_layered_kind`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import scipy.fft as sfft

from . import fmm
from .color import ColorSpec, color_noise, sample_object_colors
from .generator import RenderSpec, Sample, compose
from .kinds import register_scenario
from .layers import FilterSpec, Layer, apply_filters, colorize, paint_ellipses, place_ellipses
from .masks import concentration_mask
from .noise import gaussian_transfer
from .params import ParseContext, param

__all__ = ["SpeedSpec", "DomainSpec", "MaskSpec", "LayerSpec", "NoiseLayerSpec", "CellsSpec",
           "NucleiSpec", "RibbonsSpec", "LayerKind", "LAYER_KINDS", "register_layer_kind",
           "BuildContext", "generate_layered", "register_layered_kind", "LAYERED_SECTIONS",
           "validate_layered"]


# --------------------------------------------------------------------------- section schemas


@dataclass(frozen=True)
class SpeedSpec:
    """Random velocity field ``max(mean + std * Z, minimum)``, Z unit Gaussian with
    correlation length ``corr`` pixels (:func:`synth.fmm.random_speed_field`)."""

    mean: float = param(1.0, gt=0.0)
    std: float = param(0.3, ge=0.0)
    corr: float = param(10.0, ge=0.0, le=200.0)
    minimum: float = param(0.05, gt=0.0)


@dataclass(frozen=True)
class DomainSpec:
    """``[domain]``: random region decomposition and named groups of regions."""

    method: Literal["none", "voronoi", "fast_marching"] = "none"
    regions: int = param(1, ge=1, le=10000)
    groups: dict[str, int] = field(default_factory=dict)
    speed: SpeedSpec = SpeedSpec()

    def check(self):
        for g, c in self.groups.items():
            if g == "all":
                yield (f"groups.{g}", "'all' is reserved for the whole image")
            if c < 0:
                yield (f"groups.{g}", f"must be >= 0, got {c}")
        if sum(self.groups.values()) > self.regions:
            yield ("groups", f"assigns {sum(self.groups.values())} regions but only "
                   f"{self.regions} exist")
        if self.method == "none" and self.regions != 1:
            yield ("regions", "method 'none' has exactly 1 region")


@dataclass(frozen=True)
class MaskSpec:
    """``[mask]``: the target-mask rule.

    ``rule = "concentration"``: cells of layer ``target`` whose disc of radius ``radius``
    around their centre has a concentration of the ``reference`` layers' cells
    (union of footprints) strictly above ``threshold`` (see :mod:`synth.masks`).
    ``rule = "footprint"``: all pixels of layer ``target``.  ``rule = "none"``: empty mask.
    Pixels covered by the ``occluders`` layers are removed in every rule.
    """

    rule: Literal["none", "concentration", "footprint"] = "none"
    target: str = ""
    reference: tuple[str, ...] = ()
    radius: float = param(40.0, gt=0.0, le=10000.0)
    threshold: float = param(0.3, ge=0.0, le=1.0)
    occluders: tuple[str, ...] = ()

    def check(self):
        if self.rule != "none" and not self.target:
            yield ("target", f"rule {self.rule!r} needs a target layer")
        if self.rule == "concentration" and not self.reference:
            yield ("reference", "rule 'concentration' needs reference layers")


@dataclass(frozen=True)
class LayerSpec:
    """Keys common to all layers.

    Attributes
    ----------
    name : str
        Unique layer name.
    kind : str
        Registered layer kind.
    category : str
        Object category (defaults to ``name``).
    color : str
        Name of a ``[colors.*]`` table.
    region : str
        ``"all"`` or a domain group; where the layer's objects may be (centres for cells).
    filters : array of FilterSpec tables
    """

    name: str
    kind: str
    category: str = ""
    color: str = ""
    region: str = "all"
    filters: tuple[FilterSpec, ...] = ()

    def layer_refs(self):
        """(key, name) of earlier layers this layer depends on."""
        return ()


@dataclass(frozen=True)
class NoiseLayerSpec(LayerSpec):
    """``kind = "noise"``: the region filled with one colour plus its noise (background)."""


@dataclass(frozen=True)
class CellsSpec(LayerSpec):
    """``kind = "cells"``: ellipses with uniform semi-axes and angle, placed by rules.

    Attributes
    ----------
    count : int or [min, max]
        Number of cells wanted (uniform integer in [min, max]); fewer are placed when the
        rules reject too many candidates.
    semi_axes : [[a_min, a_max], [b_min, b_max]]
        Uniform ranges of the two semi-axes in pixels; the angle is uniform in [0, pi).
    overlap : bool
        Whether cells of this layer may overlap each other.
    avoid : array of layer names
        Cells may not cover any pixel of these (earlier) layers.
    centre_outside : array of layer names
        Cell centres may not lie on these (earlier) layers' objects.
    clip_to_region : bool
        Cut cells at the region border (otherwise only the centre must be inside).
    attempts : int
        Candidates drawn per wanted cell.
    """

    count: int | tuple[int, int] = param(10, ge=0, le=100000)
    semi_axes: tuple[tuple[float, float], tuple[float, float]] = param(((6.0, 9.0), (5.0, 7.0)), gt=0.0, le=1000.0)
    overlap: bool = False
    avoid: tuple[str, ...] = ()
    centre_outside: tuple[str, ...] = ()
    clip_to_region: bool = False
    attempts: int = param(30, ge=1, le=10000)

    def check(self):
        if isinstance(self.count, tuple) and self.count[0] > self.count[1]:
            yield ("count", "min must be <= max")
        for i, (lo, hi) in enumerate(self.semi_axes):
            if lo > hi:
                yield (f"semi_axes[{i}]", "min must be <= max")

    def layer_refs(self):
        return [("avoid", n) for n in self.avoid] + [("centre_outside", n) for n in self.centre_outside]


@dataclass(frozen=True)
class NucleiSpec(LayerSpec):
    """``kind = "nuclei"``: one elliptic nucleus inside some cells of layer ``of``.

    Attributes
    ----------
    of : str
        The (earlier) cells layer; nucleus ``id`` lies in cell ``id`` and is clipped to it.
    visible : float
        Probability that a cell's nucleus is visible (article: 60 %).
    semi_axes : [[a_min, a_max], [b_min, b_max]]
        Uniform ranges in pixels, along the cell's axes.
    max_fraction : float
        Each nucleus semi-axis is at most this fraction of the cell's.
    offset : float
        Displacement of the nucleus centre as a fraction of the room left inside the cell.
    angle_jitter : float
        Nucleus angle = cell angle + uniform(-jitter, jitter) radians.
    """

    of: str = ""
    visible: float = param(0.6, ge=0.0, le=1.0)
    semi_axes: tuple[tuple[float, float], tuple[float, float]] = param(((3.0, 5.0), (2.5, 4.0)), gt=0.0, le=1000.0)
    max_fraction: float = param(0.85, gt=0.0, le=1.0)
    offset: float = param(0.5, ge=0.0, le=1.0)
    angle_jitter: float = param(0.3, ge=0.0, le=3.1416)

    def check(self):
        if not self.of:
            yield ("of", "required: the cells layer these nuclei belong to")
        for i, (lo, hi) in enumerate(self.semi_axes):
            if lo > hi:
                yield (f"semi_axes[{i}]", "min must be <= max")

    def layer_refs(self):
        return [("of", self.of)]


@dataclass(frozen=True)
class RibbonsSpec(LayerSpec):
    """``kind = "ribbons"``: connective tissue as bands of fast-marching travel time.

    For each of ``fields`` random velocity fields, the travel time ``T`` from the initial
    front is computed and the pixels with ``t0 <= T < t0 + w`` form a ribbon (``t0`` and
    ``w`` uniform in ``start`` and ``width``); the layer is the union of the ribbons,
    restricted to ``region``.  The front is ``source = "boundaries"`` (the borders between
    domain regions) or the complement of a domain group (``source = GROUP``).
    """

    source: str = "boundaries"
    fields: int = param(3, ge=1, le=50)
    start: tuple[float, float] = param((0.0, 3.0), ge=0.0)
    width: tuple[float, float] = param((2.0, 5.0), gt=0.0)
    speed: SpeedSpec = SpeedSpec()

    def check(self):
        for k in ("start", "width"):
            lo, hi = getattr(self, k)
            if lo > hi:
                yield (k, "min must be <= max")
        if self.source == "all":
            yield ("source", "the complement of 'all' is empty")


# --------------------------------------------------------------------------- layer kinds


@dataclass(frozen=True)
class LayerKind:
    """A layer kind: its spec dataclass, its builder and whether it yields objects."""

    kind: str
    spec: type
    build: Callable[[Any, "BuildContext"], Layer]
    objects: bool = False


#: Registered layer kinds by name.
LAYER_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(kind: str, spec: type, build: Callable, *, objects: bool = False,
                        replace: bool = False) -> None:
    """Register a layer kind.

    Parameters
    ----------
    kind : str
    spec : dataclass type
        Subclass of :class:`LayerSpec` (its fields are the layer's keys).
    build : callable ``(spec, ctx: BuildContext) -> Layer``
    objects : bool
        The layer has discrete objects (``labels`` and ``centers``), so it can be a mask
        target, a nuclei parent, etc.
    """
    if kind in LAYER_KINDS and not replace:
        raise ValueError(f"layer kind {kind!r} is already registered")
    if not (isinstance(spec, type) and issubclass(spec, LayerSpec)):
        raise TypeError("spec must be a subclass of LayerSpec")
    LAYER_KINDS[kind] = LayerKind(kind, spec, build, objects)


class BuildContext:
    """State shared by the layer builders of one sample.

    Attributes
    ----------
    script : Script
    rng : numpy.random.Generator
    shape : (H, W)
    colors : dict of ColorSpec
    reference : object or None
        Passed through from :func:`synth.generator.generate_sample`.
    domain : ndarray (H, W) int32
        Region index of every pixel.
    groups : dict of str -> ndarray (H, W) bool
        Group masks (including ``"all"``).
    layers : dict of str -> Layer
        Layers built so far, by name.
    """

    def __init__(self, script, rng, reference=None):
        self.script = script
        self.rng = rng
        self.shape = tuple(script.size)
        self.colors = script.sections.get("colors") or {}
        self.reference = reference
        self.domain = np.zeros(self.shape, dtype=np.int32)
        self.groups = {"all": np.ones(self.shape, dtype=bool)}
        self.layers: dict[str, Layer] = {}
        self.order: list[Layer] = []
        self._unit: dict[float, np.ndarray] = {}
        self._white = None
        self._white_spec = None

    def unit_noise(self, corr: float) -> np.ndarray:
        """Unit-variance noise field (3, H, W) float32 of correlation ``corr`` for this sample.

        All layers share one white-noise field; each correlation length filters it once.
        Sharing is statistically harmless for the rendered image: at every pixel only the
        top-most opaque layer is visible, so each visible pixel's noise still has exactly its
        layer's covariance; it saves most of the cost of noise generation.
        """
        key = float(corr)
        if key not in self._unit:
            if self._white is None:
                self._white = self.rng.standard_normal((3,) + self.shape, dtype=np.float32)
                self._white_spec = None
            if key == 0.0:
                self._unit[key] = self._white
            else:
                if self._white_spec is None:
                    self._white_spec = sfft.rfft2(self._white)
                G = gaussian_transfer(self.shape, key).astype(np.float32)
                self._unit[key] = np.ascontiguousarray(
                    sfft.irfft2(self._white_spec * G, s=self.shape), dtype=np.float32)
        return self._unit[key]

    def region(self, name: str) -> np.ndarray:
        return self.groups[name]

    def footprint(self, names) -> np.ndarray:
        """Union of the named layers' footprints (bool (H, W))."""
        m = np.zeros(self.shape, dtype=bool)
        for n in names:
            m |= self.layers[n].footprint
        return m

    def add(self, layer: Layer) -> None:
        self.layers[layer.name] = layer
        self.order.append(layer)

    def build_domain(self, spec: DomainSpec | None) -> None:
        spec = spec or DomainSpec()
        H, W = self.shape
        rng = self.rng
        if spec.method == "voronoi":
            seeds = rng.random((spec.regions, 2)) * np.array([H, W])
            self.domain = fmm.voronoi_labels(self.shape, seeds)
        elif spec.method == "fast_marching":
            seeds = np.stack([rng.integers(0, H, spec.regions), rng.integers(0, W, spec.regions)], 1)
            s = spec.speed
            speed = fmm.random_speed_field(rng, self.shape, s.mean, s.std, s.corr, s.minimum)
            self.domain = fmm.fmm_regions(seeds, speed)
        perm = rng.permutation(spec.regions)
        k = 0
        for g, c in spec.groups.items():
            self.groups[g] = np.isin(self.domain, perm[k:k + c])
            k += c


def _finish(spec: LayerSpec, ctx: BuildContext, labels, n_obj, **extra) -> Layer:
    cs = ctx.colors[spec.color]
    cols = sample_object_colors(ctx.rng, cs, n_obj)
    rgba = colorize(labels, cols)
    noise = (color_noise(ctx.rng, ctx.shape, cs, unit=ctx.unit_noise(cs.corr))
             if np.any(np.asarray(cs.cov)) else None)
    both = [f for f in spec.filters if f.apply_to == "both"]
    if both:
        rgba = apply_filters(rgba, both, ctx.rng)
    return Layer(spec.name, spec.category or spec.name, np.ascontiguousarray(rgba, np.float32),
                 noise=noise, filters=tuple(spec.filters), labels=labels, **extra)


def build_noise(spec: NoiseLayerSpec, ctx: BuildContext) -> Layer:
    labels = ctx.region(spec.region).astype(np.int32)
    return _finish(spec, ctx, labels, 1)


def _uniform_in_region(rng, region, m):
    idx = np.flatnonzero(region)
    if idx.size == 0:
        return np.empty((0, 2))
    pick = idx[rng.integers(0, idx.size, m)]
    W = region.shape[1]
    return np.stack([pick // W, pick % W], 1) + rng.random((m, 2)) - 0.5


def build_cells(spec: CellsSpec, ctx: BuildContext) -> Layer:
    rng = ctx.rng
    c = spec.count
    n_want = int(c) if isinstance(c, int) else int(rng.integers(c[0], c[1] + 1))
    m = n_want * spec.attempts
    region = ctx.region(spec.region)
    centres = _uniform_in_region(rng, region, m)
    m = centres.shape[0]
    (alo, ahi), (blo, bhi) = spec.semi_axes
    params = np.column_stack([centres, rng.uniform(alo, ahi, m), rng.uniform(blo, bhi, m),
                              rng.uniform(0.0, np.pi, m)])
    labels, acc = place_ellipses(
        ctx.shape, params, region=region, clip_region=spec.clip_to_region,
        blocked=ctx.footprint(spec.avoid) if spec.avoid else None,
        centre_forbidden=ctx.footprint(spec.centre_outside) if spec.centre_outside else None,
        no_overlap=not spec.overlap, max_count=n_want)
    p = params[acc]
    return _finish(spec, ctx, labels, len(acc), centers=p[:, :2].copy(), axes=p[:, 2:].copy())


def build_nuclei(spec: NucleiSpec, ctx: BuildContext) -> Layer:
    rng = ctx.rng
    parent = ctx.layers[spec.of]
    n = 0 if parent.centers is None else parent.centers.shape[0]
    vis = rng.random(n) < spec.visible
    (alo, ahi), (blo, bhi) = spec.semi_axes
    an = rng.uniform(alo, ahi, n)
    bn = rng.uniform(blo, bhi, n)
    r = np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    jit = rng.uniform(-spec.angle_jitter, spec.angle_jitter, n)
    labels = np.zeros(ctx.shape, dtype=np.int32)
    centers = np.full((n, 2), np.nan)
    axes = np.full((n, 3), np.nan)
    if n:
        ac, bc, th = parent.axes[:, 0], parent.axes[:, 1], parent.axes[:, 2]
        an = np.minimum(an, spec.max_fraction * ac)
        bn = np.minimum(bn, spec.max_fraction * bc)
        # displacement in the cell's frame, scaled to the room left inside the cell
        u = spec.offset * r * np.cos(phi) * (ac - an)
        v = spec.offset * r * np.sin(phi) * (bc - bn)
        cy = parent.centers[:, 0] + u * np.sin(th) + v * np.cos(th)
        cx = parent.centers[:, 1] + u * np.cos(th) - v * np.sin(th)
        params = np.column_stack([cy, cx, an, bn, th + jit])
        ids = np.arange(1, n + 1)
        paint_ellipses(ctx.shape, params[vis], ids[vis], clip_labels=parent.labels, labels=labels)
        centers[vis] = params[vis, :2]
        axes[vis] = params[vis, 2:]
    return _finish(spec, ctx, labels, n, centers=centers, axes=axes)


def build_ribbons(spec: RibbonsSpec, ctx: BuildContext) -> Layer:
    rng = ctx.rng
    if spec.source == "boundaries":
        front = fmm.region_boundaries(ctx.domain)
    else:
        front = ~ctx.region(spec.source)
    band = np.zeros(ctx.shape, dtype=bool)
    if front.any():
        for _ in range(spec.fields):
            t0 = rng.uniform(*spec.start)
            w = rng.uniform(*spec.width)
            s = spec.speed
            speed = fmm.random_speed_field(rng, ctx.shape, s.mean, s.std, s.corr, s.minimum)
            T = fmm.travel_time(front, speed, max_time=t0 + w)
            band |= (T >= t0) & (T < t0 + w)
    band &= ctx.region(spec.region)
    return _finish(spec, ctx, band.astype(np.int32), 1)


register_layer_kind("noise", NoiseLayerSpec, build_noise)
register_layer_kind("cells", CellsSpec, build_cells, objects=True)
register_layer_kind("nuclei", NucleiSpec, build_nuclei, objects=True)
register_layer_kind("ribbons", RibbonsSpec, build_ribbons)


# --------------------------------------------------------------------------- parsing


def _parse_colors(value, ctx: ParseContext, key: str):
    if not isinstance(value, dict) or not value:
        ctx.error(key, "must be a table of colour tables, e.g. [colors.background]")
    return ctx.convert(value, dict[str, ColorSpec], key)


def _parse_layers(value, ctx: ParseContext, key: str):
    if not isinstance(value, list) or not value:
        ctx.error(key, "must be a non-empty array of tables ([[layers]])")
    out = []
    for i, v in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(v, dict):
            ctx.error(k, "must be a table")
        kind = v.get("kind")
        if kind not in LAYER_KINDS:
            ctx.error(f"{k}.kind", f"unknown layer kind {kind!r} "
                      f"(registered: {', '.join(sorted(LAYER_KINDS))})")
        out.append(ctx.parse(LAYER_KINDS[kind].spec, v, k))
    return tuple(out)


def validate_layered(sections: dict, ctx: ParseContext) -> None:
    """Cross-section checks of a layered script (names, references, order)."""
    colors = sections.get("colors") or {}
    domain = sections.get("domain") or DomainSpec()
    groups = set(domain.groups) | {"all"}
    seen: dict[str, LayerSpec] = {}
    for i, spec in enumerate(sections["layers"]):
        k = f"layers[{i}]"
        if spec.name in seen:
            ctx.error(f"{k}.name", f"duplicate layer name {spec.name!r}")
        if spec.color not in colors:
            ctx.error(f"{k}.color", f"no colour table [colors.{spec.color}] "
                      f"(defined: {', '.join(sorted(colors))})")
        if spec.region not in groups:
            ctx.error(f"{k}.region", f"unknown region group {spec.region!r} "
                      f"(defined: {', '.join(sorted(groups))})")
        for key, ref in spec.layer_refs():
            if ref not in seen:
                ctx.error(f"{k}.{key}", f"{ref!r} is not an earlier layer")
        if isinstance(spec, NucleiSpec) and not LAYER_KINDS[seen[spec.of].kind].objects:
            ctx.error(f"{k}.of", f"layer {spec.of!r} has no cells")
        if isinstance(spec, RibbonsSpec):
            if spec.source == "boundaries" and domain.method == "none":
                ctx.error(f"{k}.source", "'boundaries' needs a [domain] decomposition")
            if spec.source != "boundaries" and spec.source not in groups:
                ctx.error(f"{k}.source", f"unknown region group {spec.source!r}")
        seen[spec.name] = spec
    m = sections.get("mask") or MaskSpec()
    if m.rule != "none":
        if m.target not in seen:
            ctx.error("mask.target", f"unknown layer {m.target!r}")
        if m.rule == "concentration" and not LAYER_KINDS[seen[m.target].kind].objects:
            ctx.error("mask.target", f"layer {m.target!r} has no cells with centres")
        for r in m.reference:
            if r not in seen:
                ctx.error("mask.reference", f"unknown layer {r!r}")
        for r in m.occluders:
            if r not in seen:
                ctx.error("mask.occluders", f"unknown layer {r!r}")


#: Section schema of the layer engine (see the module docstring).
LAYERED_SECTIONS = {"domain": DomainSpec, "colors": _parse_colors, "layers": _parse_layers,
                    "render": RenderSpec, "mask": MaskSpec}


# --------------------------------------------------------------------------- generation


def build_mask(spec: MaskSpec | None, ctx: BuildContext):
    """Target mask (float32 (H, W)) and diagnostics from the built layers."""
    spec = spec or MaskSpec()
    info = {}
    occl = ctx.footprint(spec.occluders) if spec.occluders else None
    if spec.rule == "none":
        mask = np.zeros(ctx.shape, dtype=np.float32)
    elif spec.rule == "footprint":
        m = ctx.layers[spec.target].footprint
        if occl is not None:
            m = m & ~occl
        mask = m.astype(np.float32)
    else:
        tgt = ctx.layers[spec.target]
        cent = tgt.centers if tgt.centers is not None else np.empty((0, 2))
        ok = np.all(np.isfinite(cent), axis=1)
        cent = np.where(ok[:, None], cent, -1e9)  # absent objects never qualify
        mask, conc = concentration_mask(tgt.labels, cent, ctx.footprint(spec.reference),
                                        spec.radius, spec.threshold, occl)
        info["concentration"] = conc
    return mask, info


def generate_layered(script, rng: np.random.Generator, reference=None) -> Sample:
    """Generate one sample of a layered script (scenario kinds ``scenario1``/``scenario2``)."""
    sec = script.sections
    ctx = BuildContext(script, rng, reference)
    ctx.build_domain(sec.get("domain"))
    for spec in sec["layers"]:
        ctx.add(LAYER_KINDS[spec.kind].build(spec, ctx))
    mask, info = build_mask(sec.get("mask"), ctx)
    noisy, clean = compose(ctx.order, rng, sec.get("render") or RenderSpec())
    info["counts"] = {l.name: (0 if l.centers is None else int(np.isfinite(l.centers[:, 0]).sum()))
                      for l in ctx.order}
    return Sample(layers=ctx.order, noisy=noisy, clean=clean, mask=mask, info=info)


def register_layered_kind(kind: str, doc: str = "", replace: bool = False) -> None:
    """Register ``kind`` as a scenario kind generated by this layer engine."""
    register_scenario(kind, sections=LAYERED_SECTIONS, generate=generate_layered,
                      required=("colors", "layers"), validate=validate_layered, doc=doc,
                      replace=replace)


register_layered_kind("scenario1", "three-colour immunofluorescence, immune cells near tumour cells")
register_layered_kind("scenario2", "H&E, immune-cell-rich areas")
