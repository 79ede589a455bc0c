"""The scenario registry: each scenario's facts in one place (every command reads them here).

A scenario of the article (section 4) is a staining, a target (what its mask marks) and the
rules that turn annotations into that target.  The generator's own scenario scripts
(``synth/scenarios/*.toml``) hold how the images are drawn; what a trained model is *for*
lives here: target, QuPath class name and colour, the zero-mean constraint on ``K^u``, the
density rule of the mask, and the shipped default model.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Scenario", "SCENARIOS", "NAMES", "get", "CLASS_NAMES", "class_name", "class_order", "DensityRule",
           "MaskClass", "MASK_CLASSES", "DEFAULT_MASK_CLASSES", "mask_class", "scenario_mask_class"]


@dataclass(frozen=True)
class DensityRule:
    """Scenario 1/2 target rule: cells of ``cell_class`` whose disc of ``radius`` pixels
    has a fraction of ``density_class`` pixels strictly greater than ``threshold``.

    The disc is the generator's (:func:`vnumba.ops.masks.disc_concentration`): pixels of the image
    whose centres lie within ``radius`` of the cell centre rounded to the nearest pixel;
    pixels outside the image do not count.  Applied to real annotations, a cell is an
    annotated nucleus and its centre the nucleus centroid.
    """

    cell_class: int
    density_class: int
    radius: float
    threshold: float
    source: str = "default"


@dataclass(frozen=True)
class Scenario:
    """Facts of one scenario.

    Attributes
    ----------
    name : str
        ``scenario1`` ... ``scenario3``.
    target : str
        What the mask marks, in words (reports).
    qupath_class : str
        QuPath built-in class of the detections (GeoJSON).
    color : (int, int, int)
        QuPath colour of that class.
    zero_mean_u : bool
        Zero-mean constraint on the image filters ``K^u`` (the article drops it for the
        fluorescence scenario 1, whose background is black).
    density_rule : DensityRule or None
        How annotations become the target when the mask is a concentration rule.
    model : str
        File name of the shipped default model (:func:`vnumba.io.models.shipped_model_path`).
    mask_class : str
        The :data:`MASK_CLASSES` name of the nuclei a one-channel model of this scenario
        marks (``tumour`` for scenario 3, ``immune`` for 1 and 2; ``""``: none), so that its
        detections can be counted as classed nuclei in the per-class evaluation.
    """

    name: str
    target: str
    qupath_class: str
    color: tuple
    zero_mean_u: bool = True
    density_rule: DensityRule | None = None
    model: str = ""
    mask_class: str = ""


SCENARIOS = {
    "scenario1": Scenario(
        "scenario1", "immune nuclei near tumour cells (scenario 1 density rule)",
        "Immune cells", (160, 90, 160), zero_mean_u=False,
        density_rule=DensityRule(2, 1, 40.0, 0.3, "article default"), model="scenario1.h5",
        mask_class="immune"),
    "scenario2": Scenario(
        "scenario2", "immune nuclei in immune-rich neighbourhoods (scenario 2 density rule)",
        "Immune cells", (160, 90, 160), density_rule=DensityRule(2, 2, 40.0, 0.2, "article default"),
        model="scenario2.h5", mask_class="immune"),
    "scenario3": Scenario(
        "scenario3", "tumour nuclei (classes == 1 only; epithelial class 4 never counts as "
        "tumour)", "Tumor", (200, 0, 0), model="scenario3.h5", mask_class="tumour"),
}
#: Scenario names, for command-line ``choices``.
NAMES = tuple(SCENARIOS)

#: QuPath class of detections of an unknown scenario.
UNKNOWN = Scenario("", "", "Detection", (0, 200, 0))


def get(name) -> Scenario:
    """The scenario ``name``, or :data:`UNKNOWN` (generic detections) for any other value."""
    return SCENARIOS.get(str(name), UNKNOWN)


#: Names of the annotation classes (``shared/data/real/README.md``) in reports.
CLASS_NAMES = {1: "tumour", 2: "immune", 3: "other", 4: "epithelial"}


def class_name(c: int) -> str:
    """Report name of annotation class ``c`` (``class 7`` for unknown ones)."""
    return CLASS_NAMES.get(int(c), f"class {int(c)}")


def class_order(name: str):
    """Sort key of class names: :data:`CLASS_NAMES` order, then ``class N`` by N."""
    import re

    order = {v: k for k, v in CLASS_NAMES.items()}
    m = re.fullmatch(r"class (\d+)", name)
    return order.get(name, int(m.group(1)) if m else 1 << 30), name


@dataclass(frozen=True)
class MaskClass:
    """A class of nuclei that a multi-class model's mask channels mark.

    Attributes
    ----------
    name : str
        Name in the model's ``meta["mask_classes"]``, the CSV's ``class`` column and the
        reports (``tumour``, ``immune``, ``other``: the names of :data:`CLASS_NAMES`).
    qupath_class : str
        QuPath's built-in class of such detections (GeoJSON ``classification.name``).
    color : (int, int, int)
        QuPath's colour of that class (RGB 0..255), also the outline colour of the overlays.
    """

    name: str
    qupath_class: str
    color: tuple


#: The mask classes of a multi-class model, by name: QuPath's built-in classes and colours
#: (``Tumor`` (200, 0, 0), ``Immune cells`` (160, 90, 160), ``Other`` (255, 200, 0)).
MASK_CLASSES = {
    "tumour": MaskClass("tumour", "Tumor", (200, 0, 0)),
    "immune": MaskClass("immune", "Immune cells", (160, 90, 160)),
    "other": MaskClass("other", "Other", (255, 200, 0)),
}
#: Channel order of the mask of a multi-class model when it states no ``mask_classes``.
DEFAULT_MASK_CLASSES = ("tumour", "immune", "other")


def mask_class(name: str) -> MaskClass:
    """The :class:`MaskClass` ``name``; an unknown name keeps its own name as QuPath class,
    with the generic detection colour of :data:`UNKNOWN`."""
    return MASK_CLASSES.get(str(name), MaskClass(str(name), str(name), UNKNOWN.color))


def scenario_mask_class(scenario) -> str | None:
    """Mask-class name of a one-channel model of ``scenario`` (None when it has none)."""
    return get(scenario).mask_class or None
