"""Build hook: the shipped models in ``data/models/*.h5`` go into the wheel as package data
``vnumba/models/`` (``pyproject.toml`` holds everything else).

The models stay in ``data/models`` in the repository, beside the README that says how each was
made, their logs, curves and evaluation reports; an editable install reads them there.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithModels(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "data" / "models"
        dst = Path(self.build_lib) / "vnumba" / "models"
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.h5")):
            self.copy_file(str(f), str(dst / f.name))


setup(cmdclass={"build_py": BuildPyWithModels})
