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
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import tomli_w

from drencoder.accounting.relation import Relation, resolve_relation
from drencoder.config.methods import spec_for
from drencoder.config.schema import PRESETS, CodecBasis, Method, RunConfig, ServerOptimizer
from drencoder.errors import ConfigError
from drencoder.lora.settings import SentBlocks
from drencoder.mechanisms.options import (
    Aggregation,
    ClipPoint,
    NoisePlacement,
    PrivacyUnit,
    RecordSpace,
    Sampling,
)


def _closest(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _describe(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _coerce(key: str, tp: Any, value: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(key, args[0], value, meta)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[]", inner, v, {}) for v in value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except (ValueError, ConfigError):
            raise ConfigError(f"{key} must be {_describe(tp)}, got {value!r}") from None
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
    _check_range(key, value, meta)
    return value


def _check_range(key: str, value: Any, meta: dict) -> None:
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


def is_device(value: object) -> bool:
    """Whether ``value`` names a torch device drencoder runs on: cpu, cuda or cuda:N."""
    return isinstance(value, str) and (
        value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )


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
            kwargs[name] = _coerce(key, tp, value, dict(fields[name].metadata))
    try:
        return dataclasses.replace(default, **kwargs)
    except ConfigError as exc:
        section = prefix.rstrip(".") or "run"
        raise ConfigError(f"[{section}] {exc}") from None


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
    return _apply_method(config, explicit)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _apply_method(config: RunConfig, explicit: set[str]) -> RunConfig:
    """Cross-field rules, read from the method table: FFA-LoRA freezes lora_A; a non-private
    method has no budget."""
    spec = spec_for(config.method)
    if spec.sent is SentBlocks.B_ONLY and config.lora.train_a:
        if "lora.train_a" in explicit:
            raise ConfigError("lora.train_a must be false for method 'ffa-lora-dp' (FFA-LoRA)")
        config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, train_a=False))
    elif spec.sent is not SentBlocks.B_ONLY and not config.lora.train_a:
        raise ConfigError(
            "lora.train_a = false is FFA-LoRA: use method 'ffa-lora-dp', "
            f"got {config.method.value!r}"
        )
    if not spec.private:
        if "target_epsilon" in explicit and config.target_epsilon is not None:
            raise ConfigError(
                "method 'fedavg-lora' adds no noise, so it has no epsilon: "
                "drop target_epsilon or pick a DP method"
            )
        config = dataclasses.replace(config, target_epsilon=None)
    if spec.private and config.target_epsilon is None and config.privacy.noise_multiplier is None:
        raise ConfigError(
            f"method {config.method.value!r} needs privacy.noise_multiplier or target_epsilon "
            "(to calibrate it); both are none"
        )
    if (
        config.privacy.placement is NoisePlacement.CENTRAL
        and config.privacy.aggregation is Aggregation.DECODE_THEN_MEAN
    ):
        raise ConfigError(
            "privacy.aggregation = decode_then_mean needs privacy.placement = local: central "
            "noise is added once to the sum of latents, so there is nothing to decode per client"
        )
    if (
        config.privacy.placement is NoisePlacement.CENTRAL
        and config.privacy.clip_point is ClipPoint.UPDATE
    ):
        raise ConfigError(
            "privacy.clip_point = update needs privacy.placement = local: central noise is "
            "added to the sum of latents, whose sensitivity is only bounded when the latent "
            "itself is clipped"
        )
    _check_record_unit(config, explicit)
    _check_accountant(config)
    _check_server_optimizer(config, explicit)
    _check_adaptive_clipping(config, explicit)
    _check_codec_basis(config, explicit)
    if config.sampling.scheme is Sampling.FIXED and config.sampling.per_round > config.clients:
        raise ConfigError(
            f"sampling.per_round must be <= clients ({config.clients}), "
            f"got {config.sampling.per_round}"
        )
    return config


_BASIS_KEYS = {
    "codec.history_rounds": (CodecBasis.HISTORY,),
    "codec.refresh_every": (CodecBasis.HISTORY, CodecBasis.PROXY),
    "codec.proxy_examples": (CodecBasis.PROXY,),
    "codec.proxy_updates": (CodecBasis.PROXY,),
    "codec.sketch_width": (CodecBasis.SKETCH,),
    "codec.sketch_clip_norm": (CodecBasis.SKETCH,),
    "codec.sketch_noise_multiplier": (CodecBasis.SKETCH,),
}


def _check_codec_basis(config: RunConfig, explicit: set[str]) -> None:
    """codec.basis is an option of dr-encoder; each basis's keys need that basis."""
    basis = config.codec.basis
    if basis is not CodecBasis.AUTOENCODER and not spec_for(config.method).takes_codec_basis:
        raise ConfigError(
            f"codec.basis = {basis.value!r} is a codec option of method 'dr-encoder', got "
            f"method {config.method.value!r} (whose codec is fixed); use method = "
            "'dr-encoder' or drop codec.basis"
        )
    defaults = RunConfig().codec
    for key, bases in _BASIS_KEYS.items():
        name = key.split(".")[1]
        changed = getattr(config.codec, name) != getattr(defaults, name)
        # A default value is accepted anywhere: a resolved config.toml lists every key.
        if key in explicit and changed and basis not in bases:
            raise ConfigError(
                f"{key} applies to codec.basis = {' or '.join(b.value for b in bases)}, got "
                f"codec.basis = {basis.value!r}; drop {key} or change codec.basis"
            )
    if basis is CodecBasis.SKETCH and config.codec.sketch_width > config.lora.rank:
        raise ConfigError(
            f"codec.sketch_width must be <= lora.rank ({config.lora.rank}): it sketches the "
            f"rank side of each LoRA matrix, got sketch_width = {config.codec.sketch_width}"
        )
    if basis is not CodecBasis.AUTOENCODER and config.privacy.unit is PrivacyUnit.RECORD:
        raise ConfigError(
            f"codec.basis = {basis.value!r} is not wired for privacy.unit = record yet; use "
            "privacy.unit = client or codec.basis = autoencoder"
        )


_OPTIMIZER_KEYS = {
    "server.momentum": (ServerOptimizer.MOMENTUM, ServerOptimizer.ADAM),
    "server.beta2": (ServerOptimizer.ADAM,),
    "server.adaptivity": (ServerOptimizer.ADAM,),
}


def _check_server_optimizer(config: RunConfig, explicit: set[str]) -> None:
    """A server-optimizer key set explicitly must be one the chosen optimizer reads."""
    chosen, defaults = config.server.optimizer, RunConfig().server
    for key, users in _OPTIMIZER_KEYS.items():
        name = key.split(".")[1]
        changed = getattr(config.server, name) != getattr(defaults, name)
        # A default value is accepted anywhere: a resolved config.toml lists every key.
        if key in explicit and changed and chosen not in users:
            raise ConfigError(
                f"{key} has no effect with server.optimizer = {chosen.value!r} (it is read by "
                f"{' and '.join(repr(u.value) for u in users)}): drop it or choose that "
                "optimizer"
            )


def _expected_clients(config: RunConfig) -> float:
    s = config.sampling
    return s.rate * config.clients if s.scheme is Sampling.POISSON else float(s.per_round)


def _check_adaptive_clipping(config: RunConfig, explicit: set[str]) -> None:
    """Adaptive clipping (privacy.clip_quantile) needs a clipped, centrally noised method
    and enough count noise; its other keys need it."""
    from drencoder.federated.adaptive_clipping import default_count_noise, update_noise_multiplier

    p, defaults = config.privacy, RunConfig().privacy
    if p.clip_quantile is None:
        for key in ("privacy.clip_lr", "privacy.clip_count_noise"):
            name = key.split(".")[1]
            changed = getattr(p, name) != getattr(defaults, name)
            if key in explicit and changed:
                raise ConfigError(
                    f"{key} has no effect without adaptive clipping: set "
                    "privacy.clip_quantile (e.g. 0.5) or drop it"
                )
        return
    if not spec_for(config.method).private:
        raise ConfigError(
            "privacy.clip_quantile needs a DP method: 'fedavg-lora' does not clip; drop "
            "privacy.clip_quantile or pick a DP method"
        )
    if p.placement is not NoisePlacement.CENTRAL:
        raise ConfigError(
            "privacy.clip_quantile (adaptive clipping) needs privacy.placement = central: the "
            "noisy count of unclipped clients is released once by the aggregator, which adds "
            "its noise to the sum of the clients' bits. With local noise every client would "
            "have to noise its own bit before upload, a release of its own that this "
            "accounting does not cover. Use placement = central, or a fixed clip norm "
            "(privacy.clip_quantile = none)"
        )
    sigma_b = (
        p.clip_count_noise
        if p.clip_count_noise is not None
        else default_count_noise(_expected_clients(config))
    )
    if p.noise_multiplier is not None:
        # A fixed noise multiplier is the round's effective z; the update gets z_update.
        try:
            update_noise_multiplier(p.noise_multiplier, sigma_b)
        except ConfigError as exc:
            raise ConfigError(
                f"privacy.noise_multiplier = {p.noise_multiplier:g} is the round's effective "
                f"multiplier under adaptive clipping; {exc}"
            ) from None


def _check_record_unit(config: RunConfig, explicit: set[str]) -> None:
    """Record-level DP (privacy.unit = record) needs a DP method and replaces the
    client-level mechanism; its latent option needs a codec."""
    p, defaults = config.privacy, RunConfig().privacy
    if p.unit is PrivacyUnit.CLIENT:
        if p.record_space is not RecordSpace.LORA:
            raise ConfigError(
                f"privacy.record_space = {p.record_space.value!r} has no effect with "
                "privacy.unit = 'client': set privacy.unit = record (DP-SGD in each client) "
                "or drop privacy.record_space"
            )
        return
    if not spec_for(config.method).private:
        raise ConfigError(
            "privacy.unit = record needs a DP method: 'fedavg-lora' adds no noise; pick "
            "dp-fedavg-lora, ffa-lora-dp, dp-random-projection or dr-encoder, or drop "
            "privacy.unit"
        )
    if p.record_space is RecordSpace.LATENT and not spec_for(config.method).has_codec:
        with_codec = [m.value for m in Method if spec_for(m).has_codec]
        raise ConfigError(
            f"privacy.record_space = latent needs a method with a codec "
            f"({', '.join(with_codec)}); {config.method.value!r} sends "
            "the LoRA update itself, so its latent is the LoRA space: use record_space = lora"
        )
    # The client-level mechanism is off with the record unit (not stacked): its keys
    # would silently do nothing, so a changed value is refused.
    for key, why in (
        ("placement", "no noise is added to the sent update (DP-SGD noises every step)"),
        ("clip_point", "the sent update is not clipped (DP-SGD clips every example)"),
        ("clip_quantile", "adaptive clipping adapts the client-level clip norm"),
    ):
        value = getattr(p, key)
        if value != getattr(defaults, key):
            shown = value.value if isinstance(value, enum.Enum) else value
            raise ConfigError(
                f"privacy.{key} = {shown!r} applies to client-level DP; with privacy.unit = "
                f"record {why}. Drop privacy.{key} or use privacy.unit = client"
            )


def _check_accountant(config: RunConfig) -> None:
    """The budget accountant must give a valid bound for this run's events."""
    if not spec_for(config.method).private:
        return
    p, s = config.privacy, config.sampling
    if p.unit is PrivacyUnit.RECORD:
        # Every DP-SGD step is Poisson-subsampled (q = batch / examples, below 1 unless a
        # client holds no more examples than a batch).
        if p.accountant == "gdp":
            raise ConfigError(
                "privacy.accountant = gdp cannot decide the budget of record-level DP-SGD: "
                "its steps are Poisson-subsampled and GDP is then a central-limit "
                "approximation that can understate epsilon; use pld (default) or rdp. GDP "
                "is still reported."
            )
        if p.accountant == "rdp" and p.relation == Relation.REPLACE_ONE.value:
            raise ConfigError(
                "privacy.accountant = rdp cannot account Poisson-subsampled DP-SGD steps "
                "under privacy.relation = replace-one (dp-accounting's RDP has no such "
                "analysis); use pld (default) or relation = auto (add-remove)"
            )
        return
    amplified = (
        p.placement is NoisePlacement.CENTRAL and s.scheme is Sampling.POISSON and s.rate < 1
    )
    if not amplified:
        return
    if p.accountant == "gdp":
        raise ConfigError(
            "privacy.accountant = gdp cannot decide the budget of a run with central noise and "
            f"Poisson sampling (rate {s.rate:g}): GDP is then a central-limit approximation "
            "that can understate epsilon (calibrated for 8 at q = 0.25, T = 10 it gives a PLD "
            "epsilon of 9.45); use pld (default) or rdp. GDP is still reported."
        )
    relation = resolve_relation(p.relation, placement=p.placement.value, sampling=s.scheme.value)
    if p.accountant == "rdp" and relation is Relation.REPLACE_ONE:
        raise ConfigError(
            "privacy.accountant = rdp cannot account Poisson sampling under "
            "privacy.relation = replace-one (dp-accounting's RDP has no such analysis); "
            "use pld (default)"
        )


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
