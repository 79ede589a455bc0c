"""Shared helpers of the prediction / evaluation / figure tests (not a test module).

* :class:`FakeLocalModel`: a stand-in network whose output at a pixel depends on exactly the
  inputs within ``receptive_radius`` (repeated asymmetric local averaging with symmetric
  borders, like the real network's convolutions).
* :func:`tiny_model`: a real, very small coupled variational network (untrained).
* :func:`puma_crop`: writes a small crop of the real PUMA image and its labels to a temporary
  folder (never into the repository).
"""
from pathlib import Path

import numpy as np
import pytest

PUMA = "he_melanoma_puma/puma_metastatic_roi094_top"


class FakeLocalModel:
    """``apply(u0)``: ``passes`` times a (2r+1)^2 weighted average with symmetric padding and
    a contrast-raising smoothstep; mask = 1 - channel mean (dark nuclei -> high).  Every output
    pixel is a fixed sequence of floating point operations on its neighbourhood, so a correct
    tiling reproduces it bit for bit."""

    arch = "fake"

    def __init__(self, r=2, passes=3, channels=3, meta=None):
        self.r, self.passes = r, passes
        rng = np.random.default_rng(7)
        w = rng.random((2 * r + 1, 2 * r + 1)) + 0.1   # asymmetric on purpose
        self.w = (w / w.sum()).astype(np.float32)
        self.meta = {"channels": channels, "mpp": None, "scenario": "scenario3"}
        self.meta.update(meta or {})
        self.config = None
        self.calls = []

    @property
    def receptive_radius(self):
        return self.r * self.passes

    def apply(self, u0):
        assert u0.dtype == np.float32 and u0.flags.c_contiguous and u0.ndim == 4
        self.calls.append(u0.shape)
        r = self.r
        x = u0
        N, C, H, W = x.shape
        for _ in range(self.passes):
            xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="symmetric")
            acc = np.zeros_like(x)
            for i in range(2 * r + 1):
                for j in range(2 * r + 1):
                    acc += self.w[i, j] * xp[:, :, i:i + H, j:j + W]
            acc = np.clip(acc, 0.0, 1.0)
            x = acc * acc * (np.float32(3.0) - np.float32(2.0) * acc)
        return x, np.ascontiguousarray(np.float32(1.0) - x.mean(axis=1))


def tiny_model(scenario="scenario3", mpp=None, seed=0, **meta):
    """A real ``vnumba.io.models.Model`` with a tiny architecture (receptive radius 12 px)."""
    from vnumba.io.models import Model
    from vnumba.vn.config import ModelConfig
    from vnumba.vn.model import init_params

    cfg = ModelConfig(n_steps=2, nf_u=4, nf_m=2, ks_u=5, ks_m=3, ks=3, n_w=11)
    params = init_params(cfg, np.random.default_rng(seed))
    m = {"scenario": scenario, "mpp": mpp, "channels": 3}
    m.update(meta)
    return Model(arch="vn", config=cfg, params=params, meta=m)


def save_tiny_model(path, **kw):
    from vnumba.io.models import save_model
    return save_model(path, tiny_model(**kw))


def puma_crop(real_dir: Path, dest: Path, rows=slice(0, 128), cols=slice(0, 192), name="crop",
              keep_classes=True):
    """Write ``dest/NAME.png`` and ``dest/NAME_labels.npz`` cut from the PUMA tile."""
    import imageio.v3 as iio

    src = Path(real_dir) / (PUMA + ".png")
    lab = Path(real_dir) / (PUMA + "_labels.npz")
    if not src.is_file() or not lab.is_file():
        pytest.skip(f"PUMA image not found under {real_dir}")
    dest.mkdir(parents=True, exist_ok=True)
    img = iio.imread(src)[rows, cols]
    iio.imwrite(dest / f"{name}.png", img)
    with np.load(lab) as z:
        arrays = {k: z[k][rows, cols] for k in z.files if keep_classes or k == "instances"}
    np.savez_compressed(dest / f"{name}_labels.npz", **arrays)
    return dest / f"{name}.png", img, arrays


class FakePoolModel(FakeLocalModel):
    """Like :class:`FakeLocalModel` but through a 2×2 mean-pooling, a local average at half
    resolution and a nearest upsampling, so the output depends on where the pooling grid
    lies: a tiling must align its windows to ``config.size_multiple`` (2)."""

    def __init__(self, size_multiple=2, **kw):
        super().__init__(**kw)
        self.config = type("Cfg", (), {"size_multiple": size_multiple})()

    @property
    def receptive_radius(self):
        return 2 * self.r * self.passes + 2

    def apply(self, u0):
        N, C, H, W = u0.shape
        ph, pw = H % 2, W % 2   # own padding so that any size is accepted
        x = np.pad(u0, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="symmetric")
        h = 0.25 * (x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2] + x[:, :, 0::2, 1::2]
                    + x[:, :, 1::2, 1::2])
        h, _ = super().apply(np.ascontiguousarray(h, dtype=np.float32))
        up = np.repeat(np.repeat(h, 2, axis=2), 2, axis=3)[:, :, :H, :W]
        u = np.ascontiguousarray(0.5 * (u0 + up), dtype=np.float32)
        return u, np.ascontiguousarray(np.float32(1.0) - u.mean(axis=1))
