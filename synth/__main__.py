"""Command line: ``python -m synth {generate,show-scenario,list,stats,preview,reference,
layout-stats,slide} ...``.

SCRIPT arguments are a path to a TOML scenario script or the name of a shipped script
(``scenario1``, ``scenario2``, ``scenario3``).  The library modules take typed arguments; this
module turns the command line into their calls (``synth reference``:
:mod:`synth.reference`; ``synth layout-stats``: :mod:`synth.layouts`; ``synth stats``:
:mod:`synth.stats`; ``synth slide``: :mod:`synth.slide`): a new subcommand is a parser and a
``_cmd_NAME(args) -> int`` here, over a library function.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vnumba.cli import check_environment

# Before the imports below (this module is what ``python -m synth`` and the console script
# ``synth`` load): they load Numba, which fails with a traceback on a bad NUMBA_NUM_THREADS.
check_environment()

from vnumba.cli import (  # noqa: E402
    ArgumentParser,
    int_in,
    interrupted_status,
    interrupted_word,
    non_negative,
    pixel_size,
    positive_float,
    positive_int,
    terminate_as_interrupt,
)

from . import layouts, reference  # noqa: E402
from .preview import PREVIEW_MAX_ROWS  # noqa: E402
from .script import SHIPPED, ScriptError, load_script, registered_kinds, shipped_path  # noqa: E402


def _cmd_generate(args) -> int:
    script = load_script(args.script)
    if args.size is not None:
        script = script.with_size(*args.size)
    kind = script.kind
    reference = None
    if args.reference is not None:
        if kind.load_reference is None:
            raise SystemExit(f"error: scenario kind {script.scenario!r} takes no --reference")
        reference = kind.load_reference(args.reference)
    from vnumba.io.outputs import OutputConflict, OutputLock, check_outputs, remove_stale_temporaries

    from .writer import write_dataset
    user_script = Path(args.script) if Path(args.script).is_file() else None
    try:
        check_outputs({"script": user_script, "reference bundle": args.reference},
                      {"output": args.output})
    except OutputConflict as e:
        raise SystemExit(f"error: {e}")
    remove_stale_temporaries(args.output)  # left by a killed run (.NAME.<pid>.tmp)
    from vnumba.executor import SchedulerError, get_executor
    if args.scheduler and args.workers != 1:
        raise SystemExit("error: give --workers or --scheduler, not both (--scheduler local:N "
                         "runs N worker processes)")
    try:
        with OutputLock(args.output), get_executor(args.scheduler or f"processes:{args.workers}") as ex:
            if not args.quiet and args.scheduler:
                print(f"samples made on {ex.description}", file=sys.stderr, flush=True)
            out = write_dataset(args.output, script, args.n, args.seed, reference=reference,
                                progress=not args.quiet, executor=ex)
    except (OutputConflict, SchedulerError) as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt as e:
        from vnumba.cli import interrupted_status, interrupted_word
        print(f"{interrupted_word(e)}; {args.output} was not written", file=sys.stderr)
        return interrupted_status(e)
    print(f"wrote {out} ({args.n} samples of {script.name}, {script.size[0]}x{script.size[1]}, "
          f"seed {args.seed})")
    return 0


def _cmd_show(args) -> int:
    if args.name in SHIPPED or not Path(args.name).exists():
        p = shipped_path(args.name)
        if not p.exists():
            raise SystemExit(f"error: no shipped script {args.name!r} (shipped: {', '.join(SHIPPED)})")
    else:
        p = Path(args.name)
    sys.stdout.write(p.read_text(encoding="utf-8"))
    return 0


def _cmd_list(args) -> int:
    for name in SHIPPED:
        p = shipped_path(name)
        print(f"{name:12s} {'(shipped)' if p.exists() else '(missing)'} {p}")
    print("registered scenario kinds:", ", ".join(registered_kinds()))
    return 0


def _cmd_stats(args) -> int:
    import numpy as np

    from vnumba.io.outputs import atomic_write_text, check_distinct, check_outputs

    from .stats import CATEGORIES, annotated_images, update_script

    images = annotated_images(args.images)
    # Before any work: the updated script must not replace an image, its labels or the
    # reference image (it may replace the script itself: updating a script is the purpose),
    # and an image given twice would be counted twice.
    inputs = {}
    for q in images:
        lab = q.with_name(q.stem + "_labels.npz")
        inputs[f"image {q}"], inputs[f"labels {lab}"] = q, lab
    if args.reference is not None:
        ref_labels = args.reference.with_name(args.reference.stem + "_labels.npz")
        inputs["--reference"] = args.reference
        inputs[f"labels {ref_labels}"] = ref_labels if ref_labels.exists() else None
    check_outputs(inputs, {"--output": args.output})
    check_distinct(images, "image")
    script = load_script(args.script)
    text, stats, sizes = update_script(script, images, image_mpp=args.image_mpp,
                                       reference=args.reference, name=args.output)
    atomic_write_text(args.output, text)
    for c in CATEGORIES:
        if c in stats:
            s = stats[c]
            print(f"{c:15s} mean {np.round(s.mean, 3)} sd {np.round(np.sqrt(np.diag(s.cov)), 3)} "
                  f"corr {s.corr:.2f} ({s.n_objects} objects)")
    for c, v in sorted(sizes.items()):
        q = np.percentile(v, [10, 50, 90], axis=0)
        print(f"class {c} nuclei (n={len(v)}): semi-axes px at {script.mpp} um/px, 10/50/90 %: "
              f"major {np.round(q[:, 0], 1)}, minor {np.round(q[:, 1], 1)}")
    print(f"wrote {args.output}")
    return 0


def _cmd_preview(args) -> int:
    from vnumba.io.outputs import check_outputs

    from .preview import write_preview
    user_script = Path(args.script) if Path(args.script).is_file() else None
    check_outputs({"script": user_script, "--reference": args.reference, "--real": args.real},
                  {"--output": args.output})
    script = load_script(args.script)
    reference = None
    if args.reference is not None:
        if script.kind.load_reference is None:
            raise SystemExit(f"error: scenario kind {script.scenario!r} takes no --reference")
        reference = script.kind.load_reference(args.reference)
    real = None
    if args.real is not None:
        from vnumba.io.images import read_image
        real = read_image(args.real).array   # one-line ValueError naming the file
        if real.shape[2] < 3:
            raise SystemExit(f"error: {args.real}: not an RGB image (shape {real.shape})")
        if args.real_mpp is None:
            print(f"warning: --real-mpp not given; {args.real} is taken to be at the script's "
                  f"{script.mpp} um/px", file=sys.stderr)
    write_preview(script, args.output, n=args.n, seed=args.seed, reference=reference,
                  real=real, real_mpp=args.real_mpp)
    print(f"wrote {args.output}")
    return 0


def _cmd_reference(args) -> int:
    from vnumba.io.outputs import check_outputs
    try:
        # Before any work: the bundle must not replace an input image, its labels or the
        # reference image.
        inputs = {}
        for q in reference.find_labelled_images(args.paths):
            inputs[f"image {q}"] = q
            inputs[f"labels {reference.labels_path_for(q)}"] = reference.labels_path_for(q)
        inputs["--ref-image"] = args.ref_image
        check_outputs(inputs, {"--output": args.output})
        cfg = reference.ExtractionConfig(patch_size=args.patch_size,
                                         max_patches_per_cell=args.max_patches_per_cell,
                                         n_cohorts=args.cohorts, seed=args.seed)
        mpp = float("nan") if args.mpp is None else args.mpp
        bundle = reference.build_reference(args.paths, ref_image=args.ref_image, mpp=mpp,
                                           config=cfg, progress=lambda m: print(m, file=sys.stderr))
        reference.save_reference(bundle, args.output)
    except (FileNotFoundError, ValueError) as exc:
        print(f"synth reference: error: {exc}", file=sys.stderr)
        return 2
    print(bundle.summary())
    print(f"wrote {args.output}")
    return 0


def _cmd_layout_stats(args) -> int:
    from vnumba.io.outputs import atomic_write_text, check_outputs

    progress = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        # Before any work: the statistics must not replace one of the layouts read.
        check_outputs({f"layout {q}": q for q in layouts.find_layouts(args.folder)},
                      {"--output": args.output})
        stats = layouts.layout_statistics(args.folder, mpp=args.mpp, window=args.window,
                                          progress=progress, gap_um=args.gap_um, near_um=args.near_um,
                                          density_radius_um=args.density_radius_um,
                                          max_hole_um2=args.max_hole_um2,
                                          nest_radius_um=args.nest_radius_um,
                                          nest_min_tumour=args.nest_min_tumour,
                                          border_um=args.border_um)
        atomic_write_text(args.output, json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    except (ValueError, OSError) as exc:
        print(f"synth layout-stats: error: {layouts.one_line(exc)}", file=sys.stderr)
        return 2
    s = stats["source"]
    print(f"wrote {args.output} ({s['n_rois']} ROIs, {s['n_nuclei']} nuclei)")
    return 0


def _tile_size(s):
    v = int(s)
    if v < 16 or v % 16:
        raise argparse.ArgumentTypeError(f"a TIFF tile size is a positive multiple of 16, got {s}")
    return v


def _cmd_slide(args) -> int:
    from vnumba.io.outputs import OutputConflict, OutputLock, check_outputs, remove_stale_temporaries

    from .slide import truth_paths, write_slide

    script = load_script(args.scenario)
    csv_path, json_path = truth_paths(args.output)
    user_script = Path(args.scenario) if Path(args.scenario).is_file() else None
    try:
        check_outputs({"script": user_script, "reference bundle": args.reference},
                      {"slide": args.output, "truth CSV": csv_path, "truth JSON": json_path})
    except OutputConflict as e:
        raise SystemExit(f"error: {e}")
    for p in (args.output, csv_path, json_path):
        remove_stale_temporaries(p)
    try:
        with OutputLock(args.output):
            res = write_slide(args.output, script, size=tuple(args.size), seed=args.seed,
                              mpp=args.mpp, reference=args.reference, tile=args.tile,
                              fmt=args.format, sample_size=args.sample_size,
                              progress=not args.quiet)
    except OutputConflict as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt as e:
        print(f"{interrupted_word(e)}; {args.output} was not written", file=sys.stderr)
        return interrupted_status(e)
    f = res.facts
    c = f["counts"]
    print(f"wrote {res.slide} ({f['size'][0]}x{f['size'][1]} px at {f['mpp']:g} um/px, "
          f"{len(f['levels'])} levels, {f['slide_format']}), {res.truth_csv} ({f['nuclei']} nuclei: "
          f"{c['tumour']} tumour, {c['immune']} immune, {c['other']} other; tissue "
          f"{f['tissue_area_mm2']:.2f} mm2) and {res.truth_json}")
    return 0


def _add_slide(subparsers) -> argparse.ArgumentParser:
    """Register ``synth slide`` on an argparse ``subparsers`` object."""
    from .slide import DEFAULT_MPP, DEFAULT_SIZE, DEFAULT_TILE

    p = subparsers.add_parser(
        "slide", help="a synthetic pyramidal whole slide with its nucleus truth",
        description="Write a synthetic pyramidal tiled TIFF (OME-TIFF or SVS-style) of "
                    "scenario-3 tissue on glass, with NAME_truth.csv (id,x,y,class,area_um2 of "
                    "every visible nucleus, level-0 px) and NAME_truth.json beside it.")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="the slide: NAME.ome.tif or NAME.svs")
    p.add_argument("--scenario", default="scenario3", metavar="SCRIPT",
                   help="scenario-3 script, shipped name or path (default scenario3)")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"),
                   default=list(DEFAULT_SIZE), help="level-0 size in px (default 8192 8192)")
    p.add_argument("--seed", type=int, default=0, help="slide seed (default 0)")
    p.add_argument("--mpp", type=pixel_size, default=DEFAULT_MPP,
                   help=f"um per pixel of level 0 (default {DEFAULT_MPP})")
    p.add_argument("--reference", type=Path, default=None,
                   help="scenario-3 reference bundle (default: the script's [reference].path)")
    p.add_argument("--tile", type=_tile_size, default=DEFAULT_TILE,
                   help=f"TIFF tile size in px (default {DEFAULT_TILE})")
    p.add_argument("--format", choices=("ome", "svs"), default=None,
                   help="ome: OME-TIFF, zlib (lossless); svs: Aperio-style JPEG tiles "
                        "(default: svs for a .svs output, else ome)")
    p.add_argument("--sample-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="generator tile size in the script's px (default: the script's size)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_slide)
    return p


def _add_defaulted(p, defaults, options) -> None:
    """Options whose help ends in their default, taken from the library's ``defaults``:
    rows ``(flag, type, help, field of defaults[, dest])``."""
    for flag, typ, what, name, *dest in options:
        v = getattr(defaults, name)
        p.add_argument(flag, type=typ, default=v, dest=(dest or [name])[0], help=f"{what} (default {v})")


def _subcommand(sub, name, module, help, run):
    """A subcommand described by the first paragraph of its library module's docstring."""
    p = sub.add_parser(name, help=help, description=module.__doc__.split("\n\n")[0])
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="synth", description="Synthetic training data from scenario scripts "
                                "(Effland et al. 2019).")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate an HDF5 training set",
                       description="Generate N samples of SCRIPT into an HDF5 file (atomic write).")
    g.add_argument("script", metavar="SCRIPT", help="script path or shipped name")
    g.add_argument("-n", type=int, required=True, help="number of samples")
    g.add_argument("-o", "--output", required=True, type=Path, help="output .h5 file")
    g.add_argument("--seed", type=int, required=True, help="dataset seed (>= 0)")
    g.add_argument("--workers", type=int_in(1, 1024), default=1,
                   help="worker processes (output does not depend on it)")
    g.add_argument("--reference", type=Path, default=None, help="reference bundle (scenario 3)")
    g.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="override the script's image size")
    g.add_argument("--scheduler", metavar="SPEC",
                   help="where samples are made: local:N (a Dask LocalCluster of N worker "
                        "processes) or a Dask scheduler address (tcp://host:8786); the output "
                        "is the same bytes whatever runs it (docs/distributed.md)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)

    s = sub.add_parser("show-scenario", help="print a shipped scenario script")
    s.add_argument("name", metavar="NAME", help=f"one of {', '.join(SHIPPED)} (or a path)")
    s.set_defaults(func=_cmd_show)

    ls = sub.add_parser("list", help="list shipped scripts and registered scenario kinds")
    ls.set_defaults(func=_cmd_list)

    st = sub.add_parser("stats", help="estimate colour statistics from annotated real images",
                        description="Estimate colour means/covariances of object categories from "
                        "annotated real H&E images (after Reinhard normalisation) and write them "
                        "into a scenario script's generated block.")
    st.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                    help="annotated H&E PNGs (NAME.png with NAME_labels.npz beside it) or folders")
    st.add_argument("--script", required=True, help="scenario script to update (path or shipped name)")
    st.add_argument("-o", "--output", type=Path, required=True, help="where to write the updated script")
    st.add_argument("--image-mpp", type=pixel_size, required=True, help="micrometres per pixel of the images")
    st.add_argument("--reference", type=Path, default=None,
                    help="reference image for Reinhard normalisation (default: the script's "
                    "[normalization] target, which must then be 'reinhard')")
    st.set_defaults(func=_cmd_stats)

    pv = sub.add_parser("preview", help="figure of layers, noisy, clean and mask (like Fig. 2)")
    pv.add_argument("script", metavar="SCRIPT")
    pv.add_argument("-o", "--output", required=True, type=Path, help="output PNG")
    pv.add_argument("--n", type=int_in(1, PREVIEW_MAX_ROWS), default=3,
                    help=f"number of samples (rows), 1 to {PREVIEW_MAX_ROWS}")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--reference", type=Path, default=None, help="reference bundle (scenario 3)")
    pv.add_argument("--real", type=Path, default=None,
                    help="a real RGB image shown as crops at the script's scale in a last row")
    pv.add_argument("--real-mpp", type=pixel_size, default=None,
                    help="pixel size of --real in um (default: the script's)")
    pv.set_defaults(func=_cmd_preview)

    rf = _subcommand(sub, "reference", reference,
                     "build the scenario-3 reference bundle from annotated H&E images", _cmd_reference)
    rf.add_argument("paths", nargs="+", metavar="PATH",
                    help="annotated H&E images (NAME.png with NAME_labels.npz beside) or folders")
    rf.add_argument("-o", "--output", required=True, help="reference bundle to write (HDF5)")
    rf.add_argument("--ref-image", default=None,
                    help="image to Reinhard-normalise to (default: the first input image)")
    rf.add_argument("--mpp", type=pixel_size, default=None,
                    help="pixel size of the inputs in µm (recorded; the generator rescales "
                         "patches when its script's mpp differs; default: unknown). PUMA at 40x: "
                         "about 0.24")
    _add_defaulted(rf, reference.ExtractionConfig(), [
        ("--patch-size", int, "side of the square texture patches in pixels", "patch_size"),
        ("--max-patches-per-cell", int, "texture patches taken from one cell at most",
         "max_patches_per_cell"),
        ("--cohorts", int, "colour cohorts per texture set", "n_cohorts", "cohorts"),
        ("--seed", int, "seed of the choice of patches within cells", "seed")])

    ly = _subcommand(sub, "layout-stats", layouts,
                     "size, shape and clustering statistics of annotated nucleus layouts",
                     _cmd_layout_stats)
    ly.add_argument("folder", metavar="FOLDER", help="folder of layout .npz files")
    ly.add_argument("-o", "--output", required=True, type=Path, help="statistics JSON to write")
    _add_defaulted(ly, layouts.LayoutParams(), [
        ("--mpp", pixel_size, "pixel size of the layouts in µm", "mpp"),
        ("--window", positive_int, "window side in pixels", "window"),
        ("--gap", positive_float, "largest gap in µm linking immune nuclei", "gap_um"),
        ("--near", positive_float, "'near a tumour nucleus' in µm", "near_um"),
        ("--density-radius", positive_float, "radius in µm of the local tumour density",
         "density_radius_um"),
        ("--max-hole", non_negative, "holes up to this many µm² belong to an aggregate's area",
         "max_hole_um2"),
        ("--nest-radius", positive_float, "radius in µm of a tumour nest neighbourhood",
         "nest_radius_um"),
        ("--nest-min-tumour", positive_int, "tumour nuclei within the nest radius that make a nest",
         "nest_min_tumour"),
        ("--border", positive_float, "gap in µm at which an immune nucleus is at the tumour border",
         "border_um")])
    ly.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    _add_slide(sub)
    return p


def main(argv=None) -> int:
    check_environment()
    terminate_as_interrupt()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        print(f"{interrupted_word(e)}; the outputs finished before it are complete, nothing "
              f"half-written was left", file=sys.stderr)
        return interrupted_status(e)
    except ScriptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
