"""``python -m vnumba.train DATA.h5``: train a coupled variational network (or the U-Net
baseline) on a synthetic dataset (app layer over :mod:`vnumba.training.trainer`).

Usage::

    python -m vnumba.train DATA.h5 [--iters 1500] [--batch 8] [--lr 1e-4] [--crop 96]
        [--out model.h5] [--checkpoint-every 25] [--resume] [--device cpu|cuda]
"""
from __future__ import annotations

import sys

from vnumba.cli import ArgumentParser, check_environment, interrupted_status, interrupted_word, terminate_as_interrupt
from vnumba.ops.memory import keep_freed_memory
from vnumba.training.trainer import ADAM_EPS, TrainOptions, train
from vnumba.vn.backend import BackendUnavailable


def build_parser():
    p = ArgumentParser(
        prog="python -m vnumba.train",
        description="Train a coupled variational network on a synthetic HDF5 dataset "
                    "(datasets u0, gu, gm; see README).")
    p.add_argument("data", help="training dataset (HDF5, written by `python -m synth generate`)")
    p.add_argument("--arch", choices=("vn", "unet"), default="vn",
                   help="vn: coupled variational network (default); unet: the article's U-Net baseline")
    p.add_argument("--steps", type=int, default=10, help="unrolled steps N_t (default 10)")
    p.add_argument("--iters", type=int, default=1500, help="Adam iterations (default 1500)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam step size (default 1e-4; the article uses 5e-5 for scenario 3 and the U-Net)")
    p.add_argument("--adam-eps", type=float, default=ADAM_EPS,
                   help=f"Adam's eps (default {ADAM_EPS:g}: the loss is a mean over pixels, so "
                        "gradients are ~1e-8 and the usual 1e-8 would damp Adam's steps)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant step size, or a cosine decay from --lr to --lr/20 over --iters")
    p.add_argument("--crop", type=int, default=None,
                   help="train on random square crops of this size (default: whole images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batch draws")
    p.add_argument("--out", default="model.h5", help="trained model file (default model.h5)")
    p.add_argument("--log", default=None, help="CSV log (default: OUT with suffix .csv)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUT with suffix .ckpt.h5)")
    p.add_argument("--checkpoint-every", type=int, default=25, help="iterations between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if one exists")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="compute backend")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--nf-u", type=int, default=20, help="image features (default 20)")
    p.add_argument("--nf-m", type=int, default=4, help="mask features (default 4)")
    p.add_argument("--ks-u", type=int, default=11, help="image kernel size (default 11)")
    p.add_argument("--ks-m", type=int, default=5, help="mask kernel size (default 5)")
    p.add_argument("--ks", type=int, default=5, help="coupling kernel size (default 5)")
    p.add_argument("--zero-mean-u", choices=("auto", "on", "off"), default="auto",
                   help="zero-mean constraint on K^u (auto: off for scenario 1, as the article)")
    p.add_argument("--unet-width", type=int, default=32, help="U-Net feature channels (default 32)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from a trained variational network (a file or a shipped name, e.g. "
                        "scenario3): same architecture; mask channels matched by class name")
    p.add_argument("--scheduler", metavar="SPEC", default=None,
                   help="data-parallel training: local:N (a Dask LocalCluster of N worker "
                        "processes) or a Dask scheduler address; each image of a batch is a task "
                        "that reads its crop from the dataset's path; the model equals in-process "
                        "training (docs/distributed.md)")
    p.add_argument("--quiet", action="store_true", help="print a progress line every 10 iterations only")
    return p


def main(argv=None):
    check_environment()
    terminate_as_interrupt()
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # a training process reuses its arrays' pages (vnumba.ops.memory)
    from vnumba.executor import get_executor
    opts = vars(args)
    scheduler = opts.pop("scheduler")
    try:
        if scheduler and (args.arch != "vn" or args.device != "cpu"):
            raise ValueError("--scheduler trains the variational network on CPU workers "
                             "(--arch vn --device cpu)")
        with get_executor(scheduler) as executor:
            if scheduler and not args.quiet:
                print(f"gradients computed on {executor.description}", flush=True)
            train(TrainOptions(**opts), executor=executor)
    except (OSError, ValueError) as e:  # OSError: unreadable input, read-only folder, full disk
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}; training stopped, no model written (the last checkpoint is kept; "
              f"lower --lr?)", file=sys.stderr)
        return 2
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:
        print(f"{interrupted_word(e)}; continue with --resume from the last checkpoint",
              file=sys.stderr)
        return interrupted_status(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
