"""Train a network of :mod:`vnumba.vn.networks` (the coupled variational network or the U-Net
baseline) on a synthetic dataset: ``train(TrainOptions(data=..., ...))``; the command line is
``python -m vnumba.train`` (:mod:`vnumba.train`).

Batches stream from the HDF5 file (one sample read at a time).  Every iteration prints the
loss, the mask accuracy at threshold 1/2, the PSNR of ``u_T``, iterations per second and
the ETA, and appends the same figures to the training log (:mod:`vnumba.io.trainlog`).  A
checkpoint (parameters, Adam moments, iteration, elapsed time) is written atomically every
``checkpoint_every`` iterations; ``resume`` continues from it and reproduces an
uninterrupted run exactly, because the batch of iteration ``i`` depends only on
``(seed, i)``.  Options that do not fit raise :class:`TrainingConfigError`, naming the
option by its field.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vnumba.io.dataset import SyntheticDataset, batch_plan
from vnumba.io.models import Model, check_meta, read_model_group, save_model, write_model_group
from vnumba.io.outputs import OutputLock, atomic_h5, check_outputs, remove_stale_temporaries
from vnumba.io.trainlog import LOG_COLUMNS, read_log_rows, write_log
from vnumba.ops.loss import check_mask_weights
from vnumba.vn.config import ModelConfig
from vnumba.vn.networks import get_network

__all__ = ["TrainOptions", "train", "lr_at", "dataset_identity", "ADAM_EPS", "LOG_COLUMNS",
           "TrainingConfigError", "ResumeError", "OPTION_FIELDS", "option_defaults"]


class _Names(dict):
    """Every key missing: its name as ``namer`` words it (for ``str.format_map``)."""

    def __init__(self, namer):
        super().__init__()
        self.namer = namer

    def __missing__(self, key):
        return self.namer(key)


class TrainingConfigError(ValueError):
    """A training option that is out of range or does not fit the dataset, the machine or
    the checkpoint.

    The message names options by their :class:`TrainOptions` field in braces, so that each
    caller can word them: ``str(e)`` writes the field names (``iters must be >= 0, got -1``),
    :meth:`message` any other names (the command line's ``--iters``).

    Attributes
    ----------
    field : str
        The :class:`TrainOptions` field at fault.
    value
        Its offending value.
    template : str
        The message, ``{field}`` placeholders for option names, other braces doubled.
    """

    def __init__(self, field: str, value, template: str):
        self.field, self.value, self.template = field, value, template
        super().__init__(self.message())

    def message(self, name=str) -> str:
        """The message, every option named by ``name(field)``."""
        return self.template.format_map(_Names(name))


class ResumeError(TrainingConfigError):
    """``resume``: the checkpoint or log found belongs to another run or is incomplete."""


def _esc(x) -> str:
    """``x`` as text inside a :class:`TrainingConfigError` template."""
    return str(x).replace("{", "{{").replace("}", "}}")


#: Adam's eps.  The loss (3) is divided by batch size and pixel count, which puts the
#: gradients of the filters, RBF weights and λ at 1e-9 ... 1e-7 at initialisation
#: (``bench/grad_scale.py``); with the customary eps = 1e-8 the denominator
#: ``sqrt(v) + eps`` would then be dominated by eps, turning Adam into a damped SGD step.
#: 1e-12 keeps eps three orders below the smallest typical gradient, i.e. Adam's
#: scale-free update as in the article.
ADAM_EPS = 1e-12


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run needs (the fields of ``python -m vnumba.train``'s options;
    these defaults are the command line's).

    ``data`` is the HDF5 dataset (:mod:`vnumba.io.dataset`); ``arch`` a network of
    :mod:`vnumba.vn.networks`; ``lr`` None means the network's default; ``crop`` None trains
    on whole images; ``log`` and ``checkpoint`` None put them next to ``out``.
    """

    data: str
    arch: str = "vn"
    steps: int = 10
    iters: int = 1500
    batch: int = 8
    lr: float | None = None
    adam_eps: float = ADAM_EPS
    lr_schedule: str = "constant"
    crop: int | None = None
    seed: int = 0
    out: str = "model.h5"
    log: str | None = None
    checkpoint: str | None = None
    checkpoint_every: int = 25
    resume: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    nf_u: int = 20
    nf_m: int = 4
    ks_u: int = 11
    ks_m: int = 5
    ks: int = 5
    zero_mean_u: str = "auto"
    unet_width: int = 32
    quiet: bool = False
    init: str | None = None
    class_weights: tuple | None = None


#: The network config field each option of :class:`TrainOptions` sets, where the network's
#: config has it (:func:`_model_config`).
OPTION_FIELDS = {"steps": "n_steps", "nf_u": "nf_u", "nf_m": "nf_m", "ks_u": "ks_u",
                 "ks_m": "ks_m", "ks": "ks", "unet_width": "width"}


def option_defaults() -> dict:
    """The default of every :class:`TrainOptions` field that has one."""
    return {f.name: f.default for f in dataclasses.fields(TrainOptions)
            if f.default is not dataclasses.MISSING}


def lr_at(lr: float, it: int, iters: int, schedule: str) -> float:
    """Step size of iteration ``it`` (0-based): ``constant`` or ``cosine`` from ``lr`` down
    to ``lr / 20`` at the last iteration."""
    if schedule == "constant" or iters <= 1:
        return lr
    lo = lr / 20.0
    return lo + 0.5 * (lr - lo) * (1.0 + np.cos(np.pi * it / (iters - 1)))


#: Largest parameter magnitude a training may reach.  Trained filters, RBF weights and λ are
#: of order 1e-3 ... 1e2; a value beyond this means the step size has blown the run up (the
#: projections keep the loss finite, so the loss alone does not show it).
WEIGHT_LIMIT = 1e6


def _check_weights(params, done_it: int) -> None:
    for k, v in params.items():
        v = np.asarray(v)
        if not np.all(np.isfinite(v)):
            raise FloatingPointError(f"parameter {k} became non-finite at iteration {done_it}")
        m = float(np.abs(v).max(initial=0.0))
        if m > WEIGHT_LIMIT:
            raise FloatingPointError(f"parameter {k} exploded at iteration {done_it} "
                                     f"(max |{k}| = {m:.3g} > {WEIGHT_LIMIT:g})")


def _model_config(args, ds):
    """The network's config from the options that it has a field for (:data:`OPTION_FIELDS`)
    and the dataset's channels."""
    cls = get_network(args.arch).config
    have = {f.name for f in dataclasses.fields(cls)}
    # One mask channel per class of the dataset's target (the article's single mask: 1).
    kw = {"n_channels": ds.channels, "n_mask": ds.mask_channels}
    kw.update({name: getattr(args, opt) for opt, name in OPTION_FIELDS.items() if name in have})
    if "zero_mean_u" in have:
        from vnumba.scenarios import get as scenario_facts

        # auto: the scenario's constraint flag (the article drops zero mean for fluorescence).
        kw["zero_mean_u"] = {"on": True, "off": False}.get(
            args.zero_mean_u, scenario_facts(ds.attrs.get("scenario")).zero_mean_u)
    return cls(**kw)


def _meta(ds, args, lr):
    meta = {"channels": ds.channels, "dataset": str(ds.path)}
    if ds.mask_classes:
        meta["mask_classes"] = list(ds.mask_classes)
    for k in ("scenario", "mpp", "seed", "reinhard_mean", "reinhard_std"):
        if k in ds.attrs:
            v = ds.attrs[k]
            meta[k if k != "seed" else "dataset_seed"] = v.tolist() if isinstance(v, np.ndarray) else v
    try:
        norm = _script_normalization(ds.attrs.get("script"))
    except ValueError as e:
        raise ValueError(f"{ds.path}: {e}") from None
    if norm is not None and "reinhard_mean" not in meta:
        meta["reinhard_mean"], meta["reinhard_std"] = norm
    meta["train"] = {"iters": args.iters, "batch": args.batch, "lr": lr, "crop": args.crop,
                     "lr_schedule": args.lr_schedule, "adam_eps": args.adam_eps,
                     "seed": args.seed, "device": args.device, "dtype": args.dtype}
    if args.class_weights is not None:
        meta["train"]["class_weights"] = [float(w) for w in args.class_weights]
    if args.init:
        meta["train"]["init"] = str(args.init)
    return meta


def _script_normalization(text):
    """Reinhard target statistics from the scenario script stored with the dataset, if any."""
    if not text:
        return None
    import tomllib
    try:
        norm = tomllib.loads(text).get("normalization", {})
    except tomllib.TOMLDecodeError:
        return None
    except RecursionError:  # nesting thousands deep: not a script synth wrote
        raise ValueError("the dataset's script attribute is nested too deeply to be a "
                         "scenario script") from None
    if not isinstance(norm, dict):
        return None
    if norm.get("method", "reinhard") != "reinhard" or "target_mean" not in norm:
        return None
    out = []
    for key in ("target_mean", "target_std"):
        v = norm.get(key)
        if (not isinstance(v, list) or len(v) != 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                or not np.all(np.isfinite(v))):
            raise ValueError(f"the dataset's script attribute: [normalization] {key} must be "
                             f"three finite numbers, got {v!r}")
        out.append([float(x) for x in v])
    if min(out[1]) <= 0:
        raise ValueError(f"the dataset's script attribute: [normalization] target_std must be "
                         f"positive, got {out[1]}")
    return out[0], out[1]


def _fmt_time(s):
    s = int(max(s, 0))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def dataset_identity(ds) -> str:
    """SHA-256 of what makes a dataset the same data wherever it lies: its sample count and
    shapes and its attrs (scenario, seed, script text, generator version, mpp, ...)."""
    import hashlib

    ident = {"n": ds.n, "shape": [ds.channels, ds.height, ds.width]}
    for k, v in sorted(ds.attrs.items()):
        ident[k] = v.tolist() if isinstance(v, np.ndarray) else (v.item() if hasattr(v, "item") else v)
    # The stored arrays themselves: a file whose arrays were replaced, attributes unchanged,
    # is other data, and a resumed run must not continue on it.
    ident["content"] = ds.content_hash()
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _run_mismatch(key: str, run: dict) -> list:
    """What differs between a checkpoint's run key and this run (empty: the same run)."""
    try:
        old = json.loads(key)
    except ValueError:
        return ["unreadable run key"]
    diffs = []
    for k, v in run.items():
        if k == "data" and "dataset_id" in old:
            continue  # the dataset's identity is known: it may have been moved
        if k == "dataset_id" and k not in old:
            continue  # checkpoint written before identities were recorded: its path decides
        if old.get(k) != v:
            what = {"data": "dataset path", "dataset_id": "dataset content", "cfg": "model config"}
            diffs.append(f"{what.get(k, k)} differs" + (f": {old.get(k)} vs {v}"
                                                        if k in ("seed", "batch", "crop", "lr", "dtype",
                                                                 "eps", "schedule", "iters", "arch")
                                                        else ""))
    return diffs


def _write_checkpoint(path, model, opt_state, iteration, elapsed, run_key, rows=None):
    def write(f):
        write_model_group(f, model)
        g = f.create_group("optimizer")
        for k, v in opt_state.items():
            g.create_dataset(k, data=np.asarray(v))
        f.attrs["iteration"] = iteration
        f.attrs["elapsed"] = elapsed
        f.attrs["run_key"] = run_key
        if rows is not None:
            # A copy of the log up to this iteration: a deleted or truncated log is rebuilt.
            f.attrs["log_csv"] = "\n".join(",".join(r) for r in rows)
    atomic_h5(path, write)


def _check_optimizer_state(path, params: dict, opt: dict) -> None:
    """Adam's state must match the parameters it belongs to (names, shapes, step count)."""
    if "t" not in opt or np.asarray(opt["t"]).shape != () or int(opt["t"]) < 0:
        raise ValueError(f"{path}: optimizer state has no valid step count 't'")
    for kind in ("m", "v"):
        names = {k[2:] for k in opt if k.startswith(kind + "/")}
        if names and names != set(params):
            raise ValueError(f"{path}: optimizer moments {kind!r} cover {sorted(names)}, the "
                             f"parameters are {sorted(params)}")
        for k in names:
            a, want = np.asarray(opt[f"{kind}/{k}"]), np.shape(params[k])
            if a.shape != want:
                raise ValueError(f"{path}: optimizer moment '{kind}/{k}' has shape {a.shape}, "
                                 f"the parameter {k!r} {want}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{path}: optimizer moment '{kind}/{k}' is not finite")


def _read_checkpoint(path):
    """Model, optimizer state, iteration, elapsed seconds, run key and log rows (or None)."""
    try:
        with h5py.File(path, "r") as f:
            model = read_model_group(f, str(path))
            if "optimizer" not in f or "iteration" not in f.attrs or "run_key" not in f.attrs:
                missing = [k for k, ok in (("optimizer", "optimizer" in f),
                                           ("iteration", "iteration" in f.attrs),
                                           ("run_key", "run_key" in f.attrs)) if not ok]
                raise ValueError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
            opt = {}
            f["optimizer"].visititems(
                lambda k, d: opt.__setitem__(k, np.array(d)) if isinstance(d, h5py.Dataset) else None)
            _check_optimizer_state(path, model.params, opt)
            rows = None
            if "log_csv" in f.attrs:
                text = f.attrs["log_csv"]
                text = text.decode() if isinstance(text, bytes) else str(text)
                rows = [line.split(",") for line in text.split("\n") if line]
            return (model, opt, int(f.attrs["iteration"]), float(f.attrs.get("elapsed", 0.0)),
                    str(f.attrs["run_key"]), rows)
    except OSError as e:
        msg = " ".join(str(e).split())  # h5py's messages span lines
        raise ValueError(f"{path}: cannot be read as a checkpoint (truncated or foreign file): {msg}") from None


def train(args: TrainOptions, executor=None) -> Model:
    """Run training as configured by ``args``; return the model.

    Parameters
    ----------
    args : TrainOptions
        (An ``argparse.Namespace`` with the same attributes works too.)
    executor : vnumba.executor.Executor, optional
        Where each iteration's gradients are computed (``--scheduler``; data-parallel,
        :mod:`vnumba.training.parallel`); None or in-process: here.  The model does not
        depend on it.

    Raises
    ------
    TrainingConfigError
        An option out of range, or one that does not fit the dataset, the machine's memory
        or (:class:`ResumeError`) the checkpoint to resume.
    ValueError, OSError
        An unreadable or invalid dataset, model or checkpoint; an output that cannot be
        written.
    FloatingPointError
        The training diverged.
    """
    for name, v, lo in (("iters", args.iters, 0), ("batch", args.batch, 1),
                        ("checkpoint_every", args.checkpoint_every, 1), ("steps", args.steps, 1),
                        ("seed", args.seed, 0), ("crop", args.crop, 1)):
        if v is not None and v < lo:
            raise TrainingConfigError(name, v, f"{{{name}}} must be >= {lo}, got {_esc(v)}")
    if args.lr is not None and not (np.isfinite(args.lr) and args.lr > 0):
        raise TrainingConfigError("lr", args.lr, f"{{lr}} must be a positive number, got {_esc(args.lr)}")
    if not (np.isfinite(args.adam_eps) and args.adam_eps > 0):
        raise TrainingConfigError("adam_eps", args.adam_eps,
                                  f"{{adam_eps}} must be a positive number, got {_esc(args.adam_eps)}")
    out = Path(args.out)
    log_path = Path(args.log) if args.log else out.with_suffix(".csv")
    ckpt_path = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt.h5")
    dtype = np.dtype(args.dtype)
    # Before anything is read or written: no output may replace the dataset or another output.
    inputs = {"dataset": args.data}
    if args.init and Path(args.init).exists():
        inputs["--init"] = args.init
    check_outputs(inputs, {"--out": out, "--log": log_path,
                                           "--checkpoint": ckpt_path})
    for p in (out, log_path, ckpt_path):
        remove_stale_temporaries(p)
    # Every output locked, the log and the checkpoint included: two runs sharing a --log
    # would otherwise both finish and one run's log be lost.
    with OutputLock(out), OutputLock(log_path), OutputLock(ckpt_path):
        return _train_locked(args, out, log_path, ckpt_path, dtype, executor)


def estimate_memory(args, cfg, channels: int, height: int, width: int, dtype) -> int:
    """Rough bytes a training run needs, from the shapes alone (nothing is allocated).

    Parameters, their gradient and Adam's two moments (float64), plus the stored states of
    the unrolled network: per step and batch image, the image and mask, their filter
    responses and the coupling features, forward and backward.  Meant to refuse settings
    that cannot fit (``--steps 100000000``), not to predict the peak exactly.
    """
    itemsize = np.dtype(dtype).itemsize
    net = get_network(args.arch)
    n_params = sum(int(np.prod(s, dtype=np.float64)) for s in net.param_shapes(cfg).values())
    return int(n_params * (itemsize + 3 * 8)
               + 2.0 * args.batch * height * width * net.state_values(cfg, channels) * itemsize)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(args, cfg, ds, crop, dtype) -> None:
    h = crop or ds.height
    w = crop or ds.width
    need = estimate_memory(args, cfg, ds.channels, h, w, dtype)
    have = _physical_memory()
    if have and need > have:
        option = {name: opt for opt, name in OPTION_FIELDS.items()}
        sizes = [option[f] for f in get_network(args.arch).size_fields] + ["batch"]
        what = ", ".join(f"{{{o}}} {_esc(getattr(args, o))}" for o in sizes)
        raise TrainingConfigError(sizes[0], getattr(args, sizes[0]),
                                  f"this run would need about {need / 2**30:.3g} GiB ({what}, "
                                  f"{h}x{w} px); the machine has {have / 2**30:.3g} GiB")


#: Scale of the fresh mask filters of the class channels that a warm start adds (see
#: :func:`warm_start`): small beside the copied channels' filters, not zero (a zero filter
#: never moves its channel away from the clip at 0, so it would get no gradient).
NEW_CLASS_FILTER_SCALE = 0.1


def warm_start(params: dict, cfg, model, mask_classes) -> dict:
    """Start a variational network from a trained one's parameters (``--init``).

    Every parameter of ``model`` is copied; the mask filters ``K^m`` are matched by class
    name, so a one-channel model (whose class is its scenario's, e.g. scenario 3: tumour)
    seeds the tumour channel of a multi-class network, and the filters of the other classes
    keep their fresh initial values times :data:`NEW_CLASS_FILTER_SCALE`.

    Parameters
    ----------
    params : dict of ndarray
        Freshly initialised parameters of ``cfg`` (:func:`vnumba.vn.model.init_params`).
    cfg : ModelConfig
        The new network's; it must equal ``model.config`` except for ``n_mask``.
    model : vnumba.io.models.Model
        A trained variational network.
    mask_classes : sequence of str
        Class names of the new network's mask channels (``()`` for one channel).

    Returns
    -------
    dict of ndarray
        New parameters, projected onto the constraint sets.

    Raises
    ------
    TrainingConfigError
        (field ``init``) Another architecture, another configuration, or no class in common.
    """
    from vnumba.ops.projections import project_params
    from vnumba.scenarios import scenario_mask_class

    if not isinstance(model.config, ModelConfig):
        raise TrainingConfigError("init", model.arch, f"{{init}}: a {_esc(repr(model.arch))} model cannot "
                                                      f"start a variational network")
    old, new = model.config.to_dict(), cfg.to_dict()
    diff = [f"{k} {old.get(k)!r} vs {new[k]!r}" for k in new if k != "n_mask" and old.get(k) != new[k]]
    if diff:
        raise TrainingConfigError("init", model.config, f"{{init}}: the model's configuration differs "
                                                        f"from this run's ({_esc('; '.join(diff))})")
    old_classes = list(model.meta.get("mask_classes") or [scenario_mask_class(model.meta.get("scenario"))])
    new_classes = list(mask_classes) or list(old_classes)
    common = [c for c in new_classes if c in old_classes]
    if not common:
        raise TrainingConfigError("init", old_classes, f"{{init}}: the model's mask classes "
                                  f"{_esc(old_classes)} share none with the dataset's {_esc(new_classes)}")
    dt = params["K"].dtype
    out = {k: np.array(v, dtype=dt) for k, v in model.params.items() if k != "Km"}
    km = params["Km"] * dt.type(NEW_CLASS_FILTER_SCALE)
    for c, name in enumerate(new_classes):
        if name in old_classes:
            km[:, :, c] = model.params["Km"][:, :, old_classes.index(name)]
    out["Km"] = np.ascontiguousarray(km)
    project_params(out, cfg)
    return out


def _train_locked(args, out, log_path, ckpt_path, dtype, executor=None):
    from vnumba.vn.backend import get_backend
    from vnumba.vn.model import batch_metrics

    ds = SyntheticDataset(args.data)
    scenario = ds.attrs.get("scenario", "")
    net = get_network(args.arch)
    lr = args.lr if args.lr is not None else net.default_lr
    cfg = _model_config(args, ds)
    crop = args.crop
    if args.batch > ds.n:
        raise TrainingConfigError("batch", args.batch, f"{{batch}} {args.batch} is larger than the dataset "
                                                       f"{_esc(ds.path)} ({ds.n} samples)")
    if crop is not None and (crop > ds.height or crop > ds.width):
        raise TrainingConfigError("crop", crop, f"{{crop}} {crop} is larger than the images "
                                                f"({ds.height}x{ds.width})")
    _check_memory(args, cfg, ds, crop, dtype)
    try:
        weights = check_mask_weights(args.class_weights, getattr(cfg, "n_mask", 1))
    except ValueError as e:
        raise TrainingConfigError("class_weights", args.class_weights,
                                  f"{{class_weights}}: {_esc(e)} (the dataset {_esc(ds.path)} has "
                                  f"classes {_esc(list(ds.mask_classes) or ['one mask'])})") from None
    if weights is not None and args.device != "cpu":
        raise TrainingConfigError("class_weights", args.class_weights,
                                  "{class_weights} is implemented for --device cpu only")
    # The dataset's metadata is checked before any iteration runs, by the rules a model file
    # is loaded with: a model that could not be loaded afterwards is never trained.
    check_meta(_meta(ds, args, lr), f"{ds.path}: attributes")
    side = crop or min(ds.height, ds.width)
    multiple = int(getattr(cfg, "size_multiple", 1))
    if side % multiple:
        raise TrainingConfigError("crop", side, f"{net.title} needs image/crop sizes divisible by {multiple}")
    run = {"data": str(Path(args.data).resolve()), "dataset_id": dataset_identity(ds),
           "arch": args.arch, "cfg": cfg.to_dict(), "seed": args.seed, "batch": args.batch,
           "crop": crop, "lr": lr, "dtype": args.dtype, "eps": args.adam_eps,
           "schedule": args.lr_schedule,
           **({"iters": args.iters} if args.lr_schedule != "constant" else {}),
           **({"class_weights": list(weights)} if weights is not None else {}),
           **({"init": str(Path(args.init).resolve()) if Path(args.init).exists() else args.init}
              if args.init else {})}
    run_key = json.dumps(run, sort_keys=True)
    backend = get_backend(args.device)

    start_it, elapsed0, rows = 0, 0.0, []
    params = opt_state = None
    if args.resume and ckpt_path.exists():
        model, opt_state, start_it, elapsed0, key, ck_rows = _read_checkpoint(ckpt_path)
        diff = _run_mismatch(key, run)
        if diff:
            raise ResumeError("resume", str(ckpt_path), f"checkpoint {_esc(ckpt_path)} belongs to a "
                                                        f"different run ({_esc('; '.join(diff))})")
        if args.iters < start_it:
            raise ResumeError("iters", args.iters, f"{{iters}} {args.iters} is below the checkpoint's "
                                                   f"iteration {start_it} ({_esc(ckpt_path)}); give "
                                                   f"{{iters}} >= {start_it}")
        params = model.params
        rows = ck_rows if ck_rows is not None else read_log_rows(log_path, start_it)
        if len(rows) != start_it or [int(r[0]) for r in rows] != list(range(1, start_it + 1)):
            raise ResumeError("resume", str(log_path), f"log {_esc(log_path)} holds {len(rows)} of the "
                                                       f"checkpoint's {start_it} iterations and the "
                                                       f"checkpoint has no copy of it; restore the log "
                                                       f"or start afresh without {{resume}}")
        print(f"resuming from {ckpt_path} at iteration {start_it}", flush=True)
    elif args.resume:
        print(f"no checkpoint at {ckpt_path}; starting from scratch", flush=True)
    if params is None:
        rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(0,)))
        params = net.init_params(cfg, rng, dtype)
        if args.init:
            if not isinstance(cfg, ModelConfig):
                raise TrainingConfigError("init", args.init, "{init} starts a variational network "
                                                             "({arch} vn) only")
            from vnumba.io.models import load_model
            params = warm_start(params, cfg, load_model(args.init), ds.mask_classes)
            print(f"initialised from {args.init}", flush=True)
    trainer = backend.trainer(args.arch, cfg, params, lr, eps=args.adam_eps,
                              **({"mask_weights": weights} if weights is not None else {}))
    if opt_state is not None:
        trainer.load_optimizer_state(opt_state)
    # The log is only (re)written together with a checkpoint, so a run that fails before its
    # first one leaves the previous run's model, checkpoint and log as they were.

    meta = _meta(ds, args, lr)
    n_params = sum(v.size for v in params.values())
    print(f"training {args.arch} on {ds.path} ({ds.n} samples {ds.height}x{ds.width}, scenario "
          f"{scenario or '?'}): {n_params} parameters, {args.iters} iterations, batch {args.batch}, "
          f"crop {crop or 'none'}, lr {lr:g}, device {args.device}", flush=True)
    parallel = executor is not None and not executor.in_process
    if parallel:
        from vnumba.training.parallel import batch_on_executor
    t0 = time.perf_counter()
    last_ckpt = start_it
    for it in range(start_it, args.iters):
        plan = batch_plan(args.seed, it, ds.n, args.batch, ds.height, ds.width, crop)
        lr_it = lr_at(lr, it, args.iters, args.lr_schedule)
        trainer.lr = lr_it
        if parallel:
            # Workers read their crops and return gradients; the sum is the in-process one.
            loss, grads, met = batch_on_executor(executor, args.data, cfg, trainer.params(),
                                                 plan, dtype, weights)
            trainer.update(loss, grads)
        else:
            u0, gu, gm = ds.batch(plan, dtype)
            loss, u_T, m_T = trainer.step(u0, gu, gm)
            met = batch_metrics(u_T, m_T, gu, gm)
        _check_weights(trainer.params(), done_it=it + 1)
        elapsed = elapsed0 + time.perf_counter() - t0
        done = it + 1
        rows.append([str(done), f"{loss:.8g}", f"{met['accuracy']:.6f}", f"{met['psnr']:.4f}",
                     f"{elapsed:.2f}", f"{lr_it:g}"])
        rate = (done - start_it) / max(time.perf_counter() - t0, 1e-9)
        if not args.quiet or done % 10 == 0 or done == args.iters:
            print(f"iter {done:5d}/{args.iters}  loss {loss:.5g}  acc {100 * met['accuracy']:6.2f}%  "
                  f"psnr {met['psnr']:6.2f} dB  {rate:.3g} it/s  ETA {_fmt_time((args.iters - done) / rate)}",
                  flush=True)
        if done % args.checkpoint_every == 0 or done == args.iters:
            mdl = Model(args.arch, cfg, trainer.params(), dict(meta, iterations=done))
            # Checkpoint first: when it cannot be written (a full disk) the previous run's
            # log stays beside the previous checkpoint; a crash between the two leaves the
            # log behind the checkpoint, which a resume rebuilds from the checkpoint's copy.
            _write_checkpoint(ckpt_path, mdl, trainer.optimizer_state(), done, elapsed, run_key,
                              rows)
            write_log(log_path, rows)
            last_ckpt = done
    elapsed = elapsed0 + time.perf_counter() - t0
    meta.update(iterations=args.iters, train_seconds=round(elapsed, 2))
    model = Model(args.arch, cfg, {k: np.array(v) for k, v in trainer.params().items()}, meta)
    save_model(out, model)
    ds.close()
    print(f"saved {out} after {args.iters} iterations ({_fmt_time(elapsed)}); log {log_path}; "
          f"checkpoint {ckpt_path} (iteration {last_ckpt})", flush=True)
    return model
