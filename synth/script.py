"""Scenario scripts: TOML text files that describe every feature of a synthetic image.

A script has two common sections and any number of sections owned by the *scenario kind*
that generates it::

    [scenario]                 # common: which generator, pixel size, image size
    kind = "scenario2"         # a registered scenario kind (see below)
    name = "scenario2"         # free label (defaults to the file stem)
    description = "..."
    mpp = 0.5                  # micrometres per pixel the script models
    size = [300, 300]          # (H, W) in pixels

    [normalization]            # common, optional: colour normalisation of real images
    method = "reinhard"        # "none" | "reinhard"
    target_mean = [..]         # Lab mean/std of the reference image (see synth.color)
    target_std = [..]
    reference = "..."          # free text naming the reference image

    ...                        # sections declared by the scenario kind

Validation is complete and strict: an unknown key, a wrong type or an impossible value raises
:class:`ScriptError` whose message reads ``FILE: KEY: REASON``.

Scenario-kind registry
----------------------
Each generator module declares the schema of its own sections and registers itself in
:mod:`synth.kinds` (below the generator modules, so that registering imports nothing above)::

    from synth.kinds import register_scenario
    register_scenario("scenario3", sections={"cells": CellsSpec, "reference": RefSpec},
                      generate=generate_scenario3, required=("cells",), validate=check)

* ``sections`` maps a top-level TOML key to either a frozen dataclass (parsed field by field,
  see :func:`parse_dataclass`) or a callable ``parser(value, ctx, key) -> object``;
* ``generate(script, rng, reference) -> synth.generator.Sample`` makes one sample;
* ``validate(sections, ctx)`` (optional) performs cross-section checks and reports errors via
  ``ctx.error(key, reason)``;
* ``load_reference(path) -> object`` (optional) loads the reference data the kind needs
  (``synth generate --reference PATH``); the object reaches ``generate`` unchanged.

When a script names a kind that is not registered yet, :func:`get_scenario` imports the module
``synth.<kind>`` (so ``kind = "scenario3"`` loads ``synth/scenario3.py``, which registers
itself on import).  The shipped kinds ``scenario1`` and ``scenario2`` live in
:mod:`synth.layered`, a general layer engine that other kinds may reuse.

Dataclass fields are described by ordinary type hints (``bool``, ``int``, ``float``, ``str``,
``Literal[...]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, nested dataclasses,
unions such as ``int | tuple[int, int]``) plus the bounds given by :func:`param`; a dataclass
may define ``check(self) -> iterable of (key, reason)`` for checks across its own fields.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SHIPPED", "Script", "ScriptError", "ScenarioKind", "ParseContext", "Normalization",
    "load_script", "parse_script_text", "register_scenario", "get_scenario", "registered_kinds",
    "param", "parse_dataclass", "shipped_path",
]

#: Names of the scripts shipped in ``synth/scenarios/``.
SHIPPED = ("scenario1", "scenario2", "scenario3")



# The parsing primitives and the kind registry live below the generator modules; they are part
# of this module's interface.
# The built-in kinds register themselves on import (scenario1 and scenario2 in layered).
from . import layered as _layered  # noqa: E402, F401
from . import scenario3 as _scenario3  # noqa: E402, F401
from .kinds import _REGISTRY, ScenarioKind, register_scenario  # noqa: E402, F401
from .params import (  # noqa: E402, F401
    _COMMON,
    Normalization,
    ParseContext,
    ScenarioSection,
    ScriptError,
    param,
    parse_dataclass,
)


def get_scenario(kind: str) -> ScenarioKind:
    """Return the registered kind, importing ``synth.<kind>`` on first use.

    Raises
    ------
    KeyError
        No such kind is registered and no module ``synth.<kind>`` registers it.
    """
    if kind not in _REGISTRY and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", kind or ""):
        try:
            importlib.import_module(f"synth.{kind}")
        except ModuleNotFoundError as e:
            if e.name != f"synth.{kind}":
                raise
    if kind not in _REGISTRY:
        raise KeyError(kind)
    return _REGISTRY[kind]


def registered_kinds() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class Script:
    """A parsed, validated scenario script.

    Attributes
    ----------
    name : str
        ``[scenario].name`` (defaults to the file stem).
    scenario : str
        ``[scenario].kind``, the registered scenario kind (e.g. ``"scenario1"``).
    mpp : float
        Micrometres per pixel the script models; a model trained on it inherits this.
    size : tuple of int
        (H, W) of generated images.
    description : str
    normalization : Normalization
    sections : dict
        Parsed kind-specific sections, by top-level key (absent optional sections are None).
    text : str
        The original TOML text (stored in every dataset).
    path : str or None
        Where the text came from (None for a string).
    """

    name: str
    scenario: str
    mpp: float
    size: tuple[int, int]
    description: str
    normalization: Normalization
    sections: dict
    text: str
    path: str | None = None

    def __getitem__(self, key: str):
        return self.sections[key]

    @property
    def kind(self) -> ScenarioKind:
        return get_scenario(self.scenario)

    @property
    def mask_classes(self) -> tuple:
        """Class names of the target's mask channels; ``()`` for the one-channel mask."""
        f = self.kind.mask_classes
        return tuple(f(self)) if f is not None else ()

    def with_size(self, height: int, width: int) -> "Script":
        """The same script with ``[scenario].size`` replaced (the text is rewritten too)."""
        new_line = f"size = [{int(height)}, {int(width)}]"
        text, n = _replace_in_table(self.text, "scenario", "size", new_line)
        if n == 0:
            text, n = _insert_in_table(self.text, "scenario", new_line)
        return parse_script_text(text, self.path)


