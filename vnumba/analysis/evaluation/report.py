"""The evaluation's report in words: one-line summaries (progress messages) and the Markdown
of ``report.md``."""
from __future__ import annotations

import json

import numpy as np

from vnumba.analysis.evaluation.metrics import MARK_FRACTION
from vnumba.analysis.evaluation.targets import target_text
from vnumba.scenarios import class_order

__all__ = ["ALL_BACKGROUND", "format_report", "summary_line", "classes_line", "n_images_text",
           "jsonable"]

#: Name of the all-zero reference mask in messages and report.md.
ALL_BACKGROUND = "all background"


def _fmt(v, spec=".3f") -> str:
    """A score, or "–" when not applicable (None)."""
    return "–" if v is None else format(v, spec)


def _marked_text(classes: dict) -> str:
    nuc = ", ".join(f"{n} {_fmt(c['marked_fraction'])} ({c['marked']}/{c['nuclei']})"
                    for n, c in classes.items())
    pix = ", ".join(f"{n} {_fmt(c['pixel_fraction'])}" for n, c in classes.items())
    return f"marked nuclei {nuc}; mask pixels per class {pix}"


def n_images_text(r: dict) -> str:
    """``"1 image"`` / ``"N images"`` of a pooled result."""
    n = r["n_images"]
    return f"{n} image" if n == 1 else f"{n} images"


def summary_line(r: dict) -> str:
    """One-line scores of a result or pooled result (stderr messages)."""
    p, o = r["pixel"], r["objects"]
    s = (f"pixel acc {100 * p['accuracy']:.2f} %, Dice {p['dice']:.3f}, "
         f"P {_fmt(o['precision'])} R {_fmt(o['recall'])} F1 {_fmt(o['f1'])}")
    if "classes" in r:
        s += "; " + _marked_text(r["classes"])
    return s


def classes_line(r: dict) -> str:
    """One line of the per-class figures of a result (empty without them)."""
    if "classified" not in r:
        return ""
    from vnumba.analysis.classeval import class_summary
    return class_summary(r["classified"])


