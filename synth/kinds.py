"""The registry of scenario kinds (see :mod:`synth.script`, "Scenario-kind registry").

Generator modules register themselves here on import (:func:`register_scenario`);
:mod:`synth.script` imports the built-in ones (:mod:`synth.layered`, :mod:`synth.scenario3`)
and looks kinds up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .params import _COMMON

__all__ = ["ScenarioKind", "register_scenario"]


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
    #: ``mask_classes(script) -> tuple of str``: class names of a per-class target's
    #: channels, ``()`` for the one-channel mask (the default for kinds without it).
    mask_classes: Callable | None = None


_REGISTRY: dict[str, ScenarioKind] = {}


def register_scenario(kind: str, *, sections: Mapping[str, Any], generate: Callable,
                      required=(), validate: Callable | None = None, doc: str = "",
                      load_reference: Callable | None = None,
                      mask_classes: Callable | None = None,
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
                      load_reference, mask_classes)
    _REGISTRY[kind] = sk
    return sk
