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
Each generator module declares the schema of its own sections and registers itself::

    from synth.script import register_scenario
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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

__all__ = [
    "SHIPPED", "Script", "ScriptError", "ScenarioKind", "ParseContext", "Normalization",
    "load_script", "parse_script_text", "register_scenario", "get_scenario", "registered_kinds",
    "param", "parse_dataclass", "shipped_path",
]

#: Names of the scripts shipped in ``synth/scenarios/``.
SHIPPED = ("scenario1", "scenario2", "scenario3")


class ScriptError(ValueError):
    """Invalid scenario script; the message names the file, the key and the reason."""

    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


def param(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None,
          doc: str = "", default_factory: Any = dataclasses.MISSING):
    """A dataclass field with bounds that :func:`parse_dataclass` enforces.

    Bounds apply to a number, or to every number inside a (nested) tuple.
    """
    md = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=md)
    return field(default=default, metadata=md)


class ParseContext:
    """Carries the file name for error messages while a script is parsed."""

    def __init__(self, file: str):
        self.file = file

    def error(self, key: str, reason: str) -> typing.NoReturn:
        raise ScriptError(self.file, key, reason)

    def parse(self, cls, value, key: str):
        """Parse ``value`` as dataclass ``cls`` (see :func:`parse_dataclass`)."""
        return parse_dataclass(cls, value, self, key)

    def convert(self, value, tp, key: str):
        """Convert ``value`` to the type hint ``tp`` or raise :class:`ScriptError`."""
        return _convert(value, tp, self, key)


