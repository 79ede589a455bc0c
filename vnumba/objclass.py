"""``python -m vnumba.objclass``: the earlier name of ``python -m vnumba.objfilter`` (fit the
optional object filter), kept so that existing scripts run unchanged."""
import sys

from vnumba.objfilter import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
