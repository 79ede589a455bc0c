"""``python -m vnumba.evaluate``: score models and the classical baseline against real
annotations (app layer over :mod:`vnumba.analysis.evaluation`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vnumba.analysis.classeval import BORDER_UM, CLASS_MATCH_UM
from vnumba.analysis.evaluation import (
    ALL_BACKGROUND,
    MATCH_RADIUS,
    classes_line,
    n_images_text,
    run_evaluation,
    summary_line,
)
from vnumba.analysis.inference import load_model_arg, model_mask_classes
from vnumba.cli import (
    ArgumentParser,
    add_extraction_options,
    interruptible,
    pixel_size,
    positive_float,
    positive_int,
    unit_float,
)
from vnumba.ops.memory import keep_freed_memory
from vnumba.scenarios import NAMES as SCENARIO_NAMES


def script_rule(scenario: str):
    """``(radius, threshold, mpp)`` of the shipped generator script's ``[mask]`` density rule
    (radius and threshold None if its mask is not a concentration rule), or None without a
    readable script.  The app layer reads ``synth``; the evaluation library never does."""
    try:
        from synth.script import load_script
        script = load_script(scenario)
    except Exception:  # the generator's scripts are optional here; failure = "not stated"
        return None
    mpp = getattr(script, "mpp", None)
    try:
        spec = script["mask"]
        radius, threshold = float(spec.radius), float(spec.threshold)
    except (KeyError, AttributeError, TypeError, ValueError):
        return None, None, mpp
    return radius, threshold, mpp


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m vnumba.evaluate",
        description="Score a model (and a classical haematoxylin/Otsu/watershed baseline, and "
                    "optionally a second model) against real annotations: pixel accuracy, "
                    "Dice, IoU and object detection precision/recall/F1 (15-px centroid rule); "
                    "with class annotations also per-class detection F1, the confusion matrix "
                    "of annotated against predicted class (confusion.png) and immune nuclei at "
                    "the tumour border classed tumour.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR",
                   help="folder with NAME.png + NAME_labels.npz (searched recursively)")
    p.add_argument("--model", help="model file or shipped name (default: shipped --scenario)")
    p.add_argument("--scenario", default="scenario3",
                   choices=SCENARIO_NAMES,
                   help="shipped model when --model is omitted (default scenario3)")
    p.add_argument("--baseline-model", help="a second model file evaluated side by side")
    p.add_argument("--out", type=Path, default=Path("evaluation"),
                   help="report directory (default ./evaluation)")
    p.add_argument("--target", choices=("scenario", "nuclei"), default="scenario",
                   help="'scenario': the model's scenario target class (default); 'nuclei': "
                        "all annotated nuclei")
    p.add_argument("--mpp", type=pixel_size, help="pixel size of all images in µm/px (default: "
                                             "manifest.csv magnification, else unknown)")
    p.add_argument("--threshold", type=unit_float, default=0.5, help="mask threshold (0.5)")
    add_extraction_options(p)
    p.add_argument("--radius", type=positive_float, default=MATCH_RADIUS,
                   help=f"centroid matching distance in pixels ({MATCH_RADIUS:g})")
    p.add_argument("--class-radius-um", type=positive_float, default=CLASS_MATCH_UM,
                   help="per-class scores: centroid matching distance in µm "
                        f"({CLASS_MATCH_UM:g}; 16 px at 40x)")
    p.add_argument("--border-um", type=positive_float, default=BORDER_UM,
                   help="per-class scores: an immune nucleus within this distance (µm, centroid "
                        f"to centroid) of a tumour nucleus is at the tumour border ({BORDER_UM:g})")
    p.add_argument("--tile", type=positive_int, default=512, help="prediction tile (512)")
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _with_valid_object_filter(model, label):
    """``model``, once its object classifier (if any) parses: a malformed one is refused
    before any image is read, naming the model file."""
    of = (getattr(model, "meta", None) or {}).get("object_filter")
    if of is not None:
        from vnumba.analysis.objfilter import ObjectFilter
        try:
            ObjectFilter.from_meta(of)
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
    return model


@interruptible
def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # reuse the pages of each step's arrays (vnumba.ops.memory)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    try:
        from vnumba.io.outputs import check_outputs, output_folder
        check_outputs({}, {}, folders={"--out": args.out})
        model = _with_valid_object_filter(load_model_arg(args.model, args.scenario),
                                          args.model or args.scenario)
        scenario = (model.meta or {}).get("scenario") or args.scenario
        name = Path(args.model).stem if args.model else f"{args.scenario} (shipped)"
        methods = {name: model}
        if args.baseline_model:
            other = _with_valid_object_filter(load_model_arg(args.baseline_model, args.scenario),
                                              args.baseline_model)
            oname = Path(args.baseline_model).stem
            if oname in methods:
                oname += " (baseline model)"
            methods[oname] = other
        methods["classical baseline"] = "baseline"
        target = scenario if args.target == "scenario" else "nuclei"
        if target not in SCENARIO_NAMES and target != "nuclei" and model_mask_classes(model):
            # A multi-class model of no registered scenario: its nuclei are all nuclei.
            say(f"model scenario {scenario!r} is not a registered scenario; a multi-class "
                "model is scored against all annotated nuclei (--target nuclei)")
            target = "nuclei"
        with output_folder(args.out):   # an unwritable place fails here; a failed run leaves no folder
            report = run_evaluation(methods, args.data_dir, args.out, target=target,
                                    rule_model=model, mpp=args.mpp, threshold=args.threshold,
                                    split_um=args.split_um, min_area_um2=args.min_area_um2,
                                    split_h=args.split_h, min_area=args.min_area,
                                    radius=args.radius, tile=args.tile,
                                    overlays=not args.no_overlays, say=say,
                                    script_rules={target: script_rule(target)},
                                    class_match_um=args.class_radius_um,
                                    border_um=args.border_um,
                                    warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not report["overall"]:
        why = next((f"{im['image']}: {r}" for im in report.get("images", [])
                    for r in im.get("skipped", {}).values()), "")
        print(f"error: no image could be evaluated{'; first: ' + why if why else ''} (see "
              f"report.md, section Skipped)", file=sys.stderr)
        return 2
    bg = report["all_background"]
    for f, by_method in report["per_folder"].items():
        for name, r in list(by_method.items()) + [(ALL_BACKGROUND, bg["per_folder"][f])]:
            say(f"folder {f} {name}: {summary_line(r)} ({n_images_text(r)})")
            if "classified" in r:
                say(f"folder {f} {name} classes: {classes_line(r)}")
    for name, r in list(report["overall"].items()) + [(ALL_BACKGROUND, bg["overall"])]:
        say(f"overall {name}: {summary_line(r)} ({n_images_text(r)})")
        if "classified" in r:
            say(f"overall {name} classes: {classes_line(r)}")
    written = ", ".join(["report.json"] + report["figures"])
    say(f"wrote {args.out / 'report.md'} and {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
