"""vnumba — coupled variational networks for joint denoising and segmentation of
stained tissue images (Effland et al. 2019), written as explicit NumPy/Numba code.

Public API (imported lazily, so ``import vnumba`` stays cheap and compiles nothing)::

    from vnumba import ModelConfig, init_params, forward, loss_and_grad
    from vnumba import load_model, save_model, predict_image, run_evaluation
* :class:`ModelConfig`, :func:`init_params`, :func:`forward`, :func:`loss_and_grad` — the
  network of the article (eq. (1) unrolled, loss (3) and its exact gradient);
* :func:`load_model`, :func:`save_model` — model files (``load_model("scenario3")`` gives a
  shipped model);
* :func:`predict_image` — a real image (array or :func:`vnumba.io.images.read_image`) to
  reconstruction and mask, resampled to the model's pixel size and colour-normalised;
* :func:`run_evaluation` — scores against annotated images (``python -m vnumba.evaluate``).
"""

__version__ = "0.1.0"

_API = {
    "ModelConfig": ("vnumba.vn.config", "ModelConfig"),
    "init_params": ("vnumba.vn.model", "init_params"),
    "forward": ("vnumba.vn.model", "forward"),
    "loss_and_grad": ("vnumba.vn.model", "loss_and_grad"),
    "load_model": ("vnumba.io.models", "load_model"),
    "save_model": ("vnumba.io.models", "save_model"),
    "Model": ("vnumba.io.models", "Model"),
    "predict_image": ("vnumba.analysis.inference", "predict_image"),
    "run_evaluation": ("vnumba.analysis.evaluation", "run_evaluation"),
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        mod, attr = _API[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vnumba' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
