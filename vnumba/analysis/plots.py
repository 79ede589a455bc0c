"""Figures: training curves (the article's Fig. 3), sample panels (Fig. 4/5), overlays and
the evaluation's per-class marked-nucleus fractions.

Matplotlib is used through its object API with the Agg canvas (no pyplot state, no display
needed).  Command line::

    python -m vnumba.figures curves LOG.csv [LOG2.csv ...] -o curves.png
    python -m vnumba.figures panels --model MODEL [--synthetic DATA.h5 --index 0,3]
                                    [IMAGE ...] [--crop ROW COL H W] -o panels.png
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vnumba.io.trainlog import CURVE_COLUMNS

__all__ = ["overlay_contours", "read_training_log", "plot_training_curves", "plot_panels",
           "plot_marked_fractions", "plot_confusion", "density_figure"]


# ----------------------------------------------------------------------------- overlays
def overlay_contours(image: np.ndarray, labels: np.ndarray, color=(0, 255, 0),
                     second=None, second_color=(255, 0, 255), label_colors=None) -> np.ndarray:
    """Object outlines drawn onto an image, at full resolution.

    Parameters
    ----------
    image : ndarray, shape (H, W, C) or (H, W), float in [0, 1] or uint8
        Grey or multi-channel images are shown as RGB (first three channels; one channel is
        repeated).
    labels : ndarray, shape (H, W), int or bool
        Objects whose inner boundary pixels are painted ``color``.
    color : tuple of 3 int
    second : ndarray, shape (H, W), optional
        A second label image (e.g. the annotation) painted ``second_color`` (under the first).
    label_colors : ndarray, shape (L, 3), optional
        Colour of each object of ``labels`` (row ``i`` for label ``i``, ``L > labels.max()``),
        e.g. its class colour; replaces ``color``.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    from skimage.segmentation import find_boundaries

    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    if img.dtype == np.uint8:
        rgb = img.copy()
    elif img.dtype.kind == "f":
        rgb = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype == np.uint16:
        rgb = (img // 257).astype(np.uint8)
    else:
        raise TypeError(f"image dtype {img.dtype} not supported")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    elif rgb.shape[2] == 2:
        rgb = np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)
    rgb = np.ascontiguousarray(rgb[:, :, :3])
    for lab, col, lut in ((second, second_color, None), (labels, color, label_colors)):
        if lab is None:
            continue
        lab = np.asarray(lab)
        if lab.shape != rgb.shape[:2]:
            raise ValueError(f"labels shape {lab.shape} does not match image {rgb.shape[:2]}")
        lab = lab.astype(np.int32) if lab.dtype == bool else lab
        edge = find_boundaries(lab, mode="inner")
        if lut is None:
            rgb[edge] = np.asarray(col, np.uint8)
        else:
            lut = np.asarray(lut)
            if lut.ndim != 2 or lut.shape[1] != 3 or (lab.size and lut.shape[0] <= lab.max()):
                raise ValueError(f"label_colors must be (L, 3) with L > labels.max(), got "
                                 f"{lut.shape}")
            rgb[edge] = lut[lab[edge]].astype(np.uint8)
    return rgb


