"""QuPath GeoJSON and cell CSV (vnumba.analysis.qupath): exact polygons with holes and parts,
the structure QuPath reads, reproducible ids, atomic streaming writes."""
import csv
import json
import math
import time
import uuid

import numpy as np
import pytest

from vnumba.analysis.qupath import (
    CELL_COLUMNS,
    GeoJSONWriter,
    annotation_feature,
    detection_feature,
    feature_id,
    geometry_to_geojson,
    label_polygons,
    mask_polygon,
    qupath_classification,
    write_cells_csv,
)


# ----------------------------------------------------------------------------- schema check
def _shoelace(ring):
    a = np.asarray(ring, np.float64)
    return 0.5 * float(np.dot(a[:, 0], np.roll(a[:, 1], -1)) - np.dot(a[:, 1], np.roll(a[:, 0], -1)))


def _check_ring(ring, exterior):
    assert isinstance(ring, list) and len(ring) >= 4, "a linear ring has >= 4 positions"
    for p in ring:
        assert isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
        assert all(math.isfinite(v) for v in p)
    assert ring[0] == ring[-1], "rings are closed"
    # RFC 7946: exterior counter-clockwise, holes clockwise (positive / negative shoelace area
    # in the numbers' frame), as the existing predict writer does.
    assert (_shoelace(ring) > 0) == exterior


def check_qupath_geojson(fc):
    """Structural check against QuPath's GeoJSON (qupath.lib.io.PathObjectTypeAdapters, >= 0.4):
    FeatureCollection of Features with a UUID id, a (Multi)Polygon geometry, properties with
    objectType, classification {name, color [r, g, b]} and measurements name -> number."""
    assert fc["type"] == "FeatureCollection" and isinstance(fc["features"], list)
    for f in fc["features"]:
        assert f["type"] == "Feature"
        fid = f["id"]
        assert isinstance(fid, str) and str(uuid.UUID(fid)) == fid, "id is a canonical UUID string"
        g = f["geometry"]
        assert g["type"] in ("Polygon", "MultiPolygon")
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        assert polys
        for rings in polys:
            _check_ring(rings[0], exterior=True)
            for hole in rings[1:]:
                _check_ring(hole, exterior=False)
        p = f["properties"]
        assert p["objectType"] in ("detection", "annotation")
        if "classification" in p:
            c = p["classification"]
            assert isinstance(c["name"], str) and c["name"]
            assert isinstance(c["color"], list) and len(c["color"]) == 3
            assert all(isinstance(v, int) and 0 <= v <= 255 for v in c["color"])
        for k, v in p.get("measurements", {}).items():
            assert isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            assert math.isfinite(v)
    ids = [f["id"] for f in fc["features"]]
    assert len(ids) == len(set(ids)), "ids are unique"


# ----------------------------------------------------------------------------- polygons
def _ring_and_split():
    lab = np.zeros((12, 16), np.int32)
    lab[1:6, 1:6] = 1
    lab[3, 3] = 0                   # a one-pixel hole
    lab[7:9, 1:3] = 2               # object 2 in two pieces
    lab[8:11, 8:12] = 2
    lab[1:3, 9:11] = 3              # object 3: two squares touching at a corner only
    lab[3:5, 11:13] = 3
    return lab


def test_polygons_are_pixel_exact_with_holes_and_every_part():
    lab = _ring_and_split()
    P = label_polygons(lab)
    assert sorted(P) == [1, 2, 3]
    ring = P[1]
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1
    assert ring.area == 24 and ring.bounds == (1, 1, 6, 6)
    assert ring.interiors[0].envelope.bounds == (3, 3, 4, 4)     # the hole: pixel (3, 3)
    assert len(ring.exterior.coords) == 5                           # collinear vertices dropped
    assert P[2].geom_type == "MultiPolygon" and len(P[2].geoms) == 2 and P[2].area == 4 + 12
    assert P[3].geom_type == "MultiPolygon" and len(P[3].geoms) == 2 and P[3].area == 8
    assert all(g.is_valid for g in P.values())
    # Offset and downsample: level-0 coordinates of a label image at downsample 4.
    Q = label_polygons(lab, ids=[1], offset=(1000, 2000), scale=4.0)
    assert list(Q) == [1]
    assert Q[1].bounds == (1004, 2004, 1024, 2024) and Q[1].area == 24 * 16
    assert label_polygons(np.zeros((4, 4), np.int32)) == {}
    assert label_polygons(lab, ids=[7]) == {}


