"""Scenario scripts: parsing, validation errors, registry (synth.script)."""
import textwrap

import pytest

from synth.script import (
    SHIPPED,
    ScriptError,
    get_scenario,
    load_script,
    parse_script_text,
    register_scenario,
    shipped_path,
)

MINIMAL = textwrap.dedent("""
    [scenario]
    kind = "scenario2"
    mpp = 0.5
    size = [40, 50]

    [domain]
    method = "voronoi"
    regions = 3
    groups = { a = 2 }

    [colors.bg]
    mean = [0.9, 0.8, 0.9]

    [colors.c]
    mean = [0.5, 0.3, 0.6]
    cov = [[0.001, 0.0, 0.0], [0.0, 0.001, 0.0], [0.0, 0.0, 0.001]]

    [[layers]]
    name = "background"
    kind = "noise"
    color = "bg"

    [[layers]]
    name = "cells"
    kind = "cells"
    color = "c"
    region = "a"
    count = [3, 5]
    semi_axes = [[3.0, 4.0], [2.0, 3.0]]

    [mask]
    rule = "concentration"
    target = "cells"
    reference = ["cells"]
    radius = 10.0
    threshold = 0.2
""")


def _err(text, tmp_path, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ScriptError) as ei:
        load_script(p)
    e = ei.value
    assert str(p) in str(e)
    return e


def test_minimal_script_parses_with_defaults(tmp_path):
    p = tmp_path / "mini.toml"
    p.write_text(MINIMAL)
    s = load_script(p)
    assert s.name == "mini" and s.scenario == "scenario2" and s.mpp == 0.5 and s.size == (40, 50)
    assert s.text == MINIMAL and s.path == str(p)
    assert s["layers"][1].count == (3, 5) and s["layers"][1].overlap is False
    assert s["colors"]["bg"].cov == ((0.0,) * 3,) * 3
    assert s["render"] is None and s.normalization.method == "none"


@pytest.mark.parametrize("name", ["scenario1", "scenario2"])
def test_shipped_scripts_load_by_name(name):
    s = load_script(name)
    assert s.scenario == name and s.name == name
    assert s.path == str(shipped_path(name))
    assert s.size == (300, 300) and s.mpp == 0.5


@pytest.mark.parametrize("old, new, key, reason", [
    # unknown keys
    ('mpp = 0.5', 'mpp = 0.5\nzoom = 2', "scenario.zoom", "unknown key"),
    ('count = [3, 5]', 'count = [3, 5]\ncolour = "c"', "layers[1].colour", "unknown key"),
    ('[mask]', '[masks]', "masks", "unknown section"),
    ('regions = 3', 'regions = 3\nseeds = 4', "domain.seeds", "unknown key"),
    # wrong types
    ('mpp = 0.5', 'mpp = "0.5"', "scenario.mpp", "must be number"),
    ('size = [40, 50]', 'size = [40.5, 50]', "scenario.size[0]", "must be integer"),
    ('size = [40, 50]', 'size = [40]', "scenario.size", "must have 2 elements"),
    ('count = [3, 5]', 'count = "many"', "layers[1].count", "must be integer or array"),
    ('radius = 10.0', 'radius = true', "mask.radius", "must be number"),
    ('mean = [0.9, 0.8, 0.9]', 'mean = 0.9', "colors.bg.mean", "must be array"),
    ('method = "voronoi"', 'method = "kmeans"', "domain.method", "must be one of"),
    # impossible values
    ('mpp = 0.5', 'mpp = -1.0', "scenario.mpp", "must be > 0"),
    ('threshold = 0.2', 'threshold = 1.5', "mask.threshold", "must be <= 1"),
    ('semi_axes = [[3.0, 4.0], [2.0, 3.0]]', 'semi_axes = [[5.0, 4.0], [2.0, 3.0]]',
     "layers[1].semi_axes[0]", "min must be <= max"),
    ('semi_axes = [[3.0, 4.0], [2.0, 3.0]]', 'semi_axes = [[0.0, 4.0], [2.0, 3.0]]',
     "layers[1].semi_axes", "must be > 0"),
    ('groups = { a = 2 }', 'groups = { a = 2, b = 2 }', "domain.groups", "only 3 exist"),
    ('mean = [0.5, 0.3, 0.6]', 'mean = [0.5, 0.3, 1.6]', "colors.c.mean", "must be <= 1"),
    ('cov = [[0.001, 0.0, 0.0], [0.0, 0.001, 0.0], [0.0, 0.0, 0.001]]',
     'cov = [[0.001, 0.0, 0.0], [0.0, -0.001, 0.0], [0.0, 0.0, 0.001]]', "colors.c.cov",
     "positive semi-definite"),
    ('cov = [[0.001, 0.0, 0.0], [0.0, 0.001, 0.0], [0.0, 0.0, 0.001]]',
     'cov = [[0.001, 0.0005, 0.0], [0.0, 0.001, 0.0], [0.0, 0.0, 0.001]]', "colors.c.cov",
     "symmetric"),
    # references between sections
    ('color = "c"', 'color = "d"', "layers[1].color", "no colour table"),
    ('region = "a"', 'region = "b"', "layers[1].region", "unknown region group"),
    ('target = "cells"', 'target = "background"', "mask.target", "has no cells"),
    ('reference = ["cells"]', 'reference = ["nuclei"]', "mask.reference", "unknown layer"),
    ('name = "cells"', 'name = "background"', "layers[1].name", "duplicate layer name"),
    ('kind = "cells"', 'kind = "blobs"', "layers[1].kind", "unknown layer kind"),
    ('kind = "scenario2"', 'kind = "scenario_nonexistent"', "scenario.kind", "unknown scenario kind"),
])
def test_each_validation_error_names_file_key_and_reason(tmp_path, old, new, key, reason):
    assert MINIMAL.count(old) == 1, old
    e = _err(MINIMAL.replace(old, new), tmp_path)
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert key in str(e) and reason in str(e)


