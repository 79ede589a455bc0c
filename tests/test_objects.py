import csv
import io
import json

import numpy as np
import pytest

from vnumba.analysis.objects import (
    label_objects,
    object_polygons,
    object_table,
    objects_to_geojson,
    split_touching,
    table_to_csv,
    write_objects_csv,
    write_objects_geojson,
)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _shoelace(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_watershed_splits_two_touching_discs_into_two_objects():
    a = _disc((60, 80), 30, 25, 10)
    b = _disc((60, 80), 30, 43, 10)
    binary = a | b
    from scipy import ndimage as ndi
    assert ndi.label(binary)[1] == 1  # one connected blob before splitting
    lab = split_touching(binary, h=2.0)
    assert lab.max() == 2
    assert np.array_equal(lab > 0, binary)  # nothing lost, nothing added
    t = object_table(lab)
    cx = np.sort(t.x)
    np.testing.assert_allclose(cx, [25, 43], atol=0.6)
    np.testing.assert_allclose(t.y, [30, 30], atol=1e-9)  # symmetric about row 30
    # Each disc keeps nearly its own area (the neck is shared).
    assert np.all(np.abs(t.area - a.sum()) < 0.05 * a.sum())


def test_single_disc_and_ellipse_are_not_split():
    d = _disc((50, 50), 25, 25, 12)
    assert split_touching(d).max() == 1
    yy, xx = np.mgrid[:40, :90]
    ell = ((yy - 20) / 8.0) ** 2 + ((xx - 45) / 35.0) ** 2 <= 1
    assert split_touching(ell).max() == 1


def test_infinite_split_depth_gives_connected_components():
    binary = _disc((60, 80), 30, 25, 10) | _disc((60, 80), 30, 43, 10)
    assert split_touching(binary, h=np.inf).max() == 1


def test_thin_objects_below_split_depth_are_still_labelled():
    b = np.zeros((20, 20), bool)
    b[5, 3:15] = True  # one-pixel line: distance transform peak 1 < h
    b[12, 12] = True
    lab = split_touching(b, h=3.0)
    assert np.array_equal(lab > 0, b)
    assert lab.max() == 2


def test_label_objects_threshold_is_strict_and_min_area_drops_specks():
    p = np.zeros((30, 30), np.float32)
    p[2:12, 2:12] = 0.9
    p[20, 20] = 0.9            # 1-pixel speck
    p[20:25, 5:10] = 0.5       # exactly at the threshold: background
    lab = label_objects(p, threshold=0.5, min_area=5)
    expected = np.zeros((30, 30), bool)
    expected[2:12, 2:12] = True
    assert lab.max() == 1
    assert np.array_equal(lab > 0, expected)


def test_label_objects_rejects_nan_and_non_float():
    with pytest.raises(ValueError, match="NaN"):
        label_objects(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(TypeError):
        label_objects(np.zeros((4, 4), np.uint8))


def test_object_table_hand_computed_values():
    lab = np.zeros((6, 16), np.int32)
    lab[2:4, 10:14] = 1        # rows 2-3, columns 10-13
    lab[5, 0] = 3              # label 2 absent
    prob = np.zeros((6, 16), np.float32)
    prob[2, 10:14] = 1.0
    prob[3, 10:14] = 0.5
    prob[5, 0] = 0.25
    t = object_table(lab, prob, mpp=0.5)
    assert t.id.tolist() == [1, 3]
    np.testing.assert_allclose(t.x, [11.5, 0.0])   # x is the column
    np.testing.assert_allclose(t.y, [2.5, 5.0])
    assert t.area.tolist() == [8, 1]
    np.testing.assert_allclose(t.mean_mask, [0.75, 0.25])
    np.testing.assert_allclose(t.max_mask, [1.0, 0.25])
    np.testing.assert_allclose(t.centroids(), [[2.5, 11.5], [5.0, 0.0]])


def test_csv_columns_and_coordinates():
    lab = np.zeros((6, 16), np.int32)
    lab[2:4, 10:14] = 1
    prob = (lab > 0).astype(np.float32) * 0.8
    text = table_to_csv(object_table(lab, prob, mpp=0.25))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert set(["id", "x", "y", "area", "mean_mask"]) <= set(rows[0])
    r = rows[0]
    assert int(r["id"]) == 1 and float(r["x"]) == 11.5 and float(r["y"]) == 2.5
    assert int(r["area"]) == 8 and float(r["mean_mask"]) == pytest.approx(0.8)
    assert float(r["area_um2"]) == pytest.approx(8 * 0.25 ** 2)


def test_polygon_follows_qupath_pixel_corner_convention():
    lab = np.zeros((8, 20), np.int32)
    lab[2:4, 10:14] = 5        # covers x in [10, 14], y in [2, 4] in QuPath coordinates
    poly = object_polygons(lab, simplify=0)[5]
    assert np.array_equal(poly[0], poly[-1])
    assert poly[:, 0].min() == 10 and poly[:, 0].max() == 14
    assert poly[:, 1].min() == 2 and poly[:, 1].max() == 4
    # Marching squares at level 1/2 cuts each of the 4 corners by a triangle of area 1/8.
    assert _shoelace(poly) == pytest.approx(8 - 4 * 0.125)
    # Vertices on the straight edges are dropped: 4 edges + 4 corner cuts, closed.
    assert len(poly) == 9


def test_dropping_collinear_vertices_keeps_the_outline_exact():
    from skimage.measure import find_contours
    lab = split_touching(_disc((60, 80), 30, 25, 10) | _disc((60, 80), 30, 43, 10))
    polys = object_polygons(lab, simplify=0)
    for i, poly in polys.items():
        raw = find_contours(np.pad((lab == i).astype(float), 1), 0.5)
        raw = max(raw, key=lambda c: abs(_shoelace(c)))
        assert len(poly) < len(raw)
        assert abs(_shoelace(poly)) == pytest.approx(abs(_shoelace(raw)), abs=1e-9)


def test_geojson_is_a_qupath_detection_collection(tmp_path):
    shape = (60, 80)
    lab = split_touching(_disc(shape, 30, 25, 10) | _disc(shape, 30, 43, 10))
    prob = (lab > 0).astype(np.float32)
    t = object_table(lab, prob)
    fc = objects_to_geojson(lab, t, class_name="Tumor", color=(200, 0, 0))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    for f in fc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "Tumor"
        assert props["classification"]["color"] == [200, 0, 0]
        ring = np.asarray(f["geometry"]["coordinates"][0])
        assert np.array_equal(ring[0], ring[-1]) and _shoelace(ring) > 0
        # The polygon surrounds the object's centroid (+0.5 for the corner origin).
        m = props["measurements"]
        from matplotlib.path import Path as MplPath
        assert MplPath(ring).contains_point((m["x"] + 0.5, m["y"] + 0.5))
    # Files round-trip through JSON/CSV.
    write_objects_geojson(tmp_path / "o.geojson", lab, t)
    write_objects_csv(tmp_path / "o.csv", t)
    assert len(json.loads((tmp_path / "o.geojson").read_text())["features"]) == 2
    assert len((tmp_path / "o.csv").read_text().strip().splitlines()) == 3


def test_extraction_pixels_converts_tissue_sizes_at_the_pixel_size():
    from vnumba.analysis.objects import ASSUMED_MPP, extraction_pixels

    # The defaults are the former pixel defaults at 40x ...
    assert extraction_pixels(0.25) == (2.0, 20)
    # ... a 20x image gets the same tissue sizes in fewer pixels ...
    h, a = extraction_pixels(0.5)
    assert h == pytest.approx(1.0) and a == 5
    # ... unknown pixel size: the assumed 40x, and pixel overrides win.
    assert extraction_pixels(None) == extraction_pixels(ASSUMED_MPP)
    assert extraction_pixels(0.5, split_h=3.0, min_area=7) == (3.0, 7)
    with pytest.raises(ValueError, match="split_um"):
        extraction_pixels(0.25, split_um=float("nan"))
