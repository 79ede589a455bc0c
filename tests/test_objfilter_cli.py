"""The command that fits the object filter: ``python -m vnumba.objfilter`` (and its earlier
name ``vnumba.objclass``, which runs the same code)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_earlier_command_name_runs_the_same_main():
    import vnumba.objclass
    import vnumba.objfilter
    assert vnumba.objclass.main is vnumba.objfilter.main


def test_fitting_into_the_input_model_is_refused_in_one_line_and_nothing_changes(tmp_path):
    model, data = tmp_path / "m.h5", tmp_path / "d.h5"
    model.write_bytes(b"not touched")
    data.write_bytes(b"not read")
    r = subprocess.run([sys.executable, "-m", "vnumba.objfilter", str(model), str(data), "--out", str(model)],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--out" in lines[0], r.stderr
    assert model.read_bytes() == b"not touched" and sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "m.h5"]
