"""The run configuration: frozen dataclasses loaded from TOML, validated at load time.

One TOML file, ``--set key=value`` overrides and named presets all feed one loader.
Keys are dotted paths (``privacy.clip_norm``); ``method``, ``rounds``,
``clients``, ``target_epsilon``, ``delta`` and ``seed`` are top-level. Unknown keys are
refused with the closest known key. Every error names the key, the value and what is
allowed, as a ``ConfigError`` (exit code 2 in the CLI). Sections that are library settings
(``[lora]`` = ``LoraSettings``, ``[local]`` = ``TrainSettings``) validate themselves;
the others validate here. ``none`` (a TOML string) stands for "not set" where allowed.

Precedence: defaults < preset < config file < ``--set``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import tomllib
import typing
from pathlib import Path
from typing import Any

import tomli_w

from drencoder.config import rules
from drencoder.config.fields import coerce
from drencoder.config.schema import PRESETS, RunConfig
from drencoder.errors import ConfigError


def _closest(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


RENAMED = {
    "privacy.secure_rng": "privacy.secure_rng was replaced by privacy.reproducible_noise: DP "
    "noise now comes from OS entropy unless privacy.reproducible_noise = true; drop the key",
}
"""Keys that no longer exist, with what to do instead."""


def _build(cls: type, data: dict[str, Any], prefix: str, default: Any = None) -> Any:
    """``cls`` from ``data``; keys absent from ``data`` keep the values of ``default``."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table, got {data!r}")
    if default is None:
        default = cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if prefix + name in RENAMED:
            raise ConfigError(RENAMED[prefix + name])
        if name not in fields:
            known = sorted(fields)
            raise ConfigError(
                f"unknown config key {prefix + name!r}{_closest(name, known)}; "
                f"known keys{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: "
                f"{', '.join(known)}"
            )
    kwargs = {}
    for name, value in data.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            sub_default = getattr(default, name) if default is not None else None
            kwargs[name] = _build(tp, value, key + ".", sub_default)
        else:
            kwargs[name] = coerce(key, tp, value, dict(fields[name].metadata))
    try:
        return dataclasses.replace(default, **kwargs)
    except ConfigError as exc:
        if not prefix:  # RunConfig's own rules name their keys
            raise
        raise ConfigError(f"[{prefix.rstrip('.')}] {exc}") from None


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"malformed config key {key!r}: use dotted names like privacy.clip_norm")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any], prefix: str = "") -> None:
    for key, value in extra.items():
        if isinstance(value, dict):
            _merge(base, value, f"{prefix}{key}.")
        else:
            _set_dotted(base, prefix + key, value)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value; bare words are strings (``method=dr-encoder``)."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(f"--set needs key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(
    path: str | Path | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str = "default",
) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a preset, a TOML file and overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    tree: dict[str, Any] = {}
    for key, value in PRESETS[preset].items():
        _set_dotted(tree, key, value)
    explicit: set[str] = set()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}; check the --config path") from None
        except IsADirectoryError:
            raise ConfigError(
                f"config file {path} is a directory; --config takes a TOML file"
            ) from None
        except PermissionError:
            raise ConfigError(
                f"config file {path} is not readable (permission denied); fix its permissions"
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "TOML files must be UTF-8 text"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not valid TOML: {exc}; fix that line "
                "(see docs/running.md for the keys)"
            ) from None
        _merge(tree, data)
        explicit |= set(_flatten(data))
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        explicit.add(key)
    config = _build(RunConfig, tree, "")
    flat = _flatten(tree)
    rules.explicit_conflicts(config, {k: flat[k] for k in explicit if k in flat})
    return config


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A TOML-ready dict: enums as strings, tuples as lists, None as ``"none"``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, enum.Enum):
            out[f.name] = value.value
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        elif value is None:
            out[f.name] = "none"
        else:
            out[f.name] = value
    return out


def dump_toml(config: RunConfig) -> str:
    data = to_dict(config)
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    return tomli_w.dumps({**top, **sections})


def describe_keys() -> list[tuple[str, str, str]]:
    """``(dotted key, default as TOML, help)`` for every key, for the docs."""
    rows: list[tuple[str, str, str]] = []

    def walk(instance: Any, prefix: str) -> None:
        values = to_dict(instance)
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            else:
                shown = " ".join(tomli_w.dumps({"v": values[f.name]}).split())[4:]
                shown = shown.replace("[ ", "[").replace(", ]", "]")
                rows.append((prefix + f.name, shown, f.metadata.get("help", "")))

    walk(RunConfig(), "")
    return rows
