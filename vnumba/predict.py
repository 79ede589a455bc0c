"""``python -m vnumba.predict``: a trained model on real images -> reconstruction, mask,
overlay, objects CSV and QuPath GeoJSON (app layer over :mod:`vnumba.analysis.inference`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from vnumba.analysis.inference import (
    DEFAULT_TILE,
    OUTPUT_KINDS,
    load_model_arg,
    model_mask_classes,
    model_mpp,
    normalise_colours,
    output_kinds,
    predict_image,
    write_prediction,
)
from vnumba.cli import ArgumentParser, add_extraction_options, interruptible, pixel_size, positive_int, unit_float
from vnumba.io.images import read_image
from vnumba.ops.memory import keep_freed_memory
from vnumba.scenarios import NAMES as SCENARIO_NAMES


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m vnumba.predict",
        description="Denoise and segment real images with a trained coupled variational "
                    "network. Writes NAME_reconstruction.png, NAME_mask.png (16-bit, "
                    "0..65535 = probability 0..1), NAME_overlay.png, NAME_objects.csv and "
                    "NAME_objects.geojson (QuPath detections) for every input NAME.ext.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or TIFF (8/16-bit)")
    p.add_argument("--model", help="model file (.h5) or shipped name (scenario2, scenario3); "
                                   "default: the shipped model of --scenario")
    p.add_argument("--scenario", default="scenario3",
                   choices=SCENARIO_NAMES,
                   help="which shipped model to use when --model is omitted (default scenario3)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--mpp", type=pixel_size,
                   help="pixel size of the inputs in µm/px (overrides TIFF metadata); with the "
                        "model's own pixel size it sets the resampling")
    p.add_argument("--tile", type=positive_int, default=DEFAULT_TILE,
                   help=f"output block edge per tile in pixels (default {DEFAULT_TILE}); "
                        "the result does not depend on it, memory and speed do")
    p.add_argument("--threshold", type=unit_float, default=0.5,
                   help="mask probability above which a pixel belongs to an object (0.5)")
    add_extraction_options(p)
    p.add_argument("--scale", choices=("dtype", "percentile"), default="dtype",
                   help="intensity scaling: by the type's maximum (default) or each "
                        "channel's 0.5-99.5th percentiles (dim 16-bit fluorescence)")
    p.add_argument("--no-object-filter", action="store_true",
                   help="keep every object of the mask even when the model carries an object "
                        "filter (python -m vnumba.objfilter)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


@interruptible
def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 some image failed,
    2 bad arguments or model)."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # reuse the pages of each step's arrays (vnumba.ops.memory)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    from vnumba.analysis.objects import extraction_pixels
    from vnumba.io.outputs import OutputConflict, check_distinct_names, check_outputs
    try:
        check_distinct_names(args.images, lambda p: Path(p).stem)
    except OutputConflict as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        # An output of one image must not replace another input (x.png, x_mask.png --out .).
        outs = {}
        for im in args.images:
            for k in OUTPUT_KINDS:
                outs[f"output {k} of {im}"] = args.out / f"{Path(im).stem}_{k}"
        check_outputs({f"input {im}": im for im in args.images}, outs, folders={"--out": args.out})
    except OutputConflict as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        model = load_model_arg(args.model, args.scenario)
        mask_classes = model_mask_classes(model)
        # A multi-class model writes more files (NAME_mask_<class>.png, NAME_classes.png).
        extra = output_kinds(mask_classes)[len(OUTPUT_KINDS):]
        check_outputs({f"input {im}": im for im in args.images},
                      {f"output {k} of {im}": args.out / f"{Path(im).stem}_{k}"
                       for im in args.images for k in extra})
    except (OSError, ValueError, KeyError) as e:   # OutputConflict is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    scenario = (model.meta or {}).get("scenario") or args.scenario
    say(f"model: {args.model or args.scenario} (arch {model.arch}, scenario {scenario}, "
        f"mpp {model_mpp(model)}, receptive radius {model.receptive_radius} px"
        + (f", mask classes {', '.join(mask_classes)}" if mask_classes else "") + ")")
    filt = None
    if not args.no_object_filter and "object_filter" in (model.meta or {}):
        from vnumba.analysis.objfilter import ObjectFilter
        try:
            filt = ObjectFilter.from_meta(model.meta["object_filter"])
        except ValueError as e:
            print(f"error: {args.model or args.scenario}: {e}", file=sys.stderr)
            return 2
        say("    objects pass the model's object classifier (--no-object-filter: all objects)")
    failed = 0
    for i, path in enumerate(args.images, 1):
        t0 = time.perf_counter()
        try:
            img = read_image(path)
            H, W, C = img.array.shape
            say(f"[{i}/{len(args.images)}] {path}: {W}x{H}x{C} {img.array.dtype}, "
                f"mpp {args.mpp if args.mpp is not None else img.mpp}")
            in_mpp = args.mpp
            if args.mpp is None and img.mpp is None and model_mpp(model) is not None:
                # Not assumed: a 40x image taken to be at a 20x model's scale is segmented at
                # twice the size the model knows.  The pixel size is measured from the width of
                # the image's nuclei (vnumba.analysis.pixelsize); the nominal scan size inside
                # the estimate's interval is used when there is one.  Not confident: this
                # image fails (one line asking for --mpp) and nothing is written for it.
                from vnumba.analysis.inference import model_channels
                from vnumba.analysis.pixelsize import PixelSizeError, estimate_mpp, require_confident
                from vnumba.io.images import image_to_float, match_channels
                arr = match_channels(img.array, model_channels(model), path)  # its error first
                try:
                    est = estimate_mpp(image_to_float(arr, args.scale, path))
                except PixelSizeError:
                    raise
                except ValueError as e:   # e.g. too small to measure anything
                    raise PixelSizeError(f"{path}: no pixel size in the file and it cannot be "
                                         f"estimated ({e}); give --mpp (e.g. 0.25 for 40x, 0.5 "
                                         "for 20x)") from e
                require_confident(est, str(path))
                in_mpp = est.nominal if est.nominal is not None else est.mpp
                taken = (f", taken as the nominal {in_mpp:g} um/px ({10 / in_mpp:g}x scan)"
                         if est.nominal is not None else "")
                print(f"{path}: no pixel size in the file; estimated {est.mpp:.2f} um/px "
                      f"({est.low:.2f}-{est.high:.2f}){taken} from {est.basis} -- give --mpp "
                      "to override", file=sys.stderr, flush=True)

            t_start, last = time.perf_counter(), [0.0]

            def progress(done, total):
                # First and last tile, and otherwise at most one line every 5 s.
                now = time.perf_counter() - t_start
                if total > 1 and (done in (1, total) or now - last[0] >= 5.0):
                    last[0] = now
                    say(f"    tile {done}/{total} ({now:.1f} s)")

            pred = predict_image(model, img, mpp=in_mpp, tile=args.tile,
                                 scale_mode=args.scale, progress=progress)
            if pred.scale != 1.0:
                say(f"    resampled by {pred.scale:.3f} to the model's {pred.model_mpp} µm/px "
                    "and back")
            # Object sizes are tissue sizes: converted at the pixel size of the mask.
            split_h, min_area = extraction_pixels(
                pred.input_mpp or pred.model_mpp, args.split_um, args.min_area_um2,
                args.split_h, args.min_area)
            res = write_prediction(args.out, img.name, pred, args.threshold, split_h,
                                   min_area, scenario,
                                   bit_depth=16 if img.array.dtype == np.uint16 else 8,
                                   object_filter=filt,
                                   filter_image=None if filt is None else normalise_colours(pred.image, model))
            cl = res["table"].classes
            counts = "" if cl is None else " (" + ", ".join(
                f"{n} {k}" for k, n in zip(cl.names, np.bincount(cl.index, minlength=len(cl.names)))) + ")"
            say(f"    {res['n_objects']} objects{counts}, {time.perf_counter() - t0:.1f} s -> "
                f"{args.out / img.name}_*")
        except (OSError, ValueError, TypeError) as e:
            failed += 1
            msg = str(e)
            if str(path) not in msg:
                msg = f"{path}: {msg}"
            print(f"error: {msg}", file=sys.stderr)
    if failed and len(args.images) > 1:  # one image: its own error line says it all
        print(f"{failed} of {len(args.images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
