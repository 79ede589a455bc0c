"""Shared helpers of the command-line failure suites (not a test module):
``tests/test_cli_failures.py``, ``tests/test_cli_safety_more.py``, ``tests/test_hostile_files.py``.

* :func:`run_module`: ``python -m ...`` as a user runs it, with this checkout importable.
* :func:`one_line_refusal`: the command failed with exactly one line on stderr naming the
  culprit and no traceback.
* :func:`folder_state`: every entry below a folder (files by content hash, links, folders).
* :func:`assert_refused_leaving_folder`: both, for one bad-input case run in a folder.
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_module(argv, cwd, timeout=300, env=None):
    """``python -m argv...`` in ``cwd`` with the repository on ``PYTHONPATH`` (and ``env``'s
    variables added); the finished process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([PY, "-m", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_refusal(name, r, expect):
    """``r`` (a finished command) exited non-zero with exactly one line on stderr, no
    traceback, naming every string of ``expect`` (shared by the bad-input suites)."""
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode != 0, f"{name}: exit 0\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, f"{name}: {len(lines)} lines on stderr:\n{r.stderr}"
    for e in expect:
        assert e in lines[0], f"{name}: {e!r} not named in: {lines[0]}"


def folder_state(folder: Path) -> dict:
    """Every entry below ``folder``: files by content hash, links by target, folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "folder"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_refused_leaving_folder(name, argv, expect, folder, state=folder_state):
    """``python -m argv`` run in ``folder`` is refused in one line naming ``expect``, and
    ``state(folder)`` is the same afterwards."""
    before = state(folder)
    r = run_module(argv, folder)
    one_line_refusal(name, r, expect)
    after = state(folder)
    assert after == before, (f"{name}: folder changed: "
                             f"{sorted(set(before.items()) ^ set(after.items()))}")