# ----------------------------------------------------------------------------- curves
def read_training_log(path) -> dict:
    """Read a training CSV (:mod:`vnumba.io.trainlog`: columns ``iter, loss, accuracy, psnr``
    required; extra columns are kept).

    Returns
    -------
    dict
        column name -> float64 array.  Empty cells become NaN.

    Raises
    ------
    ValueError
        Missing required columns or unparsable numbers (message names the file and line).
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty training log")
        missing = [c for c in CURVE_COLUMNS if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{path}: training log lacks column(s) {missing}; has "
                             f"{reader.fieldnames}")
        cols = {c: [] for c in reader.fieldnames}
        for line, row in enumerate(reader, start=2):
            for c in reader.fieldnames:
                v = (row.get(c) or "").strip()
                try:
                    cols[c].append(float(v) if v else np.nan)
                except ValueError:
                    # Non-numeric columns (e.g. a phase name) are carried as NaN; the
                    # required ones must parse.
                    if c in CURVE_COLUMNS:
                        raise ValueError(f"{path}:{line}: column {c!r} is not a number: {v!r}")
                    cols[c].append(np.nan)
    out = {c: np.asarray(v, dtype=np.float64) for c, v in cols.items()}
    if out["iter"].size == 0:
        raise ValueError(f"{path}: training log has no rows")
    return out


def _smooth(y, window):
    if window <= 1 or y.size < window:
        return None
    k = np.ones(window) / window
    valid = np.isfinite(y)
    num = np.convolve(np.where(valid, y, 0.0), k, mode="valid")
    den = np.convolve(valid.astype(float), k, mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def plot_training_curves(log_csv, out_png, labels=None, smooth: int | None = None,
                         dpi: int = 150) -> Path:
    """Loss, mask accuracy and PSNR versus iteration (the article's Fig. 3).

    Parameters
    ----------
    log_csv : path-like or list of path-like
        Training log(s) with columns ``iter, loss, accuracy, psnr, seconds``; several logs are
        drawn into the same axes (e.g. scenarios).
    out_png : path-like
    labels : list of str, optional
        Legend entries (default: file stems).
    smooth : int, optional
        Width of a moving average drawn over the raw per-iteration values (default:
        about 2 % of the iterations; 1 = off).
    dpi : int

    Returns
    -------
    Path
        ``out_png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    logs = [log_csv] if isinstance(log_csv, (str, Path)) else list(log_csv)
    if not logs:
        raise ValueError("no training log given")
    labels = list(labels) if labels is not None else [Path(p).stem for p in logs]
    if len(labels) != len(logs):
        raise ValueError(f"{len(labels)} labels for {len(logs)} logs")
    data = [read_training_log(p) for p in logs]
    fig = Figure(figsize=(12, 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    spec = (("loss", "training loss", True), ("accuracy", "mask accuracy", False),
            ("psnr", "PSNR of $u_T$ [dB]", False))
    for k, (d, lab) in enumerate(zip(data, labels)):
        colour = f"C{k}"
        it = d["iter"]
        w = smooth if smooth is not None else max(1, it.size // 50)
        for ax, (col, title, logy) in zip(axes, spec):
            y = d[col]
            s = _smooth(y, w)
            ax.plot(it, y, color=colour, alpha=0.3 if s is not None else 1.0, lw=0.8,
                    label=None if s is not None else lab)
            if s is not None:
                ax.plot(it[w - 1:], s, color=colour, lw=1.6, label=lab)
            if col == "accuracy" and "val_accuracy" in d:
                ok = np.isfinite(d["val_accuracy"])
                ax.plot(it[ok], d["val_accuracy"][ok], "o", color=colour, ms=3)
            if logy and np.all(y[np.isfinite(y)] > 0):
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.grid(True, alpha=0.3)
    if len(logs) > 1 or labels[0]:
        axes[0].legend(fontsize=8)
    return _save_png(fig, out_png, dpi)


def _save_png(fig, out_png, dpi) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically (nothing half-written)."""
    import io

    from vnumba.io.outputs import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png


# ----------------------------------------------------------------------------- panels
_PANEL_ORDER = (("input", "input $u_0$"), ("target_image", "target $g_u$"),
                ("target_mask", "target $g_m$"), ("reconstruction", "reconstruction $u_T$"),
                ("mask", "mask $m_T$"))


def _as_display(a):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = np.moveaxis(a, 0, 2)  # (C, H, W) as stored in training data
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 2:
        a = np.concatenate([a, np.zeros_like(a[:, :, :1])], axis=2)
    return np.clip(a, 0.0, 1.0)


def plot_panels(samples, out_png, row_labels=None, dpi: int = 150, panel_size: float = 2.6) -> Path:
    """Sample panels like the article's Fig. 4/5: one row per sample, one column per quantity.

    Parameters
    ----------
    samples : list of dict
        Keys (all optional, at least one per sample): ``input``, ``target_image``,
        ``target_mask``, ``reconstruction``, ``mask``.  Images are (H, W, C) or (C, H, W)
        floats in [0, 1]; masks (H, W).  A column is drawn if any sample has that key;
        samples without it get an empty panel.
    out_png : path-like
    row_labels : list of str, optional
        Shown left of each row (e.g. "synthetic", "PUMA").
    dpi : int
    panel_size : float
        Inches per panel.

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samples = list(samples)
    if not samples:
        raise ValueError("no samples to plot")
    unknown = sorted({k for s in samples for k in s} - {k for k, _ in _PANEL_ORDER})
    if unknown:
        raise KeyError(f"unknown panel key(s) {unknown}; known: {[k for k, _ in _PANEL_ORDER]}")
    cols = [(k, t) for k, t in _PANEL_ORDER if any(k in s for s in samples)]
    if row_labels is not None and len(row_labels) != len(samples):
        raise ValueError(f"{len(row_labels)} row labels for {len(samples)} samples")
    nr, nc = len(samples), len(cols)
    # Row heights follow each sample's aspect ratio, so wide tiles leave no blank bands.
    aspect = []
    for s in samples:
        a = _as_display(next(v for v in s.values() if v is not None))
        aspect.append(a.shape[0] / a.shape[1])
    fig = Figure(figsize=(panel_size * nc, panel_size * sum(aspect) + 0.4),
                 constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(nr, nc, squeeze=False,
                                   gridspec_kw={"height_ratios": aspect}))
    for i, s in enumerate(samples):
        for j, (key, title) in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=10)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=10)
            if key not in s or s[key] is None:
                ax.set_axis_off()
                continue
            a = _as_display(s[key])
            if a.ndim == 2:
                ax.imshow(a, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(a, interpolation="nearest")
    return _save_png(fig, out_png, dpi)


# ----------------------------------------------------------------------------- evaluation
def plot_marked_fractions(report: dict, out_png, per_folder: bool = True, dpi: int = 150) -> Path:
    """Grouped bars of the fraction of annotated nuclei of each class that each method marks.

    One panel for the pooled images and, with ``per_folder``, one per dataset folder (when
    there is more than one); in each, one group of bars per class (tumour, immune, other,
    epithelial — those that occur) and one bar per method, side by side, labelled
    ``marked / nuclei``.  A nucleus is marked when at least half of its pixels are in the
    method's thresholded mask (:func:`vnumba.evaluate.class_marking`).  The file is written
    atomically (:func:`vnumba.io.outputs.atomic_write_bytes`).

    Parameters
    ----------
    report : dict
        A report of :func:`vnumba.evaluate.run_evaluation` (or its ``report.json``): keys
        ``methods``, ``overall`` and optionally ``per_folder``, pooled results with a
        ``classes`` entry.
    out_png : path-like
    per_folder : bool
    dpi : int

    Returns
    -------
    Path
        ``out_png``.

    Raises
    ------
    ValueError
        No method has per-class results (no evaluated image has ``classes``).
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vnumba.io.outputs import atomic_write_bytes
    from vnumba.scenarios import class_order as _class_order

    methods = [m["name"] for m in report.get("methods", [])] or list(report["overall"])
    # Scored variants (e.g. "NAME + object filter") that are not separate methods of the run.
    methods += [m for m in report.get("overall", {}) if m not in methods]
    scopes = [("overall", report["overall"])]
    folders = report.get("per_folder") or {}
    if per_folder and len(folders) > 1:
        scopes += list(folders.items())
    panels = []
    for title, by_method in scopes:
        have = [m for m in methods if "classes" in (by_method.get(m) or {})]
        if not have:
            continue
        names = sorted({n for m in have for n in by_method[m]["classes"]}, key=_class_order)
        n_img = max(by_method[m].get("n_images_classes", by_method[m]["n_images"]) for m in have)
        panels.append((f"{title} ({n_img} image{'s' if n_img != 1 else ''})", by_method, have,
                       names))
    if not panels:
        raise ValueError("no per-class marked fractions in the report (no image with classes)")
    widths = [max(2, len(names)) * (0.35 + 0.3 * len(methods)) + 0.6
              for _, _, _, names in panels]
    fig = Figure(figsize=(sum(widths) + 0.8, 3.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False,
                                      gridspec_kw={"width_ratios": widths})[0])
    bar_w = 0.8 / len(methods)
    for ax, (title, by_method, have, names) in zip(axes, panels):
        x = np.arange(len(names))
        for j, m in enumerate(methods):
            if m not in have:
                continue
            cls = by_method[m]["classes"]
            vals = [cls[n]["marked_fraction"] if n in cls else None for n in names]
            heights = [np.nan if v is None else v for v in vals]
            pos = x - 0.4 + bar_w * (j + 0.5)
            ax.bar(pos, heights, bar_w * 0.95, color=f"C{j}", label=m)
            for xp, n in zip(pos, names):
                if n in cls and cls[n]["nuclei"]:
                    h = cls[n]["marked_fraction"]
                    ax.text(xp, h + 0.01, f"{cls[n]['marked']}/{cls[n]['nuclei']}",
                            ha="center", va="bottom", fontsize=6, rotation=90)
        counts = [max((by_method[m]["classes"].get(n) or {}).get("nuclei", 0) for m in have)
                  for n in names]
        ax.set_xticks(x)
        ax.set_xticklabels([f"{n}\n({c} nuclei)" for n, c in zip(names, counts)], fontsize=8)
        ax.set_ylim(0.0, 1.15)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("fraction of nuclei marked\n(≥ half of the pixels in the mask)")
    handles, labels = [], []
    for ax in axes:   # every method once, in the order of the report
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png


def plot_confusion(report: dict, out_png, dpi: int = 150) -> Path:
    """Confusion matrices of the methods' classed nuclei, side by side (pooled over all images).

    One panel per method with a ``classified`` result (:mod:`vnumba.analysis.classeval`): rows
    = annotated class (those that occur) and ``no nucleus`` (predictions matched to no
    annotated nucleus), columns = class of the matched prediction and ``missed``; colours are
    row-normalised (each row's share), every cell is annotated with its count and share.  The
    title gives the per-class detection F1.  Written atomically.

    Parameters
    ----------
    report : dict
        A :func:`vnumba.analysis.evaluation.run_evaluation` report (or its ``report.json``).
    out_png : path-like
    dpi : int

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        No method has classed nuclei.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vnumba.analysis.classeval import SCORED_CLASSES, confusion_rows
    from vnumba.io.outputs import atomic_write_bytes

    methods = [m["name"] for m in report.get("methods", [])] or list(report["overall"])
    methods += [m for m in report.get("overall", {}) if m not in methods]
    have = [m for m in methods if "classified" in (report["overall"].get(m) or {})]
    if not have:
        raise ValueError("no classed nuclei in the report (no method with classes, or no "
                         "image with class annotations)")
    panels = []
    for m in have:
        c = report["overall"][m]["classified"]
        rows = confusion_rows(c) or list(c["confusion"])[:1]
        cols = list(next(iter(c["confusion"].values())))
        counts = np.array([[c["confusion"][r][k] for k in cols] for r in rows], np.float64)
        tot = counts.sum(axis=1, keepdims=True)
        frac = np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0)
        panels.append((m, c, rows, cols, counts, frac))
    w = max(len(p[3]) for p in panels)
    fig = Figure(figsize=(len(panels) * (1.4 + 0.8 * w) + 1.0,
                          1.6 + 0.5 * max(len(p[2]) for p in panels)),
                 constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    im = None
    for ax, (m, c, rows, cols, counts, frac) in zip(axes, panels):
        im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(j, i, f"{int(counts[i, j])}\n{100 * frac[i, j]:.0f} %", ha="center",
                        va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, fontsize=8, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r} ({int(t)})" for r, t in zip(rows, counts.sum(axis=1))],
                           fontsize=8)
        ax.set_xlabel("predicted class", fontsize=8)
        det = c["detection"]
        f1 = ", ".join(f"{k} " + ("–" if det[k]["f1"] is None else f"{det[k]['f1']:.2f}")
                       for k in SCORED_CLASSES if k in det)
        ax.set_title(f"{m}\nF1 {f1}", fontsize=9)
    axes[0].set_ylabel("annotated class (nuclei)", fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="share of the row")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png


# ----------------------------------------------------------------------------- whole slide
def density_figure(grid, stats: dict, out_png, immune_rich_areas=None, title: str | None = None,
                   dpi: int = 150, width_in: float = 7.0) -> Path:
    """Immune density over the tissue as a heat map, tumour regions outlined; written atomically.

    One square per grid cell (:class:`vnumba.analysis.interactions.DensityGrid`, e.g. 250 µm)
    coloured by its immune cells per mm² of tissue (colour bar in cells/mm²; cells with too
    little tissue are light grey), the tumour-region cells outlined in QuPath's tumour red
    along the cell edges, and, when given, the immune-rich areas as thin dashed outlines.
    Axes in mm from the grid's corner; the title gives the slide's call, the immune-rich share
    of the tissue and the call's threshold.

    Parameters
    ----------
    grid : DensityGrid
        From :func:`vnumba.analysis.interactions.compute_interactions`.
    stats : dict
        Its ``stats`` (``immune_call``, ``immune_rich_area_fraction``, ``immune_call_threshold``,
        ``immune_density_per_mm2``, ``radius_um``).
    out_png : path-like
    immune_rich_areas : shapely Polygon or MultiPolygon, optional
        In level-0 pixels (corner convention), as the grid's ``origin``.
    title : str, optional
        First title line (e.g. the slide's name).
    dpi : int
    width_in : float
        Figure width in inches.

    Returns
    -------
    Path
    """
    import io

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vnumba.analysis.qupath import mask_polygon
    from vnumba.io.outputs import atomic_write_bytes
    from vnumba.scenarios import MASK_CLASSES

    dens = np.asarray(grid.density[1], np.float64)
    rows, cols = dens.shape
    cell_mm = float(grid.cell_um) / 1000.0
    w_mm, h_mm = cols * cell_mm, rows * cell_mm
    aspect = (h_mm / w_mm) if w_mm > 0 else 1.0
    fig = Figure(figsize=(width_in, max(2.5, min(12.0, 0.8 + (width_in - 1.6) * aspect))),
                 constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["magma"].with_extremes(bad="#e6e6e6")     # grey: no (or too little) tissue
    finite = dens[np.isfinite(dens)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    if rows and cols:
        im = ax.imshow(np.ma.masked_invalid(dens), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest",
                       extent=(0.0, w_mm, h_mm, 0.0))
        fig.colorbar(im, ax=ax, shrink=0.85, label="immune cells / mm² of tissue")
        red = np.asarray(MASK_CLASSES["tumour"].color) / 255.0
        tumour = mask_polygon(grid.tumour_region, scale=cell_mm) if grid.tumour_region.any() else None
        drew = False
        for p in getattr(tumour, "geoms", [tumour] if tumour is not None and not tumour.is_empty else []):
            for ring in [p.exterior, *p.interiors]:
                xy = np.asarray(ring.coords)
                ax.plot(xy[:, 0], xy[:, 1], color=red, lw=1.6, label=None if drew else "tumour region")
                drew = True
        if immune_rich_areas is not None and not immune_rich_areas.is_empty:
            f = cell_mm / float(grid.cell_px)           # level-0 px -> mm
            ox, oy = grid.origin
            first = True
            for p in getattr(immune_rich_areas, "geoms", [immune_rich_areas]):
                if p.geom_type != "Polygon":
                    continue
                xy = (np.asarray(p.exterior.coords) - (ox, oy)) * f
                ax.plot(xy[:, 0], xy[:, 1], color="#00c8ff", lw=0.6, ls="--",
                        label="immune-rich areas" if first else None)
                first = False
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
        ax.set_xlim(0.0, w_mm)
        ax.set_ylim(h_mm, 0.0)
    else:
        ax.text(0.5, 0.5, "no tissue", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_aspect("equal")
    call = stats.get("immune_call") or "no call (no tissue)"
    fr = stats.get("immune_rich_area_fraction")
    thr = stats.get("immune_call_threshold")
    dens_all = stats.get("immune_density_per_mm2")
    line2 = f"{call}: immune-rich areas {'–' if fr is None else f'{100 * fr:.1f} %'} of tissue"
    if thr is not None:
        line2 += f" (call at >= {100 * thr:g} %)"
    line3 = (f"immune {'–' if dens_all is None else f'{dens_all:.0f}'} /mm², grid {grid.cell_um:g} µm, "
             f"R = {stats.get('radius_um', float('nan')):g} µm")
    ax.set_title("\n".join(([title] if title else []) + [line2, line3]), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png


def slide_thumbnail(overview: np.ndarray, downsample: float, x, y, classes, out_png,
                    title: str | None = None, dpi: int = 150, width_in: float = 8.0) -> Path:
    """The slide at low resolution with every detection as a dot in its class's QuPath
    colour (a legend counts them); written atomically.

    Parameters
    ----------
    overview : ndarray uint8 (h, w, 3)
        Low-resolution RGB view (:func:`vnumba.analysis.tissue.read_overview`).
    downsample : float
        Level-0 pixels per overview pixel.
    x, y : array_like float (n,)
        Nucleus centroids in level-0 pixels (x = column).
    classes : array_like of str (n,)
    out_png : path-like
    title : str, optional

    Returns
    -------
    Path
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vnumba.io.outputs import atomic_write_bytes
    from vnumba.scenarios import mask_class

    h, w = overview.shape[:2]
    fig = Figure(figsize=(width_in, width_in * h / max(w, 1) + 0.6))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, h / max(w, 1) * width_in / (width_in * h / max(w, 1) + 0.6)))
    ax.imshow(overview, interpolation="lanczos" if max(h, w) > 800 else "nearest")
    ax.set_axis_off()
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    classes = np.asarray(classes, dtype=object)
    # dot size: a nucleus of ~8 µm would be below one overview pixel; keep dots visible
    size = float(np.clip(6000.0 / max(x.size, 1), 0.3, 6.0))
    for name in sorted(set(classes.tolist())):
        sel = classes == name
        c = np.asarray(mask_class(name).color, np.float64) / 255.0
        ax.scatter((x[sel] + 0.5) / downsample - 0.5, (y[sel] + 0.5) / downsample - 0.5, s=size,
                   color=c, linewidths=0, label=f"{name} ({int(sel.sum())})")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if x.size:
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, 1.0 + 0.6 / (width_in * h / max(w, 1))),
                  ncol=3, fontsize=8, frameon=False, markerscale=max(1.0, 4.0 / size))
    if title:
        fig.suptitle(title, x=0.99, ha="right", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png
