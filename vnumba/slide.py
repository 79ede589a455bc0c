"""``python -m vnumba.slide``: whole-slide analysis with tumour–immune interaction statistics
(app layer over :mod:`vnumba.analysis.wsi`, :mod:`vnumba.io.slides`,
:mod:`vnumba.analysis.tissue`, :mod:`vnumba.analysis.interactions` and
:mod:`vnumba.analysis.qupath`).

For every slide ``NAME`` it writes into ``--out``: ``NAME_cells.geojson`` (QuPath),
``NAME_cells.csv``, ``NAME_probability.ome.tif`` (tiled pyramidal OME-TIFF, one channel per
class), ``NAME_report.json``, ``NAME_report.md``, ``NAME_density.png``, ``NAME_thumbnail.png``;
and ``summary.csv`` with one row per slide.  A work folder ``.NAME.work`` holds the finished
blocks so that ``--resume`` continues a killed run; it is removed after success.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from vnumba.cli import ArgumentParser, interruptible, pixel_size, positive_float

#: Suffixes taken from a folder given as SLIDE.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".tif", ".tiff",
                  ".png", ".jpg", ".jpeg")
#: Files written per slide NAME: NAME_<kind>.
OUTPUT_KINDS = ("cells.geojson", "cells.csv", "probability.ome.tif", "report.json",
                "report.md", "density.png", "thumbnail.png")


def build_parser() -> argparse.ArgumentParser:
    from vnumba.analysis.wsi import DEFAULT_TILE
    p = ArgumentParser(
        prog="python -m vnumba.slide",
        description="Whole-slide analysis: every nucleus classed tumour, immune or other, "
                    "tumour-immune interaction statistics, QuPath GeoJSON, a probability "
                    "OME-TIFF, a report and figures per slide, in bounded memory.")
    p.add_argument("slides", nargs="+", metavar="SLIDE",
                   help="slide files (SVS, NDPI, MRXS, SCN, OME-TIFF, tiled TIFF, PNG, JPEG) or "
                        "folders of them")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default="scenario3",
                   help="model file (.h5) or shipped name (default scenario3, three classes)")
    p.add_argument("--mpp", type=pixel_size,
                   help="µm/px of level 0, overriding the slide's metadata (required when it "
                        "has none)")
    p.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="analyse only this level-0 box (pixels)")
    p.add_argument("--radius-um", type=positive_float, default=None,
                   help="neighbourhood radius for immune cells near tumour nuclei, µm (default: "
                        "the article's, see vnumba.analysis.interactions)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"block edge at the model's resolution, px (default {DEFAULT_TILE}); "
                        "results do not depend on it")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run from its finished blocks")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the network runs (cuda: the numba.cuda kernels)")
    p.add_argument("--scheduler", metavar="SPEC",
                   help="where the tile blocks run: local:N (a Dask LocalCluster of N worker "
                        "processes) or a Dask scheduler address (tcp://host:8786); workers read "
                        "the slide from its path; the outputs equal an in-process run "
                        "(docs/distributed.md)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _expand(slides) -> list:
    out = []
    for s in slides:
        p = Path(s)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir()
                              if q.is_file() and q.name.lower().endswith(SLIDE_SUFFIXES)
                              and not q.name.startswith(".")))
        else:
            out.append(p)
    return out


def slide_name(path: Path) -> str:
    """``x.ome.tif`` -> ``x``; ``x.svs`` -> ``x``."""
    name = path.name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


@interruptible
def main(argv=None) -> int:
    """Entry point; exit status 0 all slides done, 1 some slide failed, 2 bad arguments."""
    args = build_parser().parse_args(argv)
    from vnumba.analysis.inference import load_model_arg
    from vnumba.analysis.wsi import SlideOptions
    from vnumba.io.outputs import OutputConflict, check_distinct_names, check_outputs
    from vnumba.ops.memory import keep_freed_memory

    keep_freed_memory()
    try:
        opts = SlideOptions(tile=args.tile, region=tuple(args.region) if args.region else None,
                            mpp=args.mpp, device=args.device)
    except ValueError as e:
        print(f"python -m vnumba.slide: error: {e}", file=sys.stderr)
        return 2
    slides = _expand(args.slides)
    if not slides:
        print("error: no slide files given (folders hold none)", file=sys.stderr)
        return 2
    try:
        check_distinct_names(slides, slide_name, "slides")
    except OutputConflict as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        model = load_model_arg(args.model, "scenario3")
        model.device = args.device
        if args.device == "cuda":
            from vnumba.vn.backend import get_backend
            get_backend("cuda")
    except Exception as e:   # one line, whatever the loader raised
        print(f"error: {args.model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    outs = {f"{slide_name(s)}_{k}": args.out / f"{slide_name(s)}_{k}"
            for s in slides for k in OUTPUT_KINDS}
    outs["summary.csv"] = args.out / "summary.csv"
    ins = {str(s): s for s in slides}
    if Path(str(args.model)).exists():
        ins[str(args.model)] = Path(args.model)
    try:
        check_outputs(ins, outs)
    except OutputConflict as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from vnumba.executor import SchedulerError, get_executor
    try:
        executor = get_executor(args.scheduler)
    except SchedulerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with executor:
        if args.scheduler and not args.quiet:
            print(f"tile blocks run on {executor.description}", file=sys.stderr, flush=True)
        return _analyse_all(args, slides, model, opts, executor)


def _analyse_all(args, slides, model, opts, executor) -> int:
    """Every slide, then ``summary.csv``; 1 if some slide failed.

    On a cluster (``--scheduler``) a slide's outputs are written by a thread of this process
    while the workers already compute the next slide's blocks, so that several slides keep
    the cluster busy; in-process the slides run one after another.
    """
    from concurrent.futures import ThreadPoolExecutor

    args.out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0

    def failure(path, e):
        nonlocal failed
        failed += 1
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {path}: {msg}" if str(path) not in msg else f"error: {msg}",
              file=sys.stderr, flush=True)

    def done(path, rep):
        rows.append(rep)
        if not args.quiet:
            print(f"{path}: {rep['tumour_nuclei']} tumour, {rep['immune_cells']} immune, "
                  f"{rep['other_nuclei']} other nuclei; {rep['immune_near_tumour']} immune "
                  f"within {rep['radius_um']:g} um of tumour; call {rep['immune_call']}; "
                  f"{rep['seconds']:.1f} s", file=sys.stderr, flush=True)

    errors = (ValueError, OSError, RuntimeError, MemoryError)
    overlap = not executor.in_process and len(slides) > 1
    writer = ThreadPoolExecutor(1, thread_name_prefix="slide-outputs") if overlap else None
    queued = []                           # (path, future) of slides whose outputs are written
    try:
        for i, path in enumerate(slides, 1):
            try:
                pending = _compute_slide(path, model, args.out, opts, radius_um=args.radius_um,
                                         resume=args.resume, quiet=args.quiet,
                                         label=f"[{i}/{len(slides)}] {path.name}",
                                         executor=executor)
                if writer is None:
                    done(path, _finish_slide(pending))
                else:
                    queued.append((path, writer.submit(_finish_slide, pending), pending))
            except errors as e:
                failure(path, e)
            while queued and queued[0][1].done():     # report finished slides in order
                _collect(queued.pop(0), done, failure, errors)
        while queued:
            _collect(queued.pop(0), done, failure, errors)
    finally:
        if writer is not None:
            # a slide being written is finished (its outputs are atomic), none is started; a
            # slide that never starts releases its output lock (its blocks stay for --resume)
            for _, fut, pending in queued:
                if fut.cancel():
                    pending["lock"].close()
            writer.shutdown(wait=True)
    if rows:
        write_summary(args.out / "summary.csv", rows)
    return 1 if failed else 0


def _collect(entry, done, failure, errors) -> None:
    path, fut, _ = entry
    try:
        done(path, fut.result())
    except errors as e:
        failure(path, e)


# ----------------------------------------------------------------------------- one slide
def _norm_stats(reader, plan, tissue, model, n_patches: int = 16, size: int = 256):
    """Reinhard source statistics of the slide's tissue, once per slide: Lab mean/std of up to
    ``n_patches`` model-resolution patches centred on tissue, spread evenly over it."""
    from vnumba.analysis.wsi import ModelGridReader
    from vnumba.ops.color import lab_stats

    meta = getattr(model, "meta", None) or {}
    tm, ts = meta.get("reinhard_mean"), meta.get("reinhard_std")
    if tm is None or ts is None:
        return None
    g = ModelGridReader(reader, plan, None)
    Hm, Wm = plan.grid
    pts = np.argwhere(tissue.mask) if tissue is not None and tissue.mask.any() else None
    if pts is None:
        centres = [(Hm // 2, Wm // 2)]
    else:
        pick = pts[np.linspace(0, len(pts) - 1, min(n_patches, len(pts))).round().astype(int)]
        f = tissue.downsample / plan.level0_per_model
        centres = [(int((r + 0.5) * f - plan.region[1] / plan.level0_per_model),
                    int((c + 0.5) * f - plan.region[0] / plan.level0_per_model)) for r, c in pick]
    px = []
    for r, c in centres:
        r0 = int(np.clip(r - size // 2, 0, max(0, Hm - size)))
        c0 = int(np.clip(c - size // 2, 0, max(0, Wm - size)))
        px.append(g.read(r0, min(Hm, r0 + size), c0, min(Wm, c0 + size)).reshape(-1, 3))
    allpx = np.concatenate(px)
    # background (white, unsaturated) pixels inside the patches do not count
    sat = allpx.max(axis=1) - allpx.min(axis=1)
    keep = (sat > 0.05) | (allpx.mean(axis=1) < 0.8)
    if keep.sum() >= 100:
        allpx = allpx[keep]
    sm, ss = lab_stats(allpx.reshape(-1, 1, 3))
    return (np.asarray(sm, np.float64), np.asarray(ss, np.float64),
            np.asarray(tm, np.float64), np.asarray(ts, np.float64))


def analyse_slide(path: Path, model, out_dir: Path, opts, radius_um=None, resume=False,
                  quiet=False, label="", executor=None) -> dict:
    """Analyse one slide and write its outputs (see the module docstring); returns the report."""
    return _finish_slide(_compute_slide(path, model, out_dir, opts, radius_um=radius_um,
                                        resume=resume, quiet=quiet, label=label,
                                        executor=executor))


def _compute_slide(path: Path, model, out_dir: Path, opts, radius_um=None, resume=False,
                   quiet=False, label="", executor=None) -> dict:
    """The part of :func:`analyse_slide` that needs the executor: the slide opened, its tissue
    found, every block run; returns what :func:`_finish_slide` needs, with the output lock
    still held (released by it)."""
    from contextlib import ExitStack

    from vnumba.analysis.tissue import read_overview, tissue_mask
    from vnumba.analysis.wsi import ModelGridReader, plan_slide, run_blocks, slide_key
    from vnumba.io.outputs import OutputLock
    from vnumba.io.slides import open_slide

    t0 = time.perf_counter()
    name = slide_name(path)
    bar = _Progress(quiet, label)
    bar.stage("opening the slide")
    lock = ExitStack()
    try:
        with open_slide(path, mpp=opts.mpp) as reader:
            lock.enter_context(OutputLock(out_dir / f"{name}_report.json"))
            plan = plan_slide(reader, model, opts)
            bar.stage("tissue detection")
            tissue = tissue_mask(reader)
            overview, ov_level, ov_ds = read_overview(reader)
            norm = _norm_stats(reader, plan, tissue, model)
            grid = ModelGridReader(reader, plan, norm)
            work = out_dir / f".{name}.work"
            key = slide_key(path, plan, model, opts)
            bar.start(len(plan.blocks))
            state = run_blocks(plan, grid, model, opts, work, tissue=tissue, resume=resume,
                               key=key, progress=bar.update, executor=executor)
            bar.close()
    except BaseException:
        lock.close()
        raise
    return dict(path=path, name=name, out_dir=out_dir, plan=plan, tissue=tissue,
                overview=overview, ov_ds=ov_ds, work=work, state=state, model=model, opts=opts,
                radius_um=radius_um, t0=t0, bar=bar, lock=lock)


def _finish_slide(pending: dict) -> dict:
    """Nuclei, interactions and every output of a slide whose blocks are done; the report.

    Reads only the work folder and what :func:`_compute_slide` kept, so that it can run
    (in a thread of the driver) while the cluster computes the next slide's blocks.
    """
    from vnumba.analysis.inference import model_mask_classes
    from vnumba.analysis.wsi import collect_nuclei, on_tissue

    p = pending
    with p["lock"]:
        plan, tissue, model, work, state = p["plan"], p["tissue"], p["model"], p["work"], p["state"]
        names = model_mask_classes(model) or ("nucleus",)
        table = collect_nuclei(plan, work, state["done"], model_mask_classes(model))
        keep = on_tissue(tissue, table.x, table.y)
        state["off_tissue"] = int((~keep).sum())
        table = table.subset(keep)
        p["bar"].stage("interactions and outputs")
        rep = write_outputs(p["path"], p["name"], p["out_dir"], plan, tissue, p["overview"],
                            p["ov_ds"], table, names, work, state, model, p["opts"],
                            p["radius_um"], p["t0"])
    shutil.rmtree(work, ignore_errors=True)
    return rep


class _Progress:
    """A tqdm bar over the blocks (tiles/s and ETA), with one-line stages around it."""

    def __init__(self, quiet, label):
        self.quiet, self.label, self.bar = quiet, label, None

    def stage(self, text):
        if not self.quiet:
            print(f"{self.label}: {text}", file=sys.stderr, flush=True)

    def start(self, total):
        if self.quiet:
            return
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=self.label or "slide", unit="tile", file=sys.stderr,
                        dynamic_ncols=True, mininterval=1.0)

    def update(self, done, total, skipped):
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix(skipped=skipped, refresh=False)
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- outputs
def write_outputs(path, name, out_dir, plan, tissue, overview, ov_ds, table, names, work, state,
                  model, opts, radius_um, t0) -> dict:
    """Interactions, GeoJSON, CSV, OME-TIFF, report and figures of one slide."""
    from vnumba.analysis import plots
    from vnumba.analysis.interactions import CLASSES, compute_interactions
    from vnumba.analysis.qupath import write_cells_csv
    from vnumba.analysis.tissue import tile_tissue_fraction
    from vnumba.io.outputs import atomic_write_text
    from vnumba.scenarios import scenario_mask_class

    meta = getattr(model, "meta", None) or {}
    classes = np.asarray(table.classes, dtype=object)
    if len(names) == 1:     # a one-channel model: every nucleus has its scenario's class
        one = scenario_mask_class(meta.get("scenario") or "scenario3") or "tumour"
        classes = np.full(len(table), one if one in CLASSES else "other", dtype=object)
    X, Y, W, H = plan.region
    frac = tile_tissue_fraction(tissue, X, Y, W, H) if tissue is not None else 1.0
    tissue_mm2 = frac * W * H * plan.mpp0 ** 2 * 1e-6
    cfg = {"radius_um": float(radius_um)} if radius_um is not None else None
    res = compute_interactions(np.c_[table.x, table.y], classes, plan.mpp0, tissue_mm2,
                               areas_um2=table.area_um2,
                               tissue_mask=None if tissue is None else tissue.mask,
                               tissue_downsample=1.0 if tissue is None else tissue.downsample,
                               region=plan.region, config=cfg)
    stats = res.stats
    # the per-class probabilities in the contract's column order
    probs = np.zeros((len(table), 3))
    for j, n in enumerate(names):
        if n in CLASSES:
            probs[:, CLASSES.index(n)] = table.class_probs[:, j]
    if len(names) == 1:
        probs[:, CLASSES.index(classes[0]) if len(table) else 0] = 1.0
    write_cells_csv(out_dir / f"{name}_cells.csv", table.x, table.y, classes, table.area_um2,
                    probs, res.dist_tumour_um, slide=name)
    write_cells_geojson(out_dir / f"{name}_cells.geojson", name, table, classes, probs, res,
                        plan, work, state["done"])
    write_probability_tiff(out_dir / f"{name}_probability.ome.tif", work, plan, names)
    plots.density_figure(res.grid, stats, out_dir / f"{name}_density.png",
                         immune_rich_areas=res.immune_rich_areas, title=name)
    plots.slide_thumbnail(overview, ov_ds, table.x, table.y, classes,
                          out_dir / f"{name}_thumbnail.png", title=name)
    rep = {"slide": str(path), "name": name,
           **{k: v for k, v in stats.items() if k != "config"},
           "tissue_area_mm2": tissue_mm2, "mpp": plan.mpp0, "level": plan.level,
           "level_mpp": plan.level_mpp, "model_mpp": plan.model_mpp, "region": list(plan.region),
           "tiles_processed": state["processed"] + state["reused"],
           "tiles_skipped": state["skipped"], "tiles_resumed": state["reused"],
           "detections_off_tissue": state.get("off_tissue", 0), "tile": opts.tile, "halo_um": opts.halo_um,
           "model": {"arch": getattr(model, "arch", None), "scenario": meta.get("scenario"),
                     "mask_classes": list(names), "mpp": meta.get("mpp")},
           "interaction_config": stats.get("config"),
           "versions": _versions()}
    rep["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out_dir / f"{name}_report.json",
                      json.dumps(rep, indent=1, default=_json_default) + "\n")
    atomic_write_text(out_dir / f"{name}_report.md", report_markdown(rep))
    return rep


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("vnumba", "numpy", "numba", "scipy", "tifffile", "openslide-python", "shapely"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def write_cells_geojson(path, name, table, classes, probs, res, plan, work, done) -> None:
    """``NAME_cells.geojson``: one QuPath detection per nucleus (polygons with holes and all
    parts, level-0 pixels; the same reproducible ids as the CSV's ``uuid``), the immune-rich
    areas as one annotation.

    Row ``i`` of ``table`` is nucleus ``table.local[i]`` of block ``table.block[i]`` (the
    table may be a subset of the blocks' nuclei: those off the tissue are dropped), so the
    polygons are looked up by those two, never by position in the blocks (``done`` is not
    needed for that and is kept for the signature)."""
    from vnumba.analysis.qupath import GeoJSONWriter, label_polygons
    from vnumba.analysis.wsi import BlockResult

    f = plan.level0_per_model
    blocks = np.asarray(table.block, np.int64)
    local = np.asarray(table.local, np.int64)
    with GeoJSONWriter(path, slide=name) as writer:
        cur, polys = None, {}
        for i in range(len(table)):
            if blocks[i] != cur:          # the table is in block order: one load per block
                cur = int(blocks[i])
                r = BlockResult.load(Path(work) / f"block_{cur}.npz")
                er0, _, ec0, _ = r.ext
                # model pixel (i, j) of the extended block covers level-0 [X + (ec0 + j) f, ...)
                polys = label_polygons(r.labels, ids=local[blocks == cur],
                                       offset=(plan.region[0] + ec0 * f, plan.region[1] + er0 * f),
                                       scale=f)
            d = res.dist_tumour_um[i]
            meas = {"area_um2": float(table.area_um2[i]),
                    "p_tumour": float(probs[i, 0]), "p_immune": float(probs[i, 1]),
                    "p_other": float(probs[i, 2]),
                    "dist_tumour_um": float(d) if np.isfinite(d) else None}
            writer.add_detection(polys.get(int(local[i])), str(classes[i]), meas, index=i)
        if res.immune_rich_areas is not None and not res.immune_rich_areas.is_empty:
            writer.add_annotation(res.immune_rich_areas, "Immune-rich",
                                  {"area_mm2": float(res.stats.get("immune_rich_area_mm2") or 0)},
                                  index=0, kind="immune-rich")


def write_probability_tiff(path, work, plan, names) -> None:
    """``NAME_probability.ome.tif``: the class probabilities x 255 (uint8), one channel per
    class, tiled 256 px, zlib, pyramidal (2x levels down to <= 1024 px), written tile by tile
    from the work folder's disk-backed array, with the model grid's physical pixel size."""
    import tifffile

    from vnumba.io.outputs import atomic_write, disk_array

    Hm, Wm = plan.grid
    C = len(names)
    # read and written with pread/pwrite, not mapped: the process holds one band at a time
    src = disk_array(Path(work) / "probs.u8", np.uint8, (C, Hm, Wm), "r")
    levels = [src]
    tmp_files = []
    while max(levels[-1].shape[1:]) > 1024:
        prev = levels[-1]
        h, w = (prev.shape[1] + 1) // 2, (prev.shape[2] + 1) // 2
        fn = Path(work) / f"probs_{len(levels)}.u8"
        nxt = disk_array(fn, np.uint8, (C, h, w))
        band = 512
        for r in range(0, h, band):
            blk = np.asarray(prev[:, 2 * r:2 * min(h, r + band)], np.float32)
            if blk.shape[1] % 2:
                blk = np.concatenate([blk, blk[:, -1:]], axis=1)
            if blk.shape[2] % 2:
                blk = np.concatenate([blk, blk[:, :, -1:]], axis=2)
            nxt[:, r:r + blk.shape[1] // 2] = np.rint(
                blk.reshape(C, blk.shape[1] // 2, 2, blk.shape[2] // 2, 2).mean(axis=(2, 4)))
        nxt.flush()
        levels.append(nxt)
        tmp_files.append(fn)
    mpp = plan.model_mpp

    def tiles(a):
        for c in range(a.shape[0]):
            for r in range(0, a.shape[1], 256):
                band = a[c, r:r + 256]          # one read per band of tiles
                for q in range(0, a.shape[2], 256):
                    t = np.zeros((256, 256), np.uint8)
                    blk = band[:, q:q + 256]
                    t[:blk.shape[0], :blk.shape[1]] = blk
                    yield t

    def write(tmp):
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            meta = {"axes": "CYX", "Channel": {"Name": list(names)},
                    "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
            tif.write(tiles(levels[0]), shape=levels[0].shape, dtype=np.uint8, tile=(256, 256),
                      compression="zlib", photometric="minisblack", subifds=len(levels) - 1,
                      metadata=meta)
            for lv in levels[1:]:
                tif.write(tiles(lv), shape=lv.shape, dtype=np.uint8, tile=(256, 256),
                          compression="zlib", photometric="minisblack", subfiletype=1,
                          metadata=None)

    try:
        atomic_write(path, write)
    finally:
        for lv in levels:
            lv.close()     # close the files before they are removed
        levels.clear()
        for fn in tmp_files:
            fn.unlink(missing_ok=True)


def report_markdown(rep: dict) -> str:
    """``NAME_report.md``: every figure of the report, the model, pixel size, level, run time."""
    def g(v, fmt="{:.4g}"):
        if v is None:
            return "–"
        if isinstance(v, float):
            return fmt.format(v) if math.isfinite(v) else "–"
        return str(v)

    L = [f"# Slide report: {rep['name']}", "",
         f"- slide: `{rep['slide']}`",
         f"- pixel size: level 0 {g(rep['mpp'])} µm/px; analysed at level {rep['level']} "
         f"({g(rep['level_mpp'])} µm/px), resampled to the model's {g(rep['model_mpp'])} µm/px",
         f"- region (level-0 x, y, w, h): {rep['region']}",
         f"- model: {rep['model']['arch']} ({rep['model']['scenario']}), classes "
         f"{', '.join(rep['model']['mask_classes'])}",
         f"- tiles: {rep['tiles_processed']} processed ({rep['tiles_resumed']} from an earlier "
         f"run), {rep['tiles_skipped']} without tissue skipped; block {rep['tile']} px, halo "
         f"{g(rep['halo_um'])} µm",
         f"- run time: {rep['seconds']:.1f} s",
         "- versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if v), "",
         "| figure | value |", "|---|---|"]
    skip = {"slide", "name", "model", "versions", "region", "level", "level_mpp", "model_mpp",
            "mpp", "tiles_processed", "tiles_resumed", "tiles_skipped", "tile", "halo_um",
            "seconds"}
    for k, v in rep.items():
        if k in skip or k.startswith("_"):
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a} {g(b)}" for a, b in v.items() if not isinstance(b, (list, dict)))
        elif isinstance(v, list):
            continue
        L.append(f"| {k} | {g(v)} |")
    L += ["", f"Figures: `{rep['name']}_density.png` (immune density over the tissue, tumour "
          f"regions outlined), `{rep['name']}_thumbnail.png` (detections by class).", ""]
    return "\n".join(L)


SUMMARY_KEYS = ("name", "slide", "tumour_nuclei", "immune_cells", "other_nuclei",
                "immune_near_tumour", "tumour_with_immune_neighbour_fraction", "radius_um",
                "tissue_area_mm2", "immune_rich_area_mm2", "immune_call", "mpp", "level",
                "tiles_processed", "tiles_skipped", "seconds")


def write_summary(path, rows) -> None:
    """``summary.csv``: one row per slide of this call (:data:`SUMMARY_KEYS`)."""
    from vnumba.io.outputs import atomic_write_text
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_KEYS)
    for r in rows:
        w.writerow([r.get(k) for k in SUMMARY_KEYS])
    atomic_write_text(path, buf.getvalue())


if __name__ == "__main__":
    sys.exit(main())