def jsonable(o):
    """``json.dumps`` default of a report: NumPy scalars and arrays as Python values."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def format_report(report: dict) -> str:
    """Markdown text of a report made by :func:`run_evaluation`."""
    s = report["settings"]
    lines = [
        "# Evaluation on real annotated images", "",
        f"- data: `{report['data_dir']}`",
        f"- target: {target_text(report['target'])}",
        f"- mask threshold {s['threshold']}, watershed split depth "
        + (f"{s['split_h']} px" if s.get("split_h") is not None else f"{s.get('split_um')} µm")
        + ", minimum object area "
        + (f"{s['min_area']} px" if s.get("min_area") is not None
           else f"{s.get('min_area_um2')} µm²")
        + " (converted at each image's pixel size), centroid matching radius "
        f"{s['match_radius']} px (one-to-one)",
        f"- created {report['created']}",
    ]
    for m in report["methods"]:
        if m["kind"] == "model":
            lines.append(f"- `{m['name']}`: {m['arch']} model, scenario {m['scenario']}, "
                         f"trained at {m['mpp']} µm/px")
        elif m["kind"] == "object filter":
            lines.append(f"- `{m['name']}`: the objects of `{m['of']}` that its fitted object "
                         f"filter keeps")
        else:
            b = s["baseline"]
            thr = "Otsu threshold" if b["threshold"] is None else f"threshold {b['threshold']}"
            lines.append(f"- `{m['name']}`: haematoxylin by colour deconvolution (rgb2hed), "
                         f"Gaussian σ = {b['sigma']} px, {thr}, "
                         f"{'holes filled, ' if b['fill_holes'] else ''}distance-"
                         f"transform watershed (depth {b['split_h']} px), objects ≥ "
                         f"{b['min_area']} px"
                         + (f"; classes by shape: minor/major axis < "
                            f"{b['spindle_axis_ratio']} other, else equivalent diameter < "
                            f"{b['immune_max_diameter_um']} µm immune, else tumour"
                            if "immune_max_diameter_um" in b else ""))
    lines += [
        "",
        "Pixel accuracy, Dice and IoU of the thresholded mask against the target mask; "
        "precision / recall / F1 of object detection (\"–\": not applicable, the image has "
        "no target nucleus). *Overall* and *per folder* pool the pixel and match counts of "
        "the evaluated images (detection: of the images with target nuclei). "
        f"*{ALL_BACKGROUND}* is an all-zero mask: the pixel accuracy of marking nothing.", "",
    ]
    rules = {json.dumps(im["rule"], sort_keys=True) for im in report["images"] if "rule" in im}
    for r in sorted(rules):
        d = json.loads(r)
        lines.insert(4, f"- density rule: class {d['cell_class']} nuclei whose disc of radius "
                        f"{d['radius']:.1f} px has a class-{d['density_class']} pixel fraction "
                        f"> {d['threshold']} ({d['source']})")
    bg = report.get("all_background") or {}
    head = ("| image | method | pixel acc. | Dice | IoU | precision | recall | F1 | "
            "objects | targets |")
    sep = "|" + "---|" * 10
    lines += ["## Overall", "", head, sep]
    for name, r in report["overall"].items():
        lines.append(_row(f"all ({r['n_images']})", name, r))
    if bg.get("overall"):
        lines.append(_row(f"all ({bg['overall']['n_images']})", ALL_BACKGROUND, bg["overall"]))
    per_folder = report.get("per_folder") or {}
    if per_folder:
        lines += ["", "## Per folder", "", head, sep]
        for f, by_method in per_folder.items():
            for name, r in by_method.items():
                lines.append(_row(f"{f} ({r['n_images']})", name, r))
            if f in bg.get("per_folder", {}):
                b = bg["per_folder"][f]
                lines.append(_row(f"{f} ({b['n_images']})", ALL_BACKGROUND, b))
    lines += _marked_section(report)
    lines += _classified_section(report)
    lines += ["", "## Per image", "", head, sep]
    skipped, notes = [], []
    for im in report["images"]:
        for name, r in im["results"].items():
            lines.append(_row(im["image"], name, r))
        if "all_background" in im:
            lines.append(_row(im["image"], ALL_BACKGROUND, im["all_background"]))
        for name, why in im["skipped"].items():
            skipped.append(f"- `{im['image']}` ({name}): {why}")
        if "note" in im:
            notes.append(f"- `{im['image']}`: {im['note']}")
    if notes:
        lines += ["", "## Notes", ""] + notes
    if skipped:
        lines += ["", "## Skipped", ""] + skipped
    if report.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{fn}]({fn})" for fn in report["figures"]]
    overlays = [(im["image"], n, r["overlay"]) for im in report["images"]
                for n, r in im["results"].items() if "overlay" in r]
    if overlays:
        lines += ["", "## Overlays", "",
                  "Green: predicted objects; magenta: target nuclei.", ""]
        lines += [f"- `{img}` — {n}: [{fn}]({fn})" for img, n, fn in overlays]
    return "\n".join(lines) + "\n"


def _row(image, name, r):
    p, o = r["pixel"], r["objects"]
    return (f"| {image} | {name} | {100 * p['accuracy']:.2f} % | {p['dice']:.3f} | "
            f"{p['iou']:.3f} | {_fmt(o['precision'])} | {_fmt(o['recall'])} | {_fmt(o['f1'])} | "
            f"{r['n_pred']} | {r['n_target']} |")


def _scoped_results(report: dict) -> list:
    """``(scope, method, result)`` of a report: overall, per folder, per image, each with its
    all-background line."""
    bg = report.get("all_background") or {}
    rows = []   # (scope, method, pooled-or-single result)
    for name, r in report["overall"].items():
        rows.append((f"all ({r['n_images']})", name, r))
    if bg.get("overall"):
        rows.append((f"all ({bg['overall']['n_images']})", ALL_BACKGROUND, bg["overall"]))
    for f, by_method in (report.get("per_folder") or {}).items():
        for name, r in by_method.items():
            rows.append((f"{f} ({r['n_images']})", name, r))
        if f in bg.get("per_folder", {}):
            rows.append((f"{f} ({bg['per_folder'][f]['n_images']})", ALL_BACKGROUND,
                         bg["per_folder"][f]))
    for im in report["images"]:
        for name, r in im["results"].items():
            rows.append((im["image"], name, r))
        if "all_background" in im:
            rows.append((im["image"], ALL_BACKGROUND, im["all_background"]))
    return rows


def _marked_section(report: dict) -> list:
    """Markdown lines of the per-class marked-nucleus table (empty without classes)."""
    rows = [x for x in _scoped_results(report) if "classes" in x[2]]
    if not rows:
        return []
    names = sorted({n for _, _, r in rows for n in r["classes"]}, key=class_order)
    frac = report.get("mark_fraction", MARK_FRACTION)
    out = ["", "## Marked nuclei per class", "",
           f"A nucleus (an annotated instance, of the majority class of its pixels) is "
           f"*marked* when at least {'half' if frac == 0.5 else frac} of its pixels are in the "
           "thresholded mask. Each cell: marked fraction (marked / nuclei of the class in the "
           "image(s)); px: mask pixels of the class / pixels of the class. \"–\": the class "
           "does not occur. Classes are reported whatever the target: epithelial (class 4, "
           "tumour vs normal not distinguished) is never scored as tumour.", "",
           "| image | method | " + " | ".join(names) + " |",
           "|" + "---|" * (2 + len(names))]
    for scope, name, r in rows:
        cells = []
        for n in names:
            c = r["classes"].get(n)
            cells.append("–" if c is None else
                         f"{_fmt(c['marked_fraction'])} ({c['marked']}/{c['nuclei']}), "
                         f"px {_fmt(c['pixel_fraction'])}")
        out.append(f"| {scope} | {name} | " + " | ".join(cells) + " |")
    return out


def _classified_section(report: dict) -> list:
    """Markdown lines of the per-class scores of classed nuclei (empty without them)."""
    from vnumba.analysis.classeval import MISSED, NO_NUCLEUS, SCORED_CLASSES, confusion_rows

    rows = [x for x in _scoped_results(report) if "classified" in x[2]]
    if not rows:
        return []
    s = report["settings"]
    mu, bu = s.get("class_match_um", 4.0), s.get("border_um", 10.0)
    out = ["", "## Nucleus classes", "",
           "Methods whose nuclei have classes: a multi-class model (class = argmax of the "
           "per-nucleus mean of its class maps), a one-channel model (every nucleus of its "
           "scenario's class, e.g. tumour for scenario 3), the classical baseline (shape rule). "
           f"Predicted and annotated centroids are matched one-to-one within {mu:g} µm. "
           f"*F1 c*: predictions of class c against annotated nuclei of class c (\"–\": no "
           "annotated nucleus of c). *immune → tumour*: annotated immune nuclei whose match is "
           "classed tumour / all annotated immune nuclei; *tumour → immune* likewise. *border "
           f"immune → tumour*: the same among the immune nuclei within {bu:g} µm of an "
           "annotated tumour nucleus (centroid to centroid).", "",
           "| image | method | " + " | ".join(f"F1 {c} (TP/FP/FN)" for c in SCORED_CLASSES)
           + " | immune → tumour | tumour → immune | border immune → tumour |",
           "|" + "---|" * (5 + len(SCORED_CLASSES))]

    def share(d, k="share", n="count"):
        return f"{_fmt(d[k])} ({d[n]}/{d['nuclei']})"
    for scope, name, r in rows:
        c = r["classified"]
        det = " | ".join(f"{_fmt(c['detection'][k]['f1'])} ({c['detection'][k]['tp']}/"
                         f"{c['detection'][k]['fp']}/{c['detection'][k]['fn']})"
                         for k in SCORED_CLASSES)
        b = c["border_immune"]
        out.append(f"| {scope} | {name} | {det} | {share(c['immune_classed_tumour'])} | "
                   f"{share(c['tumour_classed_immune'])} | {_fmt(b['share_tumour'])} "
                   f"({b['classed']['tumour']}/{b['nuclei']}) |")
    out += ["", "### Confusion matrices (all images)", "",
            f"Rows: annotated class; columns: class of the matched prediction, *{MISSED}* = no "
            f"prediction within {mu:g} µm; row *{NO_NUCLEUS}*: predictions matched to no "
            "annotated nucleus. Counts of nuclei."]
    for name, r in report["overall"].items():
        if "classified" not in r:
            continue
        c = r["classified"]
        cols = list(next(iter(c["confusion"].values())))
        out += ["", f"`{name}` ({n_images_text(r)}):", "",
                "| annotated ↓ · predicted → | " + " | ".join(cols) + " |",
                "|" + "---|" * (1 + len(cols))]
        for row in confusion_rows(c):
            out.append(f"| {row} | " + " | ".join(str(c["confusion"][row][k]) for k in cols)
                       + " |")
    return out
