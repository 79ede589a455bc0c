"""Model files: one HDF5 container for every architecture.

Layout (format ``vnumba-model``, version :data:`FORMAT_VERSION`)::

    /                 attrs: format, format_version, arch ("vn" | "unet"),
                             config (JSON of the architecture's config dataclass),
                             meta (JSON: scenario, mpp, reinhard_mean/std, training info)
    /params/NAME      one dataset per parameter array, stacked over steps for "vn"

Files are written atomically (:func:`vnumba.io.outputs.atomic_h5`: temporary file in the
same folder, then renamed into place), so a killed save never leaves a half-written model behind.
:func:`load_model` checks the format tag, the version, the config keys and every parameter's
shape, and names the file in each error.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from vnumba.io.images import MPP_RANGE
from vnumba.io.outputs import atomic_h5  # re-exported: the one atomic writer
from vnumba.vn.backend import run_network
from vnumba.vn.config import from_dict
from vnumba.vn.networks import get_network

__all__ = ["FORMAT", "FORMAT_VERSION", "Model", "CombinedModel", "TUMOUR_GROUP", "save_model", "load_model",
           "shipped_model_path",
           "atomic_h5"]

FORMAT = "vnumba-model"
FORMAT_VERSION = 1
#: Where the shipped models are: ``vnumba/models`` inside an installed wheel (package data,
#: see ``setup.py``), else the repository's ``data/models`` (a checkout or editable install).
_PACKAGE_MODELS = Path(__file__).resolve().parent.parent / "models"
_REPO_MODELS = Path(__file__).resolve().parents[2] / "data" / "models"
MODELS_DIR = _PACKAGE_MODELS if _PACKAGE_MODELS.is_dir() else _REPO_MODELS
from vnumba.scenarios import SCENARIOS as _SCENARIOS

#: Names of the shipped default models (one per scenario, :mod:`vnumba.scenarios`).
SHIPPED = tuple(_SCENARIOS)


@dataclass
class Model:
    """What a model file holds: architecture, config, parameters and metadata.

    Attributes
    ----------
    arch : str
        The network's name in :mod:`vnumba.vn.networks`: ``"vn"`` (coupled variational
        network) or ``"unet"``.
    config : ModelConfig or UNetConfig
    params : dict of ndarray
    meta : dict
        ``scenario`` (str), ``mpp`` (µm per pixel the model was trained at, or None),
        ``reinhard_mean`` / ``reinhard_std`` (Lab statistics of the colour-normalisation
        target, lists of 3 floats, H&E only), ``channels`` (int), ``train`` (dict).
    device : str
        Backend :meth:`apply` runs on.
    """

    arch: str
    config: object
    params: dict
    meta: dict = field(default_factory=dict)
    #: ``"cpu"`` or ``"cuda"`` (:func:`vnumba.vn.backend.get_backend`), one of the network's
    #: ``devices``: the variational network runs on both, the U-Net on the CPU only.
    device: str = "cpu"

    @property
    def receptive_radius(self) -> int:
        """Pixels of context one output pixel depends on (for tiled prediction)."""
        return int(self.config.receptive_radius)

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    def apply(self, u0, m0=None):
        """Run the network on :attr:`device` (:func:`vnumba.vn.backend.run_network`, which
        checks ``u0``); tiled prediction of whole images is
        :func:`vnumba.analysis.inference.predict_array`.

        Parameters
        ----------
        u0 : ndarray, shape (N, C, H, W), values in [0, 1]
        m0 : ndarray, optional

        Returns
        -------
        u : ndarray, shape (N, C, H, W)
        m : ndarray, shape (N, H, W), or (N, C_m, H, W) for a model with ``C_m > 1`` mask
            channels (one per class of ``meta["mask_classes"]``)
        """
        return run_network(self.arch, self.config, self.params, u0, m0, device=self.device)


#: HDF5 group of a combined model file that holds its tumour network (:class:`CombinedModel`).
TUMOUR_GROUP = "tumour_model"


class CombinedModel:
    """A multi-class network whose tumour channel comes from a second, one-channel network.

    Combination rule (per pixel, ``t`` = the tumour network's mask, ``m_k`` = the multi-class
    network's map of class ``k``)::

        m'_tumour = t,        m'_k = m_k * (1 - t)   for every other class k

    so a nucleus is classed tumour (the largest mean of its maps, :mod:`vnumba.analysis.classes`)
    where the tumour network marks it, and otherwise takes the multi-class network's immune /
    other decision; the nucleus mask (the maximum over the maps) is the union of the tumour
    network's mask and the other classes' masks outside it.  Why: on the development data the
    article's one-channel tumour network (1500 iterations) separates tumour from immune nuclei
    better than the three-class network, which alone gives the immune and other classes
    (``data/models/README.md`` has the comparison).

    **Class gains** (optional, ``gains`` or ``base.meta["class_gains"]``, a gain ``g_k > 0`` per
    class name, 1 for the others): after the combination every pixel's maps are rebalanced as

        m''_k = g_k m'_k · max_j m'_j / max_j (g_j m'_j)

    which leaves the maximum over the maps — the nucleus probability, hence the nucleus mask and
    every object — exactly as it was, and moves only the class decision (the largest mean of a
    nucleus' maps) towards the classes with a gain above 1.  Why: a class that covers few
    training pixels (scenario 3's other nuclei, 1 %) gets maps that stay below the frequent
    class's even where it is the likelier one by its look; the gain is fitted on synthetic
    slides with known classes (``bench/fit_class_gains.py``), never on real annotations.

    Parameters
    ----------
    base : Model
        Multi-class network (``meta["mask_classes"]`` names a ``"tumour"`` channel).
    tumour : Model
        One-channel tumour network at the same pixel size and colour normalisation.
    gains : dict of str to float, optional
        Class gains (default ``base.meta["class_gains"]``, else none); stored in the base
        network's meta when the model is saved.
    """

    def __init__(self, base: Model, tumour: Model, gains: dict | None = None):
        if gains is not None:
            base = Model(base.arch, base.config, base.params,
                         {**(base.meta or {}),
                          "class_gains": dict(gains) if isinstance(gains, dict) else gains})
        check_meta(base.meta or {}, "combined model")
        names = list((base.meta or {}).get("mask_classes") or [])
        if "tumour" not in names:
            raise ValueError("a combined model's multi-class network needs a 'tumour' channel")
        if int(getattr(tumour.config, "n_mask", 1)) != 1:
            raise ValueError("a combined model's tumour network must have one mask channel")
        for k in ("mpp", "reinhard_mean", "reinhard_std", "channels"):
            a, b = (base.meta or {}).get(k), (tumour.meta or {}).get(k)
            if a is not None and b is not None and not np.allclose(np.asarray(a, float), np.asarray(b, float)):
                raise ValueError(f"the two networks of a combined model differ in meta {k!r}: {a} vs {b}")
        self.base, self.tumour = base, tumour
        self.arch = base.arch
        self.config = base.config
        self.meta = dict(base.meta or {})
        self.meta["combine"] = {"tumour_channel": "tumour", "tumour_arch": tumour.arch,
                                "rule": "m_tumour = t; m_k = m_k (1 - t) for the other classes"}
        self._ti = names.index("tumour")
        g = (base.meta or {}).get("class_gains") or {}
        self._gains = (np.array([float(g.get(n, 1.0)) for n in names], np.float32)
                       if any(float(v) != 1.0 for v in g.values()) else None)
        if self._gains is not None:
            self.meta["combine"]["gains"] = {n: float(v) for n, v in zip(names, self._gains)}
            self.meta["combine"]["rule"] += ("; then m_k = g_k m_k max_j m_j / max_j g_j m_j "
                                             "(the maximum over the maps unchanged)")

    @property
    def device(self) -> str:
        return self.base.device

    @device.setter
    def device(self, value: str) -> None:
        self.base.device = value
        self.tumour.device = value

    @property
    def params(self) -> dict:
        """Both networks' parameters (the tumour network's under ``tumour/``)."""
        return {**self.base.params, **{f"tumour/{k}": v for k, v in self.tumour.params.items()}}

    @property
    def receptive_radius(self) -> int:
        return max(self.base.receptive_radius, self.tumour.receptive_radius)

    @property
    def dtype(self):
        return self.base.dtype

    def apply(self, u0, m0=None):
        """Both networks and the combination rule; shapes as :meth:`Model.apply` of ``base``
        (``m``: (N, C_m, H, W))."""
        u, m = self.base.apply(u0)
        _, t = self.tumour.apply(u0)
        m = np.array(m, dtype=np.float32, copy=True)
        t = np.asarray(t, np.float32)
        keep = np.float32(1.0) - t
        for k in range(m.shape[1]):
            m[:, k] = t if k == self._ti else m[:, k] * keep
        if self._gains is not None:
            top = m.max(axis=1, keepdims=True)
            m *= self._gains.reshape(1, -1, 1, 1)
            win = m.argmax(axis=1)[:, None]
            scale = np.take_along_axis(m, win, axis=1)
            np.divide(top, scale, out=scale, where=scale > 0)   # 0 where every map is 0
            m *= scale
            # the class of the largest g_k m_k holds the pixel's maximum exactly, and rounding
            # lifts no other class above it: the maximum over the maps is unchanged, bit for bit
            np.put_along_axis(m, win, top, axis=1)
            np.minimum(m, top, out=m)
        return u, m


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_model_group(f, model: Model):
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["arch"] = model.arch
    f.attrs["config"] = json.dumps(model.config.to_dict())
    f.attrs["meta"] = json.dumps(model.meta, default=_json_default)
    g = f.create_group("params")
    for k, v in model.params.items():
        g.create_dataset(k, data=np.asarray(v))


def save_model(path: str | os.PathLike, model) -> Path:
    """Write ``model`` (a :class:`Model` or :class:`CombinedModel`) to ``path`` (HDF5),
    atomically; a combined model's tumour network goes into the group :data:`TUMOUR_GROUP`.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    A tiny one-step network, written and read back:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from vnumba.io.models import Model, load_model, save_model
    >>> from vnumba.vn.config import ModelConfig
    >>> from vnumba.vn.model import init_params
    >>> cfg = ModelConfig(n_steps=1, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    >>> model = Model("vn", cfg, init_params(cfg, np.random.default_rng(0)), {"mpp": 0.5})
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_model(Path(folder) / "tiny.h5", model)
    ...     back = load_model(path)
    >>> path.name, back.config == cfg, back.meta
    ('tiny.h5', True, {'mpp': 0.5})
    """
    def write(f):
        if isinstance(model, CombinedModel):
            write_model_group(f, model.base)
            write_model_group(f.create_group(TUMOUR_GROUP), model.tumour)
        else:
            write_model_group(f, model)
    atomic_h5(path, write)
    return Path(path)


def shipped_model_path(name: str) -> Path:
    """Path of a shipped default model (``scenario2``, ``scenario3``, ...)."""
    return MODELS_DIR / f"{name}.h5"


def check_meta(meta, where) -> None:
    """Refuse implausible metadata that would silently change a prediction (key named)."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: meta must be a JSON object")
    mpp = meta.get("mpp")
    lo, hi = MPP_RANGE  # a model trained at 0.0006 um/px would resample a 40-px image to 32733²
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float))
                            or not np.isfinite(mpp) or not lo <= mpp <= hi):
        raise ValueError(f"{where}: meta 'mpp' must be a pixel size in um within [{lo:g}, {hi:g}], "
                         f"got {mpp!r}")
    of = meta.get("object_filter")
    if of is not None and not isinstance(of, dict):
        raise ValueError(f"{where}: meta 'object_filter' must be a table, got {type(of).__name__}")
    for k in ("reinhard_mean", "reinhard_std"):
        v = meta.get(k)
        if v is None:
            continue
        ok = (isinstance(v, (list, tuple)) and len(v) == 3
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)
                      for x in v))
        if not ok or (k == "reinhard_std" and min(v) <= 0):
            raise ValueError(f"{where}: meta {k!r} must be three finite numbers"
                             f"{' > 0' if k == 'reinhard_std' else ''}, got {v!r}")
    ch = meta.get("channels")
    if ch is not None and (isinstance(ch, bool) or not isinstance(ch, int) or ch < 1):
        raise ValueError(f"{where}: meta 'channels' must be a positive int, got {ch!r}")
    mc = meta.get("mask_classes")
    if mc is not None and (not isinstance(mc, list) or not mc or len(set(map(str, mc))) != len(mc)
                           or not all(isinstance(c, str) and c for c in mc)):
        raise ValueError(f"{where}: meta 'mask_classes' must be a list of distinct class names, "
                         f"got {mc!r}")
    cg = meta.get("class_gains")
    if cg is not None:
        ok = isinstance(cg, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
            and 0 < v <= 1e3 for v in cg.values())
        if not ok:
            raise ValueError(f"{where}: meta 'class_gains' must map class names to gains in "
                             f"(0, 1000], got {cg!r}")
        unknown = sorted(set(cg) - set(mc or ()))
        if unknown:
            raise ValueError(f"{where}: meta 'class_gains' names {unknown}, not classes of the "
                             f"model ({mc})")


