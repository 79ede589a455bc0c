"""The package's layers and their one-way import rule (docs/architecture.md).

Every ``import`` in every module of ``vnumba`` — at module level or inside a function — is
checked: a module may import from its own layer's package and from layers below, never from
above; only the app layer (the command-line modules) imports ``synth``; ``synth`` imports only
the operator and file layers of ``vnumba`` (the dataset contract, colour and mask operators),
plus the interaction figures (:data:`SYNTH_ALLOWED_MODULES`).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Layer of each top-level part of ``vnumba`` (lower = more basic).
LAYERS = {
    "scenarios": 0, "ops": 0,
    "unet": 1, "executor": 1,
    "vn": 2,
    "io": 3,
    "analysis": 4, "training": 4,
    # app layer: the command-line entry points and the public API
    "__init__": 5, "cli": 5, "train": 5, "predict": 5, "evaluate": 5, "figures": 5,
    "objclass": 5, "objfilter": 5, "slide": 5,
}
APP = 5


def _part(module: str) -> str:
    """``vnumba.vn.model`` -> ``vn``; ``vnumba`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, package: str):
    tree = ast.parse(path.read_text(), filename=str(path))
    # imports under ``if TYPE_CHECKING:`` are for annotations and never run
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, node.lineno
            for a in node.names:  # ``from synth import script`` names a module
                yield f"{mod}.{a.name}", node.lineno


def _modules(top: str):
    for p in sorted((ROOT / top).rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        package = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        yield p, name.removesuffix(".__init__"), package


def test_every_part_of_vnumba_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in (ROOT / "vnumba").iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert parts <= set(LAYERS), f"no layer for {sorted(parts - set(LAYERS))} (add it here and in docs/architecture.md)"


def test_vnumba_imports_point_down_the_layers_and_only_apps_import_synth():
    bad = []
    for path, name, package in _modules("vnumba"):
        mine = _part(name)
        for mod, line in _imports(path, package):
            where = f"{path.relative_to(ROOT)}:{line}"
            if mod == "synth" or mod.startswith("synth."):
                if LAYERS[mine] != APP:
                    bad.append(f"{where} imports {mod} (only the app layer may import synth)")
                continue
            if not mod.startswith("vnumba.") or mod == "vnumba":
                continue
            other = _part(mod)
            if other not in LAYERS:
                continue
            if other == mine:
                continue
            if LAYERS[other] >= LAYERS[mine] and not (LAYERS[mine] == APP == LAYERS[other]):
                bad.append(f"{where} ({mine}, layer {LAYERS[mine]}) imports {mod} "
                           f"({other}, layer {LAYERS[other]})")
    assert not bad, "\n".join(bad)


#: Single modules of higher layers that synth may import.  ``vnumba.analysis.interactions``:
#: the synthetic slide's truth (``synth slide``, synth/slide.py) states its interaction figures
#: by the very definitions the whole-slide analysis reports them with, so that the two can be
#: compared figure by figure; a second implementation in synth could drift from it.
SYNTH_ALLOWED_MODULES = ("vnumba.analysis.interactions",)


@pytest.mark.parametrize("allowed", [("ops", "io", "scenarios", "cli", "executor")])
def test_synth_uses_only_the_operator_and_file_layers_of_vnumba(allowed):
    bad = []
    for path, name, package in _modules("synth"):
        for mod, line in _imports(path, package):
            if mod in SYNTH_ALLOWED_MODULES or any(mod.startswith(m + ".") for m in SYNTH_ALLOWED_MODULES):
                continue
            if mod.startswith("vnumba.") and _part(mod) not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def _graph(top: str) -> dict:
    """Module -> the modules of the same package it imports (every import, also deferred)."""
    mods = {name: (path, package) for path, name, package in _modules(top)}
    g = {}
    for name, (path, package) in mods.items():
        deps = set()
        for mod, _ in _imports(path, package):
            # "from synth import layered" names the module synth.layered; "from
            # synth.script import x" the module synth.script
            for cand in (mod, mod.rsplit(".", 1)[0]):
                if cand in mods and cand != top:
                    if cand != name:
                        deps.add(cand)
                    break
        g[name] = deps
    return g


def _cycle(g: dict):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(g):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


@pytest.mark.parametrize("top", ["vnumba", "synth"])
def test_no_import_cycles_not_even_through_deferred_imports(top):
    cycle = _cycle(_graph(top))
    assert cycle is None, " -> ".join(cycle)
