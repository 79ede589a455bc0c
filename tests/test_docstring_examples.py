"""The numpydoc ``Examples`` sections of the public API, run as doctests.

Every module of :data:`MODULES` is searched for doctests (its functions, classes and methods,
as ``python -m doctest`` would); each example found runs as a test of its own and fails when
its output differs.  The objects of :data:`REQUIRED` must have an example: a missing one fails
too, while a listed module without any example yet is skipped.
"""
import doctest
import importlib

import pytest

#: Modules whose docstring examples are run.
MODULES = [
    "vnumba.vn.config",
    "vnumba.vn.model",
    "vnumba.io.models",
    "vnumba.analysis.inference",
]

#: Public objects that must carry an ``Examples`` section with at least one doctest.
REQUIRED = [
    "vnumba.vn.config.ModelConfig",
    "vnumba.vn.model.init_params",
    "vnumba.vn.model.forward",
    "vnumba.vn.model.loss_and_grad",
]

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _doctests(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # a module not yet at its listed home
        return module_name, [], str(e)
    # exclude_empty: docstrings without examples are not tests
    found = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
    return module_name, sorted((t for t in found if t.examples), key=lambda t: t.name), None


def _params():
    out = []
    for name, tests, err in map(_doctests, MODULES):
        if err is not None:
            out.append(pytest.param(name, None, id=name,
                                    marks=pytest.mark.skip(reason=f"{name} not importable: {err}")))
        elif not tests:
            out.append(pytest.param(name, None, id=name,
                                    marks=pytest.mark.skip(reason=f"{name} has no examples yet")))
        out += [pytest.param(name, t, id=t.name) for t in tests]
    return out


def _run(test):
    """Run one doctest; return its failure report ("" when every example passed)."""
    report = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.attempted == len(test.examples)
    return "".join(report) if result.failed else ""


@pytest.mark.parametrize("module_name,test", _params())
def test_docstring_example_gives_the_documented_output(module_name, test):
    assert test.name.startswith(module_name)
    report = _run(test)
    assert report == "", report


@pytest.mark.parametrize("qualname", REQUIRED)
def test_public_api_object_has_an_example(qualname):
    module_name, _, _ = qualname.rpartition(".")
    _, tests, err = _doctests(module_name)
    assert err is None, err
    names = {t.name for t in tests}
    assert qualname in names, f"{qualname} has no doctest example (found: {sorted(names)})"


def test_a_wrong_example_is_reported_as_a_failure():
    """The runner above does fail: an example whose output is wrong gives a report."""
    parser = doctest.DocTestParser()
    wrong = parser.get_doctest(">>> 1 + 1\n3\n", {}, "wrong", "wrong.py", 0)
    right = parser.get_doctest(">>> 1 + 1\n2\n", {}, "right", "right.py", 0)
    assert "Expected:\n    3\nGot:\n    2" in _run(wrong)
    assert _run(right) == ""
