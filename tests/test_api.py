"""The public API of ``vnumba`` and the README's example, executed."""
import re
from pathlib import Path

import vnumba


def test_public_names_resolve_lazily():
    for name in vnumba.__all__:
        assert callable(getattr(vnumba, name)), name
    assert "predict_image" in dir(vnumba)
    try:
        vnumba.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_readme_python_api_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.strip()
    m = re.fullmatch(r"\(1, 3, 32, 32\) \(1, 32, 32\) (\S+) \(64, 64\)", out)
    assert m, out
    assert float(m.group(1)) > 0
