"""The run configuration's cross-field rules, read from the method table.

:class:`~drencoder.config.schema.RunConfig` applies them whenever it is built (from TOML,
``--set``, presets or in Python): :func:`normalized` gives the fields the method fixes
(FFA-LoRA freezes ``lora_A``; a non-private method has no budget) and :func:`check` refuses
what cannot run or would silently do nothing. "Changed" keys are those that differ from
their defaults: a key left at its default is accepted anywhere (a resolved
``config.toml`` lists every key). The loader adds :func:`explicit_conflicts`: a key *set*
to a value the method overrides is an error, not a silent change.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from drencoder.accounting.relation import Relation, resolve_relation
from drencoder.config.methods import Method, spec_for
from drencoder.config.options import CodecBasis, ServerOptimizer
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


def normalized(config) -> dict[str, Any]:
    """The top-level fields the method table fixes, with their fixed values: FFA-LoRA
    freezes ``lora_A``; a non-private method has no budget (``target_epsilon = none``)."""
    spec = spec_for(config.method)
    out: dict[str, Any] = {}
    if spec.sent is SentBlocks.B_ONLY and config.lora.train_a:
        out["lora"] = dataclasses.replace(config.lora, train_a=False)
    if not spec.private and config.target_epsilon is not None:
        out["target_epsilon"] = None
    return out


def explicit_conflicts(config, requested: Mapping[str, Any]) -> None:
    """Refuse a key the user set (``requested``: dotted key to the raw value) that the
    method table overrides in ``config``."""
    spec = spec_for(config.method)
    if spec.sent is SentBlocks.B_ONLY and requested.get("lora.train_a") is True:
        raise ConfigError(
            f"lora.train_a must be false for method {config.method.value!r} (FFA-LoRA)"
        )
    eps = requested.get("target_epsilon", None)
    if not spec.private and eps is not None and not (isinstance(eps, str) and eps == "none"):
        raise ConfigError(
            f"method {config.method.value!r} adds no noise, so it has no epsilon: "
            "drop target_epsilon or pick a DP method"
        )


def check(config, changed: set[str]) -> None:
    """Every cross-field rule; ``changed`` holds the dotted keys that differ from their
    defaults."""
    spec = spec_for(config.method)
    if spec.sent is not SentBlocks.B_ONLY and not config.lora.train_a:
        raise ConfigError(
            "lora.train_a = false is FFA-LoRA: use method 'ffa-lora-dp', "
            f"got {config.method.value!r}"
        )
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
    _check_record_unit(config, changed)
    _check_accountant(config)
    _check_server_optimizer(config, changed)
    _check_adaptive_clipping(config, changed)
    _check_codec_basis(config, changed)
    if config.sampling.scheme is Sampling.FIXED and config.sampling.per_round > config.clients:
        raise ConfigError(
            f"sampling.per_round must be <= clients ({config.clients}), "
            f"got {config.sampling.per_round}"
        )


_BASIS_KEYS = {
    "codec.history_rounds": (CodecBasis.HISTORY,),
    "codec.refresh_every": (CodecBasis.HISTORY, CodecBasis.PROXY),
    "codec.proxy_examples": (CodecBasis.PROXY,),
    "codec.proxy_updates": (CodecBasis.PROXY,),
    "codec.sketch_width": (CodecBasis.SKETCH,),
    "codec.sketch_clip_norm": (CodecBasis.SKETCH,),
    "codec.sketch_noise_multiplier": (CodecBasis.SKETCH,),
}


def _check_codec_basis(config, changed: set[str]) -> None:
    """codec.basis is an option of dr-encoder; each basis's keys need that basis."""
    basis = config.codec.basis
    if basis is not CodecBasis.AUTOENCODER and not spec_for(config.method).takes_codec_basis:
        raise ConfigError(
            f"codec.basis = {basis.value!r} is a codec option of method 'dr-encoder', got "
            f"method {config.method.value!r} (whose codec is fixed); use method = "
            "'dr-encoder' or drop codec.basis"
        )
    for key, bases in _BASIS_KEYS.items():
        if key in changed and basis not in bases:
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


def _check_server_optimizer(config, changed: set[str]) -> None:
    """A server-optimizer key set (changed from its default) must be one the chosen
    optimizer reads."""
    chosen = config.server.optimizer
    for key, users in _OPTIMIZER_KEYS.items():
        if key in changed and chosen not in users:
            raise ConfigError(
                f"{key} has no effect with server.optimizer = {chosen.value!r} (it is read by "
                f"{' and '.join(repr(u.value) for u in users)}): drop it or choose that "
                "optimizer"
            )


def _expected_clients(config) -> float:
    s = config.sampling
    return s.rate * config.clients if s.scheme is Sampling.POISSON else float(s.per_round)


def _check_adaptive_clipping(config, changed: set[str]) -> None:
    """Adaptive clipping (privacy.clip_quantile) needs a clipped, centrally noised method
    and enough count noise; its other keys need it."""
    from drencoder.federated.adaptive_clipping import default_count_noise, update_noise_multiplier

    p = config.privacy
    if p.clip_quantile is None:
        for key in ("privacy.clip_lr", "privacy.clip_count_noise"):
            if key in changed:
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


def _check_record_unit(config, changed: set[str]) -> None:
    """Record-level DP (privacy.unit = record) needs a DP method and replaces the
    client-level mechanism; its latent option needs a codec."""
    p = config.privacy
    if p.unit is PrivacyUnit.CLIENT:
        if p.record_space is not RecordSpace.LORA:
            raise ConfigError(
                f"privacy.record_space = {p.record_space.value!r} has no effect with "
                "privacy.unit = 'client': set privacy.unit = record (DP-SGD in each client) "
                "or drop privacy.record_space"
            )
        if p.record_group != 1:
            raise ConfigError(
                f"privacy.record_group = {p.record_group} has no effect with privacy.unit = "
                "'client': set privacy.unit = record (DP-SGD in each client) or drop "
                "privacy.record_group"
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
        if f"privacy.{key}" in changed:
            value = getattr(p, key)
            shown = value.value if isinstance(value, enum.Enum) else value
            raise ConfigError(
                f"privacy.{key} = {shown!r} applies to client-level DP; with privacy.unit = "
                f"record {why}. Drop privacy.{key} or use privacy.unit = client"
            )


def _check_accountant(config) -> None:
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
        relation = resolve_relation(
            p.relation,
            placement=p.placement.value,
            sampling=s.scheme.value,
            unit=p.unit.value,
            record_group=p.record_group,
        )
        if p.accountant == "rdp" and relation is Relation.REPLACE_ONE:
            raise ConfigError(
                "privacy.accountant = rdp cannot account Poisson-subsampled DP-SGD steps "
                "under replace-one (privacy.relation = replace-one, or record groups, "
                "privacy.record_group > 1; dp-accounting's RDP has no such analysis); use "
                "pld (default)"
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
