"""``ruff check`` (configured in pyproject.toml) is clean over the whole repository."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(exe).exists():
        pytest.skip("ruff not installed (pip install -e '.[test]')")
    r = subprocess.run([exe, "check", "--output-format", "concise", str(ROOT)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


def test_readme_links_every_document():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("[!_]*.py")))
def test_every_benchmark_starts(script):
    """A moved module must not leave a benchmark behind: each one parses ``--help``."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
