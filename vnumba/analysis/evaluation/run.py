"""The evaluation run: every annotated image of a folder, every method, every score, the
report and its figures (:func:`run_evaluation`)."""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
import warnings
from pathlib import Path

import numpy as np

from vnumba.analysis.evaluation.data import find_annotated_images, folder_name, nominal_mpp
from vnumba.analysis.evaluation.methods import ImageContext, MethodSkipped, as_methods, slug
from vnumba.analysis.evaluation.metrics import MARK_FRACTION, evaluate_masks, pool_results
from vnumba.analysis.evaluation.report import ALL_BACKGROUND, classes_line, format_report, jsonable, summary_line
from vnumba.analysis.evaluation.targets import EPITHELIAL_UNKNOWN, scenario_rule, target_from_annotations
from vnumba.analysis.objects import MIN_AREA_UM2, SPLIT_UM
from vnumba.analysis.scores import MATCH_RADIUS
from vnumba.io.labels import UnreadableLabels, read_labels

__all__ = ["run_evaluation"]


def run_evaluation(methods: dict, data_dir: str | Path, out_dir: str | Path,
                   target: str = "scenario3", rule_model=None,
                   mpp: float | None = None, threshold: float = 0.5,
                   split_um: float = SPLIT_UM, min_area_um2: float = MIN_AREA_UM2,
                   split_h: float | None = None, min_area: int | None = None,
                   radius: float = MATCH_RADIUS, tile: int = 512,
                   baseline_cfg=None, overlays: bool = True, say=print,
                   script_rules: dict | None = None, class_match_um: float | None = None,
                   border_um: float | None = None, warn=None) -> dict:
    """Evaluate several methods on every annotated image of ``data_dir``.

    Parameters
    ----------
    methods : dict
        name -> a model, the string ``"baseline"`` for the classical pipeline, or any
        :class:`vnumba.analysis.evaluation.methods.Method`
        (:func:`~vnumba.analysis.evaluation.methods.as_methods`; a model with a fitted object
        filter is also scored as ``NAME + object filter``).
    data_dir, out_dir : path-like
    target : str
        ``scenario1|2|3`` or ``nuclei`` (:func:`target_from_annotations`).
    rule_model
        Model whose ``meta`` may state the density rule and whose ``mpp`` scales its radius.
    mpp : float, optional
        Pixel size of all images; default: ``manifest.csv`` (:func:`nominal_mpp`).
    threshold : float
        Mask threshold.
    split_um, min_area_um2 : float
        Object extraction from the models' masks (:func:`vnumba.analysis.objects.label_objects`): split
        depth in um and smallest object in um^2, converted at each image's pixel size
        (:func:`vnumba.analysis.objects.extraction_pixels`).
    split_h, min_area : optional
        The same in pixels of every image (override the micrometre values).
    radius : float
        Centroid matching distance, pixels of the evaluated image.
    tile : int
    baseline_cfg : BaselineConfig, optional
    overlays : bool
        Write ``FOLDER_NAME__METHOD_overlay.png`` (prediction outlines green, target
        magenta; FOLDER is the image's folder below ``data_dir``).
    say : callable
        Progress messages.
    warn : callable, optional
        Warnings (one string each, e.g. a pixel size assumed); default
        :func:`warnings.warn`.
    script_rules : dict, optional
        scenario -> ``(radius, threshold, mpp)`` of its generator script's density rule
        (:func:`scenario_rule`; the command line passes the shipped scripts').
    class_match_um, border_um : float, optional
        Per-class evaluation (:func:`vnumba.analysis.classeval.evaluate_classes`): centroid
        matching distance (default 4 µm) and tumour-border distance (10 µm), converted at each
        image's pixel size (unknown: the model's, else 0.25 µm/px).

    Returns
    -------
    dict
        The report (also written as ``report.json`` and ``report.md`` in ``out_dir``, with
        the figures ``marked_fractions.png`` and ``confusion.png`` when any image has
        classes).  Keys:
        ``images`` (per image: ``folder``, ``results`` per method, ``all_background``,
        ``skipped`` reasons, ``note``), ``overall`` and ``per_folder`` (folder -> method ->
        :func:`pool_results`), ``all_background`` (``{"overall", "per_folder"}``: the same
        scores for an all-zero mask), ``settings``, ``methods``, ``figures``.

    Notes
    -----
    An image's folder is its folder below ``data_dir``; images directly in ``data_dir``
    get ``data_dir``'s own name, so that a tile is pooled under the same folder name
    whether ``data_dir`` is its folder or a parent.

    Examples
    --------
    One annotated image (a dark square nucleus on a pale background) scored with the
    classical baseline:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import imageio.v3 as iio
    >>> import numpy as np
    >>> from vnumba.analysis.evaluation import run_evaluation
    >>> d = Path(tempfile.mkdtemp())
    >>> img = np.full((64, 64, 3), 230, np.uint8)
    >>> img[20:30, 20:30] = (90, 60, 150)
    >>> inst = np.zeros((64, 64), np.int32)
    >>> inst[20:30, 20:30] = 1
    >>> iio.imwrite(d / "t.png", img)
    >>> np.savez(d / "t_labels.npz", instances=inst)
    >>> rep = run_evaluation({"classical baseline": "baseline"}, d, d / "out", target="nuclei",
    ...                      mpp=0.5, overlays=False, say=lambda *a: None)
    >>> r = rep["overall"]["classical baseline"]
    >>> r["n_target"], r["n_pred"], r["objects"]["f1"]
    (1, 1, 1.0)
    >>> sorted(p.name for p in (d / "out").iterdir())
    ['report.json', 'report.md']
    """
    from vnumba.analysis.baseline import BaselineConfig
    from vnumba.analysis.classeval import BORDER_UM, CLASS_MATCH_UM, evaluate_classes
    from vnumba.analysis.objects import ASSUMED_MPP, object_table
    from vnumba.analysis.plots import overlay_contours
    from vnumba.io.images import read_image, write_png

    if warn is None:
        def warn(msg):
            warnings.warn(msg, stacklevel=3)
    out_dir = Path(out_dir)
    baseline_cfg = baseline_cfg or BaselineConfig()
    class_match_um = CLASS_MATCH_UM if class_match_um is None else float(class_match_um)
    border_um = BORDER_UM if border_um is None else float(border_um)
    runners = as_methods(methods, threshold, split_um, min_area_um2, split_h, min_area, tile,
                         baseline_cfg)
    pairs = find_annotated_images(data_dir)
    if not pairs:
        raise FileNotFoundError(f"{data_dir}: no annotated images (NAME_labels.npz) found")
    # out_dir is made by the first file written into it (every writer is atomic and makes its
    # folder), so a run refused on its inputs leaves nothing behind.
    data_dir = Path(data_dir)
    images, per_method = [], {m.name: [] for m in runners}
    all_bg = []
    for k, (img_path, lab_path) in enumerate(pairs, 1):
        rel = str(img_path.relative_to(data_dir)) if img_path.is_relative_to(data_dir) else str(img_path)
        entry = {"image": rel, "folder": folder_name(data_dir, rel), "results": {}, "skipped": {}}
        images.append(entry)

        def skip(why, _entry=entry, _k=k, _rel=rel):
            _entry["skipped"]["all"] = why
            say(f"[{_k}/{len(pairs)}] {_rel}: skipped — {why}")
        try:
            # Float labels (e.g. saved by an image tool) would round ids silently: refused;
            # ids beyond the pixel count renumbered (vnumba.io.labels).
            instances, classes = read_labels(lab_path)
        except UnreadableLabels as e:
            skip(f"unreadable annotation ({e})")
            continue
        try:
            img = read_image(img_path)
        except (OSError, ValueError) as e:
            skip(str(e))
            continue
        if img.array.shape[:2] != instances.shape:
            skip(f"image {img.array.shape[:2]} and annotation {instances.shape} differ in size")
            continue
        img_mpp = mpp if mpp is not None else nominal_mpp(data_dir, img_path)
        entry["mpp"] = img_mpp
        if img_mpp is None:
            known = [m for m in methods.values() if getattr(m, "meta", None) and m.meta.get("mpp")]
            if known:
                entry["mpp_assumed"] = float(known[0].meta["mpp"])
                warn(f"{rel}: pixel size unknown (no --mpp, no manifest.csv entry); "
                     f"assuming the model's {known[0].meta['mpp']:g} um/px")
        rule = scenario_rule(target, rule_model, img_mpp, (script_rules or {}).get(target))
        try:
            t_mask, t_labels = target_from_annotations(
                instances, classes, target, rule, epithelial_not_target=target == "scenario3")
        except LookupError as e:
            skip(str(e))
            continue
        if rule is not None:
            entry["rule"] = dataclasses.asdict(rule)
        if target == "scenario3" and np.any(classes == EPITHELIAL_UNKNOWN):
            entry["note"] = (f"class {EPITHELIAL_UNKNOWN} (epithelial, tumour vs normal not "
                             "distinguished): target = class-1 nuclei only; epithelial nuclei "
                             "are reported, not scored as tumour")
        n_t = int(len(np.unique(t_labels)) - 1)
        say(f"[{k}/{len(pairs)}] {rel}: {img.array.shape[1]}x{img.array.shape[0]}, mpp {img_mpp}, "
            f"{n_t} target nuclei" + (f" ({entry['note']})" if "note" in entry else ""))
        cls_kw = dict(instances=instances, classes=classes) if classes is not None else {}
        # Micrometre distances of the per-class scores: the same pixels for every method.
        ctx = ImageContext(img, img_path, img_mpp, img_mpp or entry.get("mpp_assumed") or ASSUMED_MPP,
                           target)
        for method in runners:
            t0 = time.perf_counter()
            try:
                seg = method.segment(ctx)
            except MethodSkipped as e:
                entry["skipped"][method.name] = str(e)
                say(f"    {method.name}: skipped — {e}")
                continue
            if seg is None:
                continue
            res = evaluate_masks(seg.mask, seg.labels, t_mask, t_labels, radius, **cls_kw)
            if classes is not None and seg.classify is not None:
                res["classified"] = evaluate_classes(
                    object_table(seg.class_labels).centroids(), seg.classify(seg.class_labels),
                    instances, classes, ctx.class_mpp, class_match_um, border_um)
            res["seconds"] = time.perf_counter() - t0
            entry["results"][method.name] = res
            per_method[method.name].append((entry["folder"], res))
            say(f"    {method.name}: {summary_line(res)} ({res['n_pred']} objects, "
                f"{res['seconds']:.1f} s)")
            if "classified" in res:
                say(f"    {method.name} classes: {classes_line(res)}")
            if overlays:
                # The image's path below DATA_DIR keeps equal names in different folders apart.
                fn = out_dir / f"{slug(str(Path(rel).with_suffix('')))}__{slug(method.name)}_overlay.png"
                write_png(fn, overlay_contours(seg.base, seg.labels, second=t_labels))
                res["overlay"] = fn.name
        if entry["results"]:
            # The reference every method must beat, on the images the methods were scored on.
            bg = evaluate_masks(np.zeros(instances.shape, bool),
                                np.zeros(instances.shape, np.int32), t_mask, t_labels, radius,
                                **cls_kw)
            entry["all_background"] = bg
            all_bg.append((entry["folder"], bg))
            say(f"    {ALL_BACKGROUND}: {summary_line(bg)}")
    report = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "data_dir": str(data_dir),
        "target": target,
        "settings": dict(threshold=threshold, split_um=split_um, min_area_um2=min_area_um2,
                         split_h=split_h, min_area=min_area,
                         match_radius=radius, tile=tile, mpp=mpp,
                         class_match_um=class_match_um, border_um=border_um,
                         baseline=dataclasses.asdict(baseline_cfg)),
        "methods": [m.describe() for m in runners],
        "mark_fraction": MARK_FRACTION,
        "images": images,
        "overall": {name: pool_results([r for _, r in rs])
                    for name, rs in per_method.items() if rs},
        "per_folder": {},
        "all_background": {"overall": pool_results([r for _, r in all_bg]) if all_bg else None,
                           "per_folder": {}},
        "figures": [],
    }
    folders = list(dict.fromkeys(f for f, _ in all_bg))
    for f in folders:
        report["per_folder"][f] = {name: pool_results([r for g, r in rs if g == f])
                                   for name, rs in per_method.items()
                                   if any(g == f for g, _ in rs)}
        report["all_background"]["per_folder"][f] = pool_results([r for g, r in all_bg if g == f])
    if any("classes" in r for r in report["overall"].values()):
        from vnumba.analysis.plots import plot_marked_fractions
        plot_marked_fractions(report, out_dir / "marked_fractions.png")
        report["figures"].append("marked_fractions.png")
    if any("classified" in r for r in report["overall"].values()):
        from vnumba.analysis.plots import plot_confusion
        plot_confusion(report, out_dir / "confusion.png")
        report["figures"].append("confusion.png")
    from vnumba.io.outputs import atomic_write_text
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, default=jsonable))
    atomic_write_text(out_dir / "report.md", format_report(report))
    return report
