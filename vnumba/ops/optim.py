"""Adam (Kingma & Ba 2015) with the projection onto the admissible set after every update.

Explicit NumPy code over a dict of parameter arrays; the state is plain arrays so that a
checkpoint restores it exactly.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Adam"]


class Adam:
    """Adam over a dict of arrays, updating them in place.

    Parameters
    ----------
    lr : float
        Step size (article: 1e-4 for scenarios 1 and 2, 5e-5 for scenario 3).
    beta1, beta2 : float
        Exponential decay rates of the moment estimates (0.9, 0.999).
    eps : float
        Added to the square root of the second moment.
    project : callable, optional
        ``project(params)`` applied after every update (the constraint projection).

    Notes
    -----
    With ``g`` the gradient at iteration ``t`` (1-based)::

        m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
        θ ← θ − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps)
        θ ← proj_P(θ)
    """

    def __init__(self, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, project=None):
        if not lr > 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or not eps > 0:
            raise ValueError("Adam needs lr > 0, 0 <= beta1, beta2 < 1 and eps > 0")
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(beta1), float(beta2), float(eps)
        self.project = project
        self.t = 0
        self.m = {}
        self.v = {}

    def step(self, params: dict, grads: dict) -> None:
        """One update of every array in ``params`` from ``grads`` (same keys), in place."""
        if set(grads) != set(params):
            raise KeyError(f"gradient keys {sorted(grads)} != parameter keys {sorted(params)}")
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1 = 1.0 - b1 ** self.t
        c2 = 1.0 - b2 ** self.t
        for k, p in params.items():
            g = grads[k]
            if g.shape != p.shape:
                raise ValueError(f"gradient {k} has shape {g.shape}, parameter {p.shape}")
            if not np.all(np.isfinite(g)):
                raise FloatingPointError(f"gradient of {k} contains NaN or inf")
            if k not in self.m:
                self.m[k] = np.zeros_like(p, dtype=np.float64)
                self.v[k] = np.zeros_like(p, dtype=np.float64)
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * np.square(g, dtype=np.float64)
            upd = self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)
            p -= upd.astype(p.dtype)
        if self.project is not None:
            self.project(params)

    def state_dict(self) -> dict:
        """Arrays and scalars that restore the optimiser exactly."""
        d = {"t": np.int64(self.t)}
        for k in self.m:
            d["m/" + k] = self.m[k]
            d["v/" + k] = self.v[k]
        return d

    def load_state_dict(self, d: dict) -> None:
        self.t = int(d["t"])
        self.m = {k[2:]: np.array(v, dtype=np.float64) for k, v in d.items() if k.startswith("m/")}
        self.v = {k[2:]: np.array(v, dtype=np.float64) for k, v in d.items() if k.startswith("v/")}
