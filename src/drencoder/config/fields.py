"""One value of the run configuration against its field: type, enum, range.

Every config section checks its own fields when it is built (:func:`check_fields`, called
from the sections' ``__post_init__``), so a ``RunConfig`` built in Python is checked as
one loaded from TOML is. The loader (:mod:`drencoder.config.loading`) uses the same
:func:`coerce` on raw TOML and ``--set`` values.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from typing import Any

from drencoder.devices import is_device
from drencoder.errors import ConfigError


def describe(tp: Any) -> str:
    """What a value of type ``tp`` is, in words, for error messages."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def coerce(key: str, tp: Any, value: Any, meta: dict) -> Any:
    """``value`` as a ``tp`` (an enum from its string, an int as a float, a list as a tuple),
    checked against the field's metadata ``meta``; a :class:`ConfigError` naming ``key``
    otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return coerce(key, args[0], value, meta)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(coerce(f"{key}[]", inner, v, {}) for v in value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except (ValueError, ConfigError):
            raise ConfigError(f"{key} must be {describe(tp)}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
    elif tp is str and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    check_range(key, value, meta)
    return value


def check_range(key: str, value: Any, meta: dict) -> None:
    bounds = [
        ("gt", ">", lambda a, b: a > b),
        ("ge", ">=", lambda a, b: a >= b),
        ("lt", "<", lambda a, b: a < b),
        ("le", "<=", lambda a, b: a <= b),
    ]
    for name, _sym, ok in bounds:
        if name in meta and not ok(value, meta[name]):
            allowed = " and ".join(f"{s} {meta[n]:g}" for n, s, _ in bounds if n in meta)
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{key} must be one of {', '.join(map(repr, meta['choices']))}, got {value!r}"
        )
    if meta.get("pattern") == "device" and not is_device(value):
        raise ConfigError(f"{key} must be cpu, cuda or cuda:N, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every non-section field of the dataclass ``obj`` against its type and its
    metadata's range (``gt``/``ge``/``lt``/``le``/``choices``/``pattern``), normalising in
    place what :func:`coerce` converts (an enum's string to the enum, an int to a float)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        checked = coerce(prefix + f.name, hints[f.name], value, dict(f.metadata))
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def changed_keys(config: Any) -> set[str]:
    """The dotted keys of ``config`` (a ``RunConfig``) whose values differ from their
    defaults (a section's default being its class's default instance)."""
    out = set()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            default = _default_instance(type(value))
            out |= {
                f"{f.name}.{g.name}"
                for g in dataclasses.fields(value)
                if getattr(value, g.name) != getattr(default, g.name)
            }
        elif f.default is not dataclasses.MISSING and value != f.default:
            out.add(f.name)
    return out


@functools.cache
def _default_instance(cls: type) -> Any:
    return cls()
