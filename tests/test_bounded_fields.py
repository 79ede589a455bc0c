"""Bounded config fields (vnumba/ops/fields.py): one mechanism for the range checks of every
configuration dataclass and of synth's scenario scripts; each refusal names the field and the
value."""
from dataclasses import dataclass

import pytest

from synth.layouts import LayoutParams
from synth.params import ParseContext, ScriptError, param, parse_dataclass
from synth.reference import ExtractionConfig
from vnumba.analysis.interactions import InteractionConfig
from vnumba.ops.fields import Bounds, Fraction, PositiveInt, PositiveOddInt, bounded, check_bounds
from vnumba.unet.network import UNetConfig
from vnumba.vn.config import ModelConfig
from vnumba.vn.gpu.tiling import Tiling


@dataclass(frozen=True)
class Example:
    count: PositiveInt = 1
    kernel: PositiveOddInt = 3
    share: Fraction = 0.5
    lightness: float = bounded(70.0, ge=0, le=100)
    pair: tuple = bounded((1.0, 2.0), gt=0)

    def __post_init__(self):
        check_bounds(self)


@pytest.mark.parametrize("kw,message", [
    ({"count": 0}, "Example.count must be >= 1, got 0"),
    ({"count": True}, "Example.count must be an int, got True"),
    ({"count": 2.0}, "Example.count must be an int, got 2.0"),
    ({"kernel": 4}, "Example.kernel must be odd, got 4"),
    ({"share": 1.5}, "Example.share must be <= 1, got 1.5"),
    ({"share": float("nan")}, "Example.share must be a finite number, got nan"),
    ({"lightness": 101}, "Example.lightness must be <= 100, got 101"),
    ({"pair": (1.0, -2.0)}, "Example.pair must be > 0, got -2.0"),
])
def test_check_bounds_names_the_field_and_the_value(kw, message):
    Example()
    with pytest.raises(ValueError) as e:
        Example(**kw)
    assert str(e.value) == message


def test_script_fields_use_the_same_bounds_and_message():
    @dataclass(frozen=True)
    class Section:
        size: int = param(3, ge=1, le=10)

    assert Bounds(ge=1, le=10).violation(0) == "must be >= 1, got 0"
    with pytest.raises(ScriptError, match="f.toml: sec.size: must be <= 10, got 11"):
        parse_dataclass(Section, {"size": 11}, ParseContext("f.toml"), "sec")


@pytest.mark.parametrize("cls,kw", [
    (ModelConfig, {"ks": 4}), (ModelConfig, {"n_w": 1}), (ModelConfig, {"l1_radius": 0.0}),
    (UNetConfig, {"width": 0}), (UNetConfig, {"kernel": 2}), (Tiling, {"kg_blocks": 0}),
    (InteractionConfig, {"call_fraction": 1.5}), (InteractionConfig, {"disc_segments": 0}),
    (LayoutParams, {"window": 0}), (LayoutParams, {"max_hole_um2": -1.0}),
    (ExtractionConfig, {"seed": -1}), (ExtractionConfig, {"background_min_lightness": 101.0}),
])
def test_every_config_refuses_out_of_range_values_by_name(cls, kw):
    cls()
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{name} must be .*, got {value!r}$"):
        cls(**kw)