def test_polygon_areas_equal_pixel_counts_on_a_dense_tile():
    from vnumba.analysis.objects import split_touching

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    fg = np.zeros((128, 128), bool)
    for cy, cx, a, b in rng.uniform([0, 0, 3, 3], [128, 128, 8, 8], (80, 4)):
        fg |= ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
    lab = split_touching(fg, 1.0)
    P = label_polygons(lab)
    area = np.bincount(lab.ravel())
    assert sorted(P) == [int(i) for i in np.nonzero(area[1:])[0] + 1]
    for i, g in P.items():
        assert g.is_valid and g.area == area[i]
        gj = geometry_to_geojson(g)
        f = detection_feature(gj, "tumour", fid=uuid.uuid4())
        check_qupath_geojson({"type": "FeatureCollection", "features": [f]})


def test_1000_nuclei_in_a_512_tile_are_outlined_fast():
    rng = np.random.default_rng(0)
    lab = np.zeros((512, 512), np.int32)
    yy, xx = np.mgrid[:512, :512]
    n = 0
    while n < 1000:
        cy, cx, a, b = rng.uniform([0, 0, 4, 4], [512, 512, 9, 9])
        y0, y1, x0, x1 = int(max(cy - 10, 0)), int(min(cy + 11, 512)), int(max(cx - 10, 0)), int(min(cx + 11, 512))
        m = (((yy[y0:y1, x0:x1] - cy) / a) ** 2 + ((xx[y0:y1, x0:x1] - cx) / b) ** 2 <= 1) & (lab[y0:y1, x0:x1] == 0)
        if m.sum() >= 10:
            n += 1
            lab[y0:y1, x0:x1][m] = n
    t = time.perf_counter()
    P = label_polygons(lab)
    dt = time.perf_counter() - t
    assert len(P) == 1000
    # ~0.2 s on the 2-core development machine under load; generous bound for slow CI.
    assert dt < 10.0, f"{dt:.2f} s for 1000 nuclei"


def test_mask_polygon_and_geojson_geometry():
    m = np.zeros((6, 6), bool)
    m[1:5, 1:5] = True
    m[2:4, 2:4] = False
    g = mask_polygon(m, offset=(10, 20), scale=2)
    assert g.area == 12 * 4 and len(g.interiors) == 1
    gj = geometry_to_geojson(g)
    assert gj["type"] == "Polygon" and len(gj["coordinates"]) == 2
    assert gj["coordinates"][0][0] == gj["coordinates"][0][-1]
    assert mask_polygon(np.zeros((3, 3), bool)).is_empty
    with pytest.raises(ValueError, match="empty"):
        geometry_to_geojson(mask_polygon(np.zeros((3, 3), bool)))


# ----------------------------------------------------------------------------- features, ids
def test_classification_uses_qupath_builtin_classes_from_the_registry():
    from vnumba.scenarios import MASK_CLASSES

    for name, mc in MASK_CLASSES.items():
        c = qupath_classification(name)
        assert c["name"] == mc.qupath_class and c["color"] == list(mc.color)
    assert qupath_classification("Tumor")["color"] == [200, 0, 0]
    assert qupath_classification("tumour")["colorRGB"] == (255 << 24 | 200 << 16) - (1 << 32)
    assert qupath_classification("Stroma", color=(150, 200, 150))["color"] == [150, 200, 150]


def test_feature_ids_are_reproducible_uuid5():
    a = feature_id("slide1", 7)
    assert a == feature_id("slide1", 7) and uuid.UUID(a).version == 5
    assert len({a, feature_id("slide1", 8), feature_id("slide2", 7), feature_id("slide1", 7, "immune-rich")}) == 4


