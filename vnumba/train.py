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
from vnumba.training.trainer import TrainingConfigError, TrainOptions, option_defaults, train
from vnumba.vn.backend import BACKENDS, BackendUnavailable
from vnumba.vn.networks import NETWORKS, get_network


def option_flag(field: str) -> str:
    """The command-line option of a :class:`TrainOptions` field (``adam_eps`` -> ``--adam-eps``)."""
    return "--" + field.replace("_", "-")


class OptionRefused(SystemExit):
    """Exit status 2 for a refused option, whose one line :func:`main` has printed; the line is
    also the exception's text, so that a caller of :func:`main` sees which option it was."""

    def __init__(self, line: str):
        super().__init__(2)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _short(x: float) -> str:
    """``1e-4`` for 0.0001 (a step size in the help)."""
    m, e = f"{x:.0e}".split("e")
    return f"{m}e{int(e)}"


def build_parser():
    d = option_defaults()  # one set of defaults: TrainOptions's
    lr_vn, lr_unet = get_network("vn").default_lr, get_network("unet").default_lr
    p = ArgumentParser(
        prog="python -m vnumba.train",
        description="Train a coupled variational network on a synthetic HDF5 dataset "
                    "(datasets u0, gu, gm; see README).")
    p.add_argument("data", help="training dataset (HDF5, written by `python -m synth generate`)")
    p.add_argument("--arch", choices=NETWORKS, default=d["arch"],
                   help="vn: coupled variational network (default); unet: the article's U-Net baseline")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"unrolled steps N_t (default {d['steps']})")
    p.add_argument("--iters", type=int, default=d["iters"], help=f"Adam iterations (default {d['iters']})")
    p.add_argument("--batch", type=int, default=d["batch"], help=f"batch size (default {d['batch']})")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help=f"Adam step size (default {_short(lr_vn)}; the article uses {_short(lr_unet)} for "
                        f"scenario 3 and the U-Net)")
    p.add_argument("--adam-eps", type=float, default=d["adam_eps"],
                   help=f"Adam's eps (default {d['adam_eps']:g}: the loss is a mean over pixels, so "
                        "gradients are ~1e-8 and the usual 1e-8 would damp Adam's steps)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d["lr_schedule"],
                   help="constant step size, or a cosine decay from --lr to --lr/20 over --iters")
    p.add_argument("--crop", type=int, default=d["crop"],
                   help="train on random square crops of this size (default: whole images)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed of the initialisation and batch draws")
    p.add_argument("--out", default=d["out"], help=f"trained model file (default {d['out']})")
    p.add_argument("--log", default=d["log"], help="CSV log (default: OUT with suffix .csv)")
    p.add_argument("--checkpoint", default=d["checkpoint"],
                   help="checkpoint file (default: OUT with suffix .ckpt.h5)")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"],
                   help="iterations between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if one exists")
    p.add_argument("--device", choices=BACKENDS, default=d["device"], help="compute backend")
    p.add_argument("--dtype", choices=("float32", "float64"), default=d["dtype"])
    p.add_argument("--nf-u", type=int, default=d["nf_u"], help=f"image features (default {d['nf_u']})")
    p.add_argument("--nf-m", type=int, default=d["nf_m"], help=f"mask features (default {d['nf_m']})")
    p.add_argument("--ks-u", type=int, default=d["ks_u"], help=f"image kernel size (default {d['ks_u']})")
    p.add_argument("--ks-m", type=int, default=d["ks_m"], help=f"mask kernel size (default {d['ks_m']})")
    p.add_argument("--ks", type=int, default=d["ks"], help=f"coupling kernel size (default {d['ks']})")
    p.add_argument("--zero-mean-u", choices=("auto", "on", "off"), default=d["zero_mean_u"],
                   help="zero-mean constraint on K^u (auto: off for scenario 1, as the article)")
    p.add_argument("--unet-width", type=int, default=d["unet_width"],
                   help=f"U-Net feature channels (default {d['unet_width']})")
    p.add_argument("--init", default=d["init"], metavar="MODEL",
                   help="start from a trained variational network (a file or a shipped name, e.g. "
                        "scenario3): same architecture; mask channels matched by class name")
    p.add_argument("--class-weights", type=float, nargs="+", default=d["class_weights"], metavar="W",
                   help="weight of each class's mask term in the loss, one per class of the "
                        "dataset in its order (e.g. 1 1 5 for tumour, immune, other: a rare class "
                        "gets a larger share of the gradient); default: the article's loss, all 1")
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
    if opts["class_weights"] is not None:
        opts["class_weights"] = tuple(opts["class_weights"])
    try:
        if scheduler and (args.arch != "vn" or args.device != "cpu"):
            raise ValueError("--scheduler trains the variational network on CPU workers "
                             "(--arch vn --device cpu)")
        with get_executor(scheduler) as executor:
            if scheduler and not args.quiet:
                print(f"gradients computed on {executor.description}", flush=True)
            train(TrainOptions(**opts), executor=executor)
    except TrainingConfigError as e:
        line = f"error: {e.message(option_flag)}"
        print(line, file=sys.stderr)
        raise OptionRefused(line) from None
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
