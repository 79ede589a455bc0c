"""Bounded dataclass fields: a number field's range declared once, with its type, and checked
by one function.

A configuration dataclass gives a field a bounded type (:data:`PositiveInt`,
:data:`PositiveOddInt`, :data:`NonNegativeInt`, :data:`PositiveFloat`,
:data:`NonNegativeFloat`, :data:`Fraction`) or, for other ranges, declares it with
:func:`bounded`, and derives from :class:`Checked`, whose ``__post_init__`` checks every such
field with :func:`check_bounds`::

    @dataclass(frozen=True)
    class UNetConfig(Checked):
        width: PositiveInt = 32
        kernel: PositiveOddInt = 3
        lightness: float = bounded(70.0, ge=0, le=100)

    UNetConfig(width=0)          # ValueError: UNetConfig.width must be >= 1, got 0

The scenario scripts of :mod:`synth` declare their fields with :func:`bounded` too
(``synth.params.param``); the script parser reports a broken bound with
:meth:`Bounds.violation` as ``FILE: KEY: must be >= 1, got 0``.  Either message names the
field and the value.  Checks across fields (``rbf_max > rbf_min``) stay in the class's own
``__post_init__``, after ``super().__post_init__()``.

Imports nothing of vnumba (layer 0), so that every layer and :mod:`synth` can use it.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Annotated

__all__ = ["Bounds", "Checked", "bounded", "check_bounds", "numbers_in", "PositiveInt", "PositiveOddInt",
           "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Fraction"]


@dataclass(frozen=True)
class Bounds:
    """``>= ge``, ``> gt``, ``<= le``, ``< lt`` (each None: no bound) and, with ``odd``, odd."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    odd: bool = False

    def violation(self, x) -> str | None:
        """Why the number ``x`` breaks these bounds (``"must be >= 1, got 0"``), or None."""
        if self.ge is not None and not x >= self.ge:
            return f"must be >= {self.ge}, got {x!r}"
        if self.gt is not None and not x > self.gt:
            return f"must be > {self.gt}, got {x!r}"
        if self.le is not None and not x <= self.le:
            return f"must be <= {self.le}, got {x!r}"
        if self.lt is not None and not x < self.lt:
            return f"must be < {self.lt}, got {x!r}"
        if self.odd and x % 2 == 0:
            return f"must be odd, got {x!r}"
        return None


#: An int >= 1 (a count, a size).
PositiveInt = Annotated[int, Bounds(ge=1)]
#: An odd int >= 1 (a kernel size).
PositiveOddInt = Annotated[int, Bounds(ge=1, odd=True)]
#: An int >= 0 (a seed, a minimum count).
NonNegativeInt = Annotated[int, Bounds(ge=0)]
#: A finite number > 0 (a length, a scale).
PositiveFloat = Annotated[float, Bounds(gt=0)]
#: A finite number >= 0.
NonNegativeFloat = Annotated[float, Bounds(ge=0)]
#: A number in [0, 1] (a share, a probability).
Fraction = Annotated[float, Bounds(ge=0, le=1)]


def bounded(default=dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, odd: bool = False,
            doc: str = "", default_factory=dataclasses.MISSING):
    """A dataclass field with :class:`Bounds` of its own (in ``field.metadata["bounds"]``).

    Bounds apply to a number, or to every number inside a (nested) tuple.  ``doc`` describes
    the field.
    """
    md = {"bounds": Bounds(ge, gt, le, lt, odd), "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def numbers_in(v):
    """The numbers of ``v``: ``v`` itself, or those inside a (nested) tuple (bools are not)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        yield v
    elif isinstance(v, tuple):
        for x in v:
            yield from numbers_in(x)


_FIELDS: dict[type, tuple] = {}


def _bounded_fields(cls) -> tuple:
    """``(name, base type, Bounds)`` of each bounded field of the dataclass ``cls``."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls, include_extras=True)
        out = []
        for f in dataclasses.fields(cls):
            hint = hints.get(f.name)
            extras = [b for b in getattr(hint, "__metadata__", ()) if isinstance(b, Bounds)]
            base = typing.get_args(hint)[0] if extras else hint
            bounds = f.metadata.get("bounds") or (extras[0] if extras else None)
            if bounds is not None:
                out.append((f.name, base, bounds))
        _FIELDS[cls] = tuple(out)
    return _FIELDS[cls]


def _type_violation(v, base) -> str | None:
    if base is int and (not isinstance(v, int) or isinstance(v, bool)):
        return f"must be an int, got {v!r}"
    if base is float and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
        return f"must be a finite number, got {v!r}"
    return None


class Checked:
    """Base of a configuration dataclass: its bounded fields are checked on construction.

    A subclass with checks across fields overrides ``__post_init__`` and calls
    ``super().__post_init__()`` first.
    """

    def __post_init__(self):
        check_bounds(self)


def check_bounds(obj) -> None:
    """Check every bounded field of the dataclass instance ``obj``: an ``int`` field holds an
    int (not a bool), a ``float`` field a finite number, and each number keeps the bounds.

    Raises
    ------
    ValueError
        ``CLASS.FIELD must be >= 1, got 0`` for the first field that does not.
    """
    for name, base, bounds in _bounded_fields(type(obj)):
        v = getattr(obj, name)
        reason = _type_violation(v, base)
        for x in () if reason else numbers_in(v):
            reason = bounds.violation(x)
            if reason:
                break
        if reason:
            raise ValueError(f"{type(obj).__name__}.{name} {reason}")
