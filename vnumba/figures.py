"""``python -m vnumba.figures``: training curves and sample panels (app layer over
:mod:`vnumba.analysis.plots`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vnumba.analysis.inference import load_model_arg, predict_image
from vnumba.analysis.plots import plot_panels, plot_training_curves
from vnumba.cli import ArgumentParser, interruptible, non_negative_int, pixel_size, positive_int
from vnumba.scenarios import NAMES as SCENARIO_NAMES


def _index_list(s):
    try:
        out = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative indices, got {s!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m vnumba.figures",
                                description="Training curves and sample panels.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves", help="loss / mask accuracy / PSNR vs iteration (Fig. 3)")
    c.add_argument("logs", nargs="+", metavar="LOG.csv", help="training log(s)")
    c.add_argument("-o", "--out", required=True, type=Path, help="output PNG")
    c.add_argument("--labels", nargs="+", help="legend entries, one per log")
    c.add_argument("--smooth", type=positive_int, help="moving-average width (1 = raw only)")
    q = sub.add_parser("panels", help="input / reconstruction / mask panels (Fig. 4/5)")
    q.add_argument("images", nargs="*", metavar="IMAGE", help="real images to predict on")
    q.add_argument("--model", help="model file or shipped name (default: shipped --scenario)")
    q.add_argument("--scenario", default="scenario3",
                   choices=SCENARIO_NAMES)
    q.add_argument("--synthetic", type=Path, help="synthetic dataset (HDF5) to show samples of")
    q.add_argument("--index", type=_index_list, default=[0],
                   help="comma-separated sample indices of --synthetic (default 0)")
    q.add_argument("--crop", type=non_negative_int, nargs=4, metavar=("ROW", "COL", "H", "W"),
                   help="show only this crop of every real image (ROW, COL >= 0; H, W >= 1; "
                        "inside the image)")
    q.add_argument("--mpp", type=pixel_size, help="pixel size of the real images (µm/px)")
    q.add_argument("-o", "--out", required=True, type=Path, help="output PNG")
    return p


def _model_file(model_arg, scenario):
    """The file a ``--model`` argument (or the shipped model of ``scenario``) reads."""
    from vnumba.io.models import SHIPPED, shipped_model_path
    name = model_arg if model_arg is not None else scenario
    if Path(name).exists():
        return Path(name)
    return shipped_model_path(name) if name in SHIPPED else None


def _panels_cli(args) -> int:
    from vnumba.io.images import read_image
    from vnumba.io.outputs import check_outputs

    inputs = {f"IMAGE {im}": im for im in args.images}
    inputs["--model"] = _model_file(args.model, args.scenario)
    inputs["--synthetic"] = args.synthetic
    check_outputs(inputs, {"--out": args.out})
    if not args.images and args.synthetic is None:
        print("error: give --synthetic and/or IMAGE files", file=sys.stderr)
        return 2
    model = load_model_arg(args.model, args.scenario)
    samples, names = [], []
    if args.synthetic is not None:
        from vnumba.io.dataset import SyntheticDataset
        with SyntheticDataset(args.synthetic) as ds:
            bad = [i for i in args.index if i >= len(ds)]
            if bad:
                raise ValueError(f"--index {bad[0]}: --synthetic {args.synthetic} has {len(ds)} "
                                 f"samples (indices 0..{len(ds) - 1})")
            for i in args.index:
                u0, gu, gm = ds.read(i)
                u, m = model.apply(u0[None])
                m = np.asarray(m)[0]
                if m.ndim == 3:   # a multi-class model's maps: the nucleus probability
                    m = m.max(axis=0)
                samples.append(dict(input=u0, target_image=gu, target_mask=gm,
                                    reconstruction=np.asarray(u)[0], mask=m))
                names.append(f"synthetic #{i}")
    for path in args.images:
        img = read_image(path)
        arr = img.array
        if args.crop is not None:
            r, c, h, w = args.crop
            if r < 0 or c < 0 or r + h > arr.shape[0] or c + w > arr.shape[1]:
                raise ValueError(f"{path}: crop {args.crop} outside the {arr.shape[0]}x"
                                 f"{arr.shape[1]} image")
            arr = arr[r:r + h, c:c + w]
        pred = predict_image(model, type(img)(arr, img.mpp, img.path), mpp=args.mpp)
        samples.append(dict(input=pred.image, reconstruction=pred.reconstruction,
                            mask=pred.mask))
        names.append(img.name)
    plot_panels(samples, args.out, row_labels=names)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


@interruptible
def main(argv=None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "crop", None) is not None and min(args.crop[2:]) < 1:
        parser.error(f"argument --crop: H and W must be >= 1, got {args.crop[2]} {args.crop[3]}")
    try:
        if args.cmd == "curves":
            from vnumba.io.outputs import check_outputs
            check_outputs({f"LOG {p}": p for p in args.logs}, {"--out": args.out})
            plot_training_curves(args.logs, args.out, labels=args.labels, smooth=args.smooth)
            print(f"wrote {args.out}", file=sys.stderr)
            return 0
        return _panels_cli(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
