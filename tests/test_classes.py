"""Per-nucleus classes of a multi-class model (issue 20): the rule on hand-made maps, the
table / CSV / GeoJSON fields, and the QuPath facts of vnumba.scenarios."""
import json

import numpy as np
import pytest

from vnumba.analysis.classes import class_map, classify_nuclei, nucleus_class_probs, nucleus_probability
from vnumba.analysis.objects import label_objects, object_table, objects_to_geojson, table_to_csv


def _two_nuclei():
    """Two 2x2 nuclei and three hand-made class maps (tumour, immune, other)."""
    labels = np.zeros((4, 7), np.int32)
    labels[1:3, 1:3] = 1
    labels[1:3, 4:6] = 2
    maps = np.zeros((3, 4, 7), np.float32)
    # nucleus 1: tumour 0.8/0.6 (mean 0.7), immune 0.2, other 0.1 -> p = 0.7, 0.2, 0.1
    maps[0, 1:3, 1:3] = [[0.8, 0.6], [0.6, 0.8]]
    maps[1, 1:3, 1:3] = 0.2
    maps[2, 1:3, 1:3] = 0.1
    # nucleus 2: tumour 0.1, immune 0.9/0.5 (mean 0.7), other 0 -> sum 0.8: p = 1/8, 7/8, 0
    maps[0, 1:3, 4:6] = 0.1
    maps[1, 1:3, 4:6] = [[0.9, 0.5], [0.5, 0.9]]
    # background: strongly "other" everywhere else, which must not leak into the nuclei
    maps[2][labels == 0] = 1.0
    return labels, maps


def test_class_rule_on_hand_made_maps():
    labels, maps = _two_nuclei()
    nc = classify_nuclei(labels, maps, ["tumour", "immune", "other"])
    assert nc.ids.tolist() == [1, 2]
    np.testing.assert_allclose(nc.probs, [[0.7, 0.2, 0.1], [1 / 8, 7 / 8, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(nc.probs.sum(axis=1), 1.0)
    assert nc.labels == ["tumour", "immune"]
    assert nc.index.tolist() == [0, 1]
    np.testing.assert_array_equal(class_map(labels, nc), np.where(labels == 1, 1, 0)
                                  + np.where(labels == 2, 2, 0))


def test_class_rule_ties_zeros_and_subsets():
    labels, maps = _two_nuclei()
    maps[:, 1:3, 1:3] = 0.0                       # every map 0 on nucleus 1: uniform
    maps[0, 1:3, 4:6] = maps[1, 1:3, 4:6] = 0.4   # tie tumour / immune: first in channel order
    maps[2, 1:3, 4:6] = 0.2
    ids, p = nucleus_class_probs(labels, maps)
    np.testing.assert_allclose(p, [[1 / 3] * 3, [0.4, 0.4, 0.2]], rtol=1e-6)
    nc = classify_nuclei(labels, maps, ("tumour", "immune", "other"))
    assert nc.labels == ["tumour", "tumour"]
    ids, p = nucleus_class_probs(labels, maps, ids=[2])
    assert ids.tolist() == [2] and p.shape == (1, 3)
    with pytest.raises(ValueError, match="present"):
        nucleus_class_probs(labels, maps, ids=[3])
    with pytest.raises(ValueError, match="names"):
        classify_nuclei(labels, maps, ["tumour", "immune"])
    with pytest.raises(ValueError, match="size"):
        nucleus_class_probs(labels[:, :5], maps)


def test_nuclei_are_the_objects_of_the_union_mask():
    labels, maps = _two_nuclei()
    maps[2][labels == 0] = 0.0
    prob = nucleus_probability(maps)
    np.testing.assert_array_equal(prob, maps.max(axis=0))
    # nucleus 2 is above 0.45 only in the immune map, nucleus 1 only in the tumour map:
    # both are nuclei of the union (max > 0.45), not of any single sum or channel
    lab = label_objects(prob, 0.45, h=np.inf)
    assert lab.max() == 2
    np.testing.assert_array_equal(lab, labels)
    assert not np.any(maps[0][lab == 2] > 0.45) and not np.any(maps[1][lab == 1] > 0.45)


def test_table_csv_and_geojson_carry_the_classes():
    labels, maps = _two_nuclei()
    t = object_table(labels, nucleus_probability(maps), mpp=0.5, class_probs=maps,
                     class_names=["tumour", "immune", "other"])
    lines = table_to_csv(t).splitlines()
    assert lines[0] == ("id,x,y,area,mean_mask,max_mask,area_um2,class,p_tumour,p_immune,"
                        "p_other")
    assert lines[1].endswith(",tumour,0.70000,0.20000,0.10000")
    assert lines[2].endswith(",immune,0.12500,0.87500,0.00000")
    fc = objects_to_geojson(labels, t, class_name="Tumor", color=(200, 0, 0))
    props = [f["properties"] for f in fc["features"]]
    assert [p["classification"]["name"] for p in props] == ["Tumor", "Immune cells"]
    assert [p["classification"]["color"] for p in props] == [[200, 0, 0], [160, 90, 160]]
    assert props[1]["classification"]["colorRGB"] == (255 << 24 | 160 << 16 | 90 << 8 | 160) - (1 << 32)
    assert props[1]["name"] == "Immune cells 2"
    assert props[0]["measurements"]["p_tumour"] == pytest.approx(0.7)
    assert props[1]["measurements"]["p_immune"] == pytest.approx(0.875)
    json.dumps(fc)
    with pytest.raises(ValueError, match="class_names"):
        object_table(labels, class_probs=maps)


def test_qupath_class_facts_live_in_the_scenario_registry():
    from vnumba.scenarios import DEFAULT_MASK_CLASSES, MASK_CLASSES, mask_class, scenario_mask_class
    assert DEFAULT_MASK_CLASSES == ("tumour", "immune", "other")
    assert {k: (v.qupath_class, v.color) for k, v in MASK_CLASSES.items()} == {
        "tumour": ("Tumor", (200, 0, 0)), "immune": ("Immune cells", (160, 90, 160)),
        "other": ("Other", (255, 200, 0))}
    assert mask_class("weird").qupath_class == "weird"
    assert scenario_mask_class("scenario3") == "tumour"
    assert scenario_mask_class("scenario2") == "immune"
    assert scenario_mask_class("nothing") is None