def test_writer_streams_a_qupath_collection_atomically(tmp_path):
    lab = _ring_and_split()
    P = label_polygons(lab, offset=(100, 200))
    out = tmp_path / "s_cells.geojson"
    with GeoJSONWriter(out, slide="s", spool_bytes=64) as w:      # tiny spool: goes to disk
        for i, g in P.items():
            w.add_detection(g, ["tumour", "immune", "other"][i - 1],
                            {"area_um2": g.area * 0.0625, "p_tumour": 0.7, "dist_tumour_um": float("nan"),
                             "skipped": None}, index=i)
        w.add_annotation(mask_polygon(lab > 0, offset=(100, 200)), "Immune cells", {"area_mm2": 1e-3},
                         index=0, name="immune-rich area", kind="immune-rich")
        assert not out.exists()                                   # nothing before the end
    fc = json.loads(out.read_text())
    check_qupath_geojson(fc)
    feats = fc["features"]
    assert [f["properties"]["objectType"] for f in feats] == ["detection"] * 3 + ["annotation"]
    assert [f["id"] for f in feats[:3]] == [feature_id("s", i) for i in (1, 2, 3)]
    assert feats[3]["id"] == feature_id("s", 0, "immune-rich")
    assert [f["properties"]["classification"]["name"] for f in feats] == ["Tumor", "Immune cells", "Other",
                                                                          "Immune cells"]
    g1, g2 = feats[0]["geometry"], feats[1]["geometry"]
    assert g1["type"] == "Polygon" and len(g1["coordinates"]) == 2          # the hole is kept
    assert g2["type"] == "MultiPolygon" and len(g2["coordinates"]) == 2     # both pieces are kept
    assert min(x for x, _ in g1["coordinates"][0]) == 101                   # level-0 coordinates
    m = feats[0]["properties"]["measurements"]
    assert m == {"area_um2": 1.5, "p_tumour": 0.7}                          # NaN/None left out
    assert feats[3]["properties"]["name"] == "immune-rich area"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_cells.geojson"]

    # An exception inside the block writes nothing and leaves the previous file as it was.
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        with GeoJSONWriter(out, slide="s") as w:
            w.add_detection(P[1], "tumour", index=1)
            raise RuntimeError("killed")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s_cells.geojson"]
    # An empty collection is valid too.
    GeoJSONWriter(tmp_path / "e.geojson").close()
    assert json.loads((tmp_path / "e.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    with pytest.raises(ValueError, match="UUID|hexadecimal"):
        annotation_feature(P[1], "Tumor", fid="not-a-uuid")


def test_predict_geojson_keeps_holes_parts_and_has_ids():
    from vnumba.analysis.objects import object_table, objects_to_geojson

    lab = _ring_and_split()
    t = object_table(lab, (lab > 0).astype(np.float32), mpp=0.25)
    fc = objects_to_geojson(lab, t, class_name="Tumor", color=(200, 0, 0), id_seed="img")
    check_qupath_geojson(fc)
    geo = {f["properties"]["measurements"]["id"]: f for f in fc["features"]}
    assert geo[1]["geometry"]["type"] == "Polygon" and len(geo[1]["geometry"]["coordinates"]) == 2
    assert geo[2]["geometry"]["type"] == "MultiPolygon"
    assert geo[1]["id"] == feature_id("img", 1)


# ----------------------------------------------------------------------------- cell CSV
def test_cells_csv_columns_values_and_ids(tmp_path):
    out = tmp_path / "s_cells.csv"
    write_cells_csv(out, x=[10.0, 20.5], y=[5.0, 7.25], classes=["tumour", "immune"], area_um2=[30.0, 12.5],
                    probs=[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dist_tumour_um=[None, 4.0], slide="s",
                    extra={"immune_rich": [0, 1]})
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(CELL_COLUMNS) + ["immune_rich"]
    assert [r["id"] for r in rows] == ["0", "1"] and rows[1]["uuid"] == feature_id("s", 1)
    assert (rows[1]["x"], rows[1]["y"], rows[1]["class"]) == ("20.500", "7.250", "immune")
    assert (rows[0]["area_um2"], rows[0]["p_tumour"], rows[0]["p_immune"], rows[0]["p_other"]) == \
        ("30.000", "0.70000", "0.20000", "0.10000")
    assert rows[0]["dist_tumour_um"] == "" and rows[1]["dist_tumour_um"] == "4.000" and rows[1]["immune_rich"] == "1"
    write_cells_csv(tmp_path / "e.csv", [], [], [], [], np.zeros((0, 3)))
    assert (tmp_path / "e.csv").read_text().strip() == ",".join(CELL_COLUMNS)
    with pytest.raises(ValueError, match="probs"):
        write_cells_csv(tmp_path / "b.csv", [1.0], [1.0], ["tumour"], [1.0], [[1.0, 0.0]])
    assert not (tmp_path / "b.csv").exists()
