"""Parsing primitives of scenario scripts: :class:`ScriptError`, :func:`param` (a dataclass
field with bounds), :class:`ParseContext`, :func:`parse_dataclass`, and the sections every
script has (``[scenario]``, ``[normalization]``).

The bottom of ``synth``: every generator module declares its sections with these, and
:mod:`synth.script` (which imports the generator modules) parses whole scripts with them, so
no module below the script parser imports it (no import cycle).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from vnumba.ops.fields import bounded, numbers_in

__all__ = ["ScriptError", "param", "ParseContext", "parse_dataclass", "ScenarioSection",
           "Normalization"]


class ScriptError(ValueError):
    """Invalid scenario script; the message names the file, the key and the reason."""

    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


#: A dataclass field with bounds that :func:`parse_dataclass` enforces: the bounded fields of
#: :mod:`vnumba.ops.fields` (bounds apply to a number or to every number inside a tuple).
param = bounded


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
            bounds = f.metadata.get("bounds")
            for x in numbers_in(v) if bounds is not None else ():
                reason = bounds.violation(x)
                if reason:
                    ctx.error(sub, reason)
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
