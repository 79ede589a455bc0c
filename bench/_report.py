"""Summary tables of ``python -m vnumba.evaluate`` reports for the benchmarks (one place)."""
from __future__ import annotations

import json
from pathlib import Path

#: Marked-fraction columns, in this order (CoNSeP's inflammatory class is "immune").
CLASSES = ("tumour", "immune", "other", "epithelial")


def summary_table(rows, baseline: bool = False) -> str:
    """Markdown table, one line per (model, folder) of each ``(name, report.json)`` in ``rows``.

    Parameters
    ----------
    rows : iterable of (str, path)
        A display name and the ``report.json`` written by ``vnumba.evaluate --out``.
    baseline : bool
        Also list the classical baseline of the first report.
    """
    out = ["| model | folder | pixel acc. | F1 | " + " | ".join(f"{c} marked" for c in CLASSES)
           + " |", "|---|---|---|---|" + "---|" * len(CLASSES)]
    for i, (name, path) in enumerate(rows):
        rep = json.loads(Path(path).read_text())
        for folder, methods in rep.get("per_folder", {}).items():
            for meth, r in methods.items():
                is_base = "baseline" in meth.lower()
                if is_base and not (baseline and i == 0):
                    continue
                f1 = (r.get("objects") or {}).get("f1")
                cl = r.get("classes", {})
                fr = [f"{cl[c]['marked_fraction']:.3f}" if cl.get(c, {}).get("marked_fraction")
                      is not None else "–" for c in CLASSES]
                first = rep["methods"][0]["name"]
                # "NAME + object filter" is a variant of the first method, "NAME_unet" is not.
                label = (name + meth[len(first):] if not is_base and (
                    meth == first or meth.startswith(first + " ")) else meth)
                out.append(f"| {label} | {folder} | {r['pixel']['accuracy']:.4f} | "
                           f"{'–' if f1 is None else f'{f1:.3f}'} | " + " | ".join(fr) + " |")
    return "\n".join(out)