def read_model_group(f, where) -> Model:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise ValueError(f"{where}: not a vnumba model file (format attribute {fmt!r})")
    ver = int(f.attrs.get("format_version", -1))
    if ver != FORMAT_VERSION:
        raise ValueError(f"{where}: model format version {ver}, this vnumba reads {FORMAT_VERSION}")
    arch = str(f.attrs.get("arch", "vn"))
    net = get_network(arch)
    try:
        cfg = from_dict(net.config, json.loads(f.attrs["config"]), where=f"{where}: config")
        meta = json.loads(f.attrs.get("meta", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{where}: invalid model config: {e}") from None
    if "params" not in f:
        raise ValueError(f"{where}: model file has no 'params' group (truncated?)")
    params = {k: np.array(f["params"][k]) for k in f["params"]}
    for k, v in params.items():
        if v.dtype.kind not in "fc" or not np.all(np.isfinite(v)):
            raise ValueError(f"{where}: parameter {k!r} is not finite floating point")
    if "lam" in params and np.any(params["lam"] < 0):
        raise ValueError(f"{where}: parameter 'lam' has negative values (λ ≥ 0 is required)")
    check_meta(meta, where)
    n_mask = int(getattr(cfg, "n_mask", 1))
    mc = meta.get("mask_classes")
    if (mc is not None or n_mask > 1) and len(mc or ()) != n_mask:
        raise ValueError(f"{where}: the model has {n_mask} mask channel(s) but meta "
                         f"'mask_classes' names {len(mc or ())}")
    try:
        net.check_params(params, cfg)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    return Model(arch=arch, config=cfg, params=params, meta=meta)


def load_model(path_or_name: str | os.PathLike) -> Model:
    """Read a model file, or a shipped model by name.

    Parameters
    ----------
    path_or_name : str or path-like
        A path to an HDF5 model file, or one of ``scenario1``, ``scenario2``, ``scenario3``.

    Raises
    ------
    FileNotFoundError
        No such file (or shipped model).
    ValueError
        A foreign, truncated or incompatible file; the message names the file.

    Examples
    --------
    A shipped model, by its scenario's name:

    >>> from vnumba.io.models import load_model
    >>> model = load_model("scenario2")
    >>> model.arch, model.config.n_steps, model.meta["scenario"]
    ('vn', 10, 'scenario2')

    A file written by :func:`save_model` comes back equal:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from vnumba.io.models import save_model
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     back = load_model(save_model(Path(folder) / "copy.h5", model))
    >>> all((back.params[k] == v).all() for k, v in model.params.items())
    True
    """
    p = Path(path_or_name)
    if not p.exists() and str(path_or_name) in SHIPPED:
        p = shipped_model_path(str(path_or_name))
        if not p.exists():
            raise FileNotFoundError(f"no shipped model for {path_or_name!r} (expected {p})")
    if not p.exists():
        raise FileNotFoundError(f"model file not found: {p}")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, not a model file (HDF5)")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        msg = " ".join(str(e).split())  # h5py's messages span lines
        raise ValueError(f"{p}: cannot be read as HDF5 (truncated or not a model file): {msg}") from None
    with f:
        try:
            model = read_model_group(f, str(p))
            if TUMOUR_GROUP in f:
                model = CombinedModel(model, read_model_group(f[TUMOUR_GROUP], f"{p}:{TUMOUR_GROUP}"))
            elif "class_gains" in model.meta:
                # only the combination rule applies gains: a plain network would ignore them
                raise ValueError(f"{p}: meta 'class_gains' belongs to a combined model, and this "
                                 f"file has no {TUMOUR_GROUP!r} group")
            return model
        except (OSError, KeyError) as e:
            raise ValueError(f"{p}: damaged model file: {e}") from None