def _table_span(text: str, table: str):
    lines = text.splitlines(keepends=True)
    start = None
    for i, ln in enumerate(lines):
        s = ln.strip()
        if s.startswith("["):
            if start is not None:
                return lines, start, i
            if re.fullmatch(rf"\[\s*{re.escape(table)}\s*\](\s*#.*)?", s):
                start = i + 1
    return lines, start, len(lines)


def _replace_in_table(text, table, key, new_line):
    lines, a, b = _table_span(text, table)
    if a is None:
        return text, 0
    for i in range(a, b):
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            lines[i] = new_line + "\n"
            return "".join(lines), 1
    return text, 0


def _insert_in_table(text, table, new_line):
    lines, a, b = _table_span(text, table)
    if a is None:
        return text, 0
    lines.insert(a, new_line + "\n")
    return "".join(lines), 1


def shipped_path(name: str) -> Path:
    """Path of the shipped script ``name`` (one of :data:`SHIPPED`)."""
    return Path(str(importlib.resources.files("synth.scenarios") / f"{name}.toml"))


#: Longest script accepted (the shipped ones have ~10 000 characters).
MAX_SCRIPT_CHARS = 1_000_000


def parse_script_text(text: str, path: str | Path | None = None) -> Script:
    """Parse and validate TOML ``text``; ``path`` is used in messages and as default name."""
    file = str(path) if path is not None else "<script>"
    ctx = ParseContext(file)
    if not isinstance(text, str):
        raise TypeError(f"script text must be a str, got {type(text).__name__}")
    if len(text) > MAX_SCRIPT_CHARS:
        raise ScriptError(file, "(size)", f"{len(text)} characters; a scenario script has at most "
                                          f"{MAX_SCRIPT_CHARS}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScriptError(file, "(syntax)", f"not valid TOML: {e}") from None
    except RecursionError:
        raise ScriptError(file, "(syntax)", "nested too deeply to be a scenario script") from None
    if "scenario" not in data:
        ctx.error("scenario", "required table [scenario] is missing")
    sc = parse_dataclass(ScenarioSection, data["scenario"], ctx, "scenario")
    try:
        kind = get_scenario(sc.kind)
    except KeyError:
        ctx.error("scenario.kind", f"unknown scenario kind {sc.kind!r} "
                  f"(registered: {', '.join(registered_kinds())})")
    norm = parse_dataclass(Normalization, data.get("normalization", {}), ctx, "normalization")
    sections = {}
    for k, v in data.items():
        if k in _COMMON:
            continue
        if k not in kind.sections:
            ctx.error(k, f"unknown section for scenario kind {sc.kind!r} "
                      f"(allowed: {', '.join(sorted(set(kind.sections) | set(_COMMON)))})")
        schema = kind.sections[k]
        if dataclasses.is_dataclass(schema):
            sections[k] = parse_dataclass(schema, v, ctx, k)
        else:
            sections[k] = schema(v, ctx, k)
    for k in kind.required:
        if k not in sections:
            ctx.error(k, "required section is missing")
    for k in kind.sections:
        sections.setdefault(k, None)
    if kind.validate is not None:
        kind.validate(sections, ctx)
    name = sc.name or (Path(path).stem if path is not None else sc.kind)
    return Script(name=name, scenario=sc.kind, mpp=sc.mpp, size=tuple(sc.size),
                  description=sc.description, normalization=norm, sections=sections,
                  text=text, path=str(path) if path is not None else None)


def load_script(path_or_name: str | Path) -> Script:
    """Load a script from a file path or by the name of a shipped script.

    Parameters
    ----------
    path_or_name : str or Path
        A path to a ``.toml`` file, or a shipped name (:data:`SHIPPED`).

    Raises
    ------
    ScriptError
        The file is missing or unreadable, or the script is invalid.
    """
    p = Path(path_or_name)
    if not p.exists() and isinstance(path_or_name, str) and re.fullmatch(r"[\w\-]+", path_or_name):
        sp = shipped_path(path_or_name)
        if sp.exists():
            p = sp
        else:
            raise ScriptError(str(path_or_name), "(file)",
                              f"no such file and no shipped script of that name "
                              f"(shipped: {', '.join(SHIPPED)})")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScriptError(str(p), "(file)", "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(str(p), "(file)", f"cannot read: {e}") from None
    return parse_script_text(text, p)


if sys.version_info < (3, 11):  # pragma: no cover
    raise ImportError("synth needs Python >= 3.11 (tomllib)")
