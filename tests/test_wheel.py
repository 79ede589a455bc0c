"""The built wheel carries the shipped models (package data) and a non-editable install finds
them: ``pip install .`` then ``vnumba-predict x.png --out o`` must work without the repository.
"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project's wheel, built without network and installed (no dependencies) into a
    folder that is put first on PYTHONPATH, away from the repository."""
    import shutil

    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the tracked files: a build/ folder left in the checkout could
    # carry stale modules into the wheel, and nothing untracked may ship.
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
                       capture_output=True, text=True, timeout=600, cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("vnumba-*.whl")
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    return wheel, target, env, tmp


def test_wheel_contains_every_package_the_models_and_py_typed(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    for m in ("scenario1", "scenario2", "scenario3", "scenario3_unet"):
        assert f"vnumba/models/{m}.h5" in names
    for p in ("vnumba/py.typed", "vnumba/ops/__init__.py", "vnumba/vn/gpu/engine.py",
              "vnumba/io/dataset.py", "vnumba/analysis/inference.py", "vnumba/training/trainer.py",
              "synth/scenarios/scenario3.toml"):
        assert p in names, p


def test_installed_package_loads_its_shipped_model_outside_the_repository(installed):
    _, target, env, tmp = installed
    code = ("import vnumba, vnumba.io.models as m\n"
            "print(vnumba.__file__)\n"
            "print(m.shipped_model_path('scenario3'))\n"
            "print(m.load_model('scenario3').arch)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pkg, model_path, arch = r.stdout.split()
    assert Path(pkg).is_relative_to(target) and Path(model_path).is_relative_to(target)
    assert arch == "vn"


def test_installed_predict_command_runs_with_the_shipped_model(installed):
    import imageio.v3 as iio

    _, target, env, tmp = installed
    img = (np.random.default_rng(0).uniform(0.3, 0.9, (48, 48, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp / "x.png", img)
    r = subprocess.run([sys.executable, "-m", "vnumba.predict", "x.png", "--mpp", "0.5",
                        "--out", "o", "-q"], capture_output=True, text=True, env=env, cwd=tmp,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp / "o" / "x_mask.png").is_file() and (tmp / "o" / "x_objects.geojson").is_file()