def _tname(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is float:
        return "number"
    if tp is int:
        return "integer"
    if tp is bool:
        return "boolean"
    if tp is str:
        return "string"
    if dataclasses.is_dataclass(tp):
        return "table"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"array of {_tname(args[0])}"
        return f"array of {len(args)} ({', '.join(_tname(a) for a in args)})"
    if origin is dict:
        return f"table of {_tname(typing.get_args(tp)[1])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_tname(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def _convert(value, tp, ctx: ParseContext, key: str):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
            if v != v or v in (float("inf"), float("-inf")):
                ctx.error(key, f"must be a finite number, got {value!r}")
            return v
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, ctx, key)
    elif origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        ctx.error(key, f"must be {_tname(tp)}, got {value!r}")
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, list):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(v, args[0], ctx, f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                ctx.error(key, f"must have {len(args)} elements, got {len(value)}")
            return tuple(_convert(v, a, ctx, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin is dict:
        _, vt = typing.get_args(tp)
        if isinstance(value, dict):
            return {k: _convert(v, vt, ctx, f"{key}.{k}") for k, v in value.items()}
    elif origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if a is type(None):
                continue
            try:
                return _convert(value, a, ctx, key)
            except ScriptError:
                # a table given for a table alternative: its own error is the useful one
                if dataclasses.is_dataclass(a) and isinstance(value, dict):
                    raise
        ctx.error(key, f"must be {_tname(tp)}, got {value!r}")
    else:  # pragma: no cover - a schema bug, not a script error
        raise TypeError(f"unsupported type hint {tp!r} for {key}")
    ctx.error(key, f"must be {_tname(tp)}, got {type(value).__name__} {value!r}")


def _numbers(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        yield v
    elif isinstance(v, tuple):
        for x in v:
            yield from _numbers(x)


_HINTS: dict[type, dict] = {}


def parse_dataclass(cls, value, ctx: ParseContext, key: str):
    """Build dataclass ``cls`` from the TOML table ``value`` with full validation.

    Parameters
    ----------
    cls : dataclass type
    value : object
        The parsed TOML value (must be a dict).
    ctx : ParseContext
    key : str
        Dotted path of the table in the script, used in error messages.
    """
    if not isinstance(value, dict):
        ctx.error(key, f"must be a table, got {type(value).__name__} {value!r}")
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    hints = _HINTS[cls]
    flds = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in value:
        if k not in flds:
            ctx.error(f"{key}.{k}" if key else k,
                      f"unknown key (allowed: {', '.join(sorted(flds))})")
    kwargs = {}
    for name, f in flds.items():
        sub = f"{key}.{name}" if key else name
        if name in value:
            v = _convert(value[name], hints[name], ctx, sub)
            md = f.metadata
            for x in _numbers(v):
                if md.get("ge") is not None and not x >= md["ge"]:
                    ctx.error(sub, f"must be >= {md['ge']}, got {x!r}")
                if md.get("gt") is not None and not x > md["gt"]:
                    ctx.error(sub, f"must be > {md['gt']}, got {x!r}")
                if md.get("le") is not None and not x <= md["le"]:
                    ctx.error(sub, f"must be <= {md['le']}, got {x!r}")
                if md.get("lt") is not None and not x < md["lt"]:
                    ctx.error(sub, f"must be < {md['lt']}, got {x!r}")
            kwargs[name] = v
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.error(sub, "required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        for k, reason in check():
            ctx.error(f"{key}.{k}" if key else k, reason)
    return obj


# --------------------------------------------------------------------------- common sections


@dataclass(frozen=True)
class ScenarioSection:
    """The ``[scenario]`` table."""

    kind: str
    name: str = ""
    description: str = ""
    mpp: float = param(0.5, gt=0.0, le=100.0, doc="micrometres per pixel")
    size: tuple[int, int] = param((300, 300), ge=8, le=8192, doc="(H, W) in pixels")


@dataclass(frozen=True)
class Normalization:
    """The ``[normalization]`` table: how real images are colour-normalised for this script.

    ``method = "reinhard"`` maps a real RGB image's Lab mean/std onto ``target_mean`` /
    ``target_std`` (:func:`synth.color.reinhard_normalize`) before statistics are estimated
    and before inference; ``"none"`` leaves images as they are.
    """

    method: Literal["none", "reinhard"] = "none"
    target_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    target_std: tuple[float, float, float] = param((1.0, 1.0, 1.0), gt=0.0)
    reference: str = ""


_COMMON = {"scenario": ScenarioSection, "normalization": Normalization}


@dataclass(frozen=True)
class ScenarioKind:
    """A registered scenario kind (see the module docstring)."""

    kind: str
    sections: Mapping[str, Any]
    generate: Callable
    required: tuple[str, ...] = ()
    validate: Callable | None = None
    doc: str = ""
    load_reference: Callable | None = None


_REGISTRY: dict[str, ScenarioKind] = {}


def register_scenario(kind: str, *, sections: Mapping[str, Any], generate: Callable,
                      required=(), validate: Callable | None = None, doc: str = "",
                      load_reference: Callable | None = None,
                      replace: bool = False) -> ScenarioKind:
    """Register a scenario kind; see the module docstring.

    Raises
    ------
    ValueError
        ``kind`` is already registered (unless ``replace``) or a section name clashes with
        the common sections.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError("scenario kind must be a non-empty string")
    if kind in _REGISTRY and not replace:
        raise ValueError(f"scenario kind {kind!r} is already registered")
    clash = set(sections) & set(_COMMON)
    if clash:
        raise ValueError(f"sections {sorted(clash)} are reserved for all scripts")
    missing = set(required) - set(sections)
    if missing:
        raise ValueError(f"required sections {sorted(missing)} are not declared")
    sk = ScenarioKind(kind, dict(sections), generate, tuple(required), validate, doc,
                      load_reference)
    _REGISTRY[kind] = sk
    return sk


def _ensure_builtin():
    if "scenario1" not in _REGISTRY:
        importlib.import_module("synth.layered")


def get_scenario(kind: str) -> ScenarioKind:
    """Return the registered kind, importing ``synth.<kind>`` on first use.

    Raises
    ------
    KeyError
        No such kind is registered and no module ``synth.<kind>`` registers it.
    """
    _ensure_builtin()
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
    _ensure_builtin()
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
