"""docs/tutorial.md is executable: every ```python block runs, in order, in one namespace, in a
temporary working directory.  The blocks carry their own asserts (kernels vs the references of
tests/naive.py, finite-difference gradients, projections, a 10-iteration training), so a change
in the code that breaks what the page teaches fails here."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"

# An opening fence ```python at the start of a line, its body, the next closing ``` line.
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text):
    """``[(first body line (1-based), source), ...]`` of the ```python blocks of ``text``."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def run_blocks(text, filename, namespace):
    """Execute the blocks in order in ``namespace``.  Each one is compiled with the blank lines
    before it, so a traceback names the line of the Markdown file."""
    blocks = python_blocks(text)
    for line, src in blocks:
        exec(compile("\n" * (line - 1) + src, str(filename), "exec"), namespace)
    return len(blocks)


def test_block_extraction_and_a_failing_block_fails():
    md = ("text\n```python\nx = 1\n```\n```bash\nexit 1\n```\n"
          "```python\nassert x == 1\ny = x + 1\n```\nmore\n```python\nassert y == 3, y\n```\n")
    blocks = python_blocks(md)
    assert [line for line, _ in blocks] == [3, 9, 14]
    ns = {}
    with pytest.raises(AssertionError) as exc:
        run_blocks(md, "fake.md", ns)
    assert ns["y"] == 2  # earlier blocks ran, in order, in one namespace
    assert exc.traceback[-1].lineno + 1 == 14  # the failing line of fake.md (lineno is 0-based)


def test_tutorial_covers_each_part_with_checks():
    blocks = python_blocks(TUTORIAL.read_text(encoding="utf-8"))
    code = "\n".join(src for _, src in blocks)
    assert len(blocks) >= 10
    for needle in ("naive.", "model.step_forward", "loss_and_grad", "model.step_backward",
                   "conv.conv_adjoint", "project_params", "TrainOptions", "plot_training_curves"):
        assert needle in code, needle
    # every block but the imports/data-generation ones checks something
    checked = sum(("assert" in src) for _, src in blocks)
    assert checked >= len(blocks) - 1


def test_tutorial_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__tutorial__"}
    n = run_blocks(TUTORIAL.read_text(encoding="utf-8"), TUTORIAL, ns)
    assert n >= 10
    # the training part wrote its files into the temporary directory
    for f in ("tut.h5", "tut_model.h5", "tut_train.csv", "tut_curves.png", "scenario2_curves.png"):
        assert (tmp_path / f).is_file(), f