def test_missing_required_key_and_section(tmp_path):
    e = _err(MINIMAL.replace('kind = "scenario2"\n', ''), tmp_path)
    assert e.key == "scenario.kind" and "required" in e.reason
    start = MINIMAL.index("[[layers]]")
    end = MINIMAL.index("[mask]")
    e = _err(MINIMAL[:start] + MINIMAL[end:], tmp_path)
    assert e.key == "layers" and "required" in e.reason


def test_nuclei_must_refer_to_an_earlier_cells_layer(tmp_path):
    extra = '\n[[layers]]\nname = "nuc"\nkind = "nuclei"\ncolor = "c"\nof = "later"\n'
    text = MINIMAL.replace("[mask]", extra + "\n[mask]")
    e = _err(text, tmp_path)
    assert e.key == "layers[2].of" and "not an earlier layer" in e.reason
    e = _err(text.replace('of = "later"', 'of = "background"'), tmp_path)
    assert e.key == "layers[2].of" and "no cells" in e.reason


def test_syntax_error_and_missing_file(tmp_path):
    e = _err("[scenario\nkind = 1", tmp_path)
    assert "not valid TOML" in e.reason
    with pytest.raises(ScriptError, match="no such file"):
        load_script(tmp_path / "nope.toml")
    with pytest.raises(ScriptError, match="no shipped script"):
        load_script("scenario_unknown")


def test_filter_validation(tmp_path):
    text = MINIMAL.replace('count = [3, 5]', 'count = [3, 5]\n'
                           'filters = [{ kind = "noise", sigma = 0.1, apply_to = "both" }]')
    e = _err(text, tmp_path)
    assert e.key == "layers[1].filters[0].apply_to"


def test_with_size_rewrites_text_and_size(tmp_path):
    s = parse_script_text(MINIMAL, tmp_path / "x.toml")
    t = s.with_size(20, 30)
    assert t.size == (20, 30) and "size = [20, 30]" in t.text
    assert t["layers"] == s["layers"]


def test_registry_lets_a_module_add_a_scenario_kind_with_its_own_schema(tmp_path):
    from dataclasses import dataclass

    from synth.script import param

    @dataclass(frozen=True)
    class Blob:
        radius: float = param(3.0, gt=0.0)

    calls = []

    def gen(script, rng, reference):
        calls.append(reference)
        return None

    register_scenario("test_blobs_kind", sections={"blob": Blob}, generate=gen, required=("blob",),
                      replace=True)
    s = parse_script_text('[scenario]\nkind = "test_blobs_kind"\n[blob]\nradius = 2.0\n')
    assert s["blob"].radius == 2.0 and s.scenario == "test_blobs_kind"
    assert get_scenario("test_blobs_kind").generate is gen
    with pytest.raises(ScriptError, match="blob.radius: must be > 0"):
        parse_script_text('[scenario]\nkind = "test_blobs_kind"\n[blob]\nradius = -2.0\n')
    with pytest.raises(ScriptError, match="blob: required section"):
        parse_script_text('[scenario]\nkind = "test_blobs_kind"\n')
    with pytest.raises(ValueError, match="already registered"):
        register_scenario("test_blobs_kind", sections={}, generate=gen)


def test_shipped_names_list():
    assert SHIPPED == ("scenario1", "scenario2", "scenario3")


def test_a_deeply_nested_or_huge_script_is_a_script_error_not_a_crash():
    with pytest.raises(ScriptError, match="nested too deeply"):
        parse_script_text("x = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ScriptError, match="at most"):
        parse_script_text("# " + "x" * 2_000_000)
