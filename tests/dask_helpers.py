"""Helpers that the Dask tests send to worker processes (not a test module).

The tests register this module with ``cloudpickle.register_pickle_by_value``, so its classes
travel by value: the workers, which do not have ``tests/`` on their path, can still run them.
"""
import os


class DiesOnce:
    """A model wrapper whose first ``apply`` on block ``k_die`` ends its worker process
    (``os._exit``) once — a lost worker — marked by the file ``marker``."""

    def __init__(self, model, marker):
        self.model, self.marker = model, str(marker)
        self.calls = 0

    def __getattr__(self, name):   # everything else is the wrapped model's
        if name in ("model", "marker", "calls") or name.startswith("__"):
            raise AttributeError(name)   # (while unpickling, before __dict__ is filled)
        return getattr(self.model, name)

    def apply(self, u0, m0=None):
        self.calls += 1
        if self.calls == 1 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.model.apply(u0) if m0 is None else self.model.apply(u0, m0)


def dying_once(orig, marker):
    """A task function that ends its worker process the first time any worker runs it (the
    file ``marker`` records that it happened), then behaves as ``orig``."""
    marker = str(marker)

    def task(shared, item):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return orig(shared, item)
    return task
