"""Gradient scale at initialisation against Adam's eps (how ``vnumba.train.ADAM_EPS`` was chosen).

Usage::

    python bench/grad_scale.py DATA.h5 [--crop 128] [--batch 4] [--steps 10] [--seed 0]

The loss (3) is divided by batch size and pixel count, so its gradients are small.  Adam's
update is ``lr · m̂ / (sqrt(v̂) + eps)``: it is the article's scale-free update only while
``eps ≪ sqrt(v̂) ≈ |g|``.  This prints, per parameter array, the RMS and quantiles of ``|g|``
of one batch at the initial parameters, and the factor ``|g| / (|g| + eps)`` by which eps shrinks
a median-size step, for the customary ``eps = 1e-8`` and for the trainer's default.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vnumba.io.dataset import SyntheticDataset, batch_plan  # noqa: E402
from vnumba.training.trainer import ADAM_EPS  # noqa: E402
from vnumba.vn.config import ModelConfig  # noqa: E402
from vnumba.vn.model import init_params, loss_and_grad  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ds = SyntheticDataset(a.data)
    plan = batch_plan(a.seed, 0, ds.n, a.batch, ds.height, ds.width, a.crop)
    u0, gu, gm = ds.batch(plan, np.float32)
    cfg = ModelConfig(n_steps=a.steps, n_channels=ds.channels)
    params = init_params(cfg, np.random.default_rng(np.random.SeedSequence(a.seed, spawn_key=(0,))))
    loss, grads = loss_and_grad(params, cfg, u0, gu, gm)[:2]
    print(f"loss {loss:.6g} on {a.batch} crops of {a.crop} px, {a.steps} steps ({a.data})")
    print(f"{'param':6s} {'rms |g|':>10s} {'p10':>10s} {'median':>10s} {'p90':>10s} "
          f"{'step@1e-8':>10s} {f'step@{ADAM_EPS:g}':>11s}")
    for k, g in grads.items():
        x = np.abs(np.asarray(g, np.float64).ravel())
        nz = x[x > 0]  # RBF weights far from every activation get no gradient at all
        med = float(np.median(nz)) if nz.size else 0.0
        q10, q90 = (np.quantile(nz, [0.1, 0.9]) if nz.size else (0.0, 0.0))
        f8 = med / (med + 1e-8) if med else float("nan")
        fd = med / (med + ADAM_EPS) if med else float("nan")
        print(f"{k:6s} {np.sqrt(np.mean(x ** 2)):10.3e} {q10:10.3e} {med:10.3e} {q90:10.3e} "
              f"{f8:10.3f} {fd:11.4f}")
    print("step@eps: fraction of the scale-free Adam step a median-size gradient gets "
          "(1 = unaffected by eps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
