"""``python -m vnumba.objfilter MODEL DATA.h5 --out OUT``: fit the optional object filter
(:mod:`vnumba.analysis.objfilter`) on synthetic objects and store it in the model's meta.

The filter is a binary classifier of the mask's objects (keep / reject); ``vnumba.objclass``,
its earlier name, runs this same command."""
from __future__ import annotations

import sys

from vnumba.analysis.objfilter import fit_object_filter
from vnumba.cli import ArgumentParser, interruptible


@interruptible
def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m vnumba.objfilter", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="trained model file or shipped name")
    p.add_argument("data", help="synthetic dataset (HDF5) of the model's scenario")
    p.add_argument("--out", required=True, help="model file to write (the model plus its filter)")
    p.add_argument("-n", type=int, default=200, help="samples to fit on (default 200)")
    p.add_argument("--recall", type=float, default=0.95,
                   help="fraction of synthetic tumour objects to keep (default 0.95)")
    a = p.parse_args(argv)
    from vnumba.io.models import load_model, save_model

    if not 0 < a.recall <= 1 or a.n < 1:
        print("error: --recall must be in (0, 1] and -n >= 1", file=sys.stderr)
        return 2
    try:
        from vnumba.io.outputs import check_outputs
        check_outputs({"MODEL": a.model, "DATA": a.data}, {"--out": a.out})
        model = load_model(a.model)
        f = fit_object_filter(model, a.data, n=a.n, recall=a.recall)
        model.meta = dict(model.meta, object_filter=f.to_meta())
        save_model(a.out, model)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
