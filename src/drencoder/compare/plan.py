"""What a comparison runs: the grid of methods × target ε × seeds (docs/design.md §5).

Every planned run is an ordinary ``drencoder run`` configuration: the user's config
(preset, file, ``--set``) plus ``method``, ``target_epsilon`` and ``seed``, plus any
per-method overrides. σ is calibrated per method for its own ε and its own events (the
DR-Encoder statistics release counts against its budget), so all private methods are
compared at the same ε. ``fedavg-lora`` adds no noise: it runs once per seed and is the
non-private reference shown beside every ε.

``variants`` add arms to the grid beyond the five methods, named ``METHOD+OPTION``:

- ``dr-encoder+BASIS`` (BASIS one of ``codec.basis``: random, history, proxy, sketch,
  energy): DR-Encoder with that structured codec (docs/codecs.md);
- ``dp-fedavg-lora+lr-scaled``: the strawman a codec must beat at the same ε: the full
  update, clipped and noised, with the server learning rate multiplied by
  ``codec.compression_ratio`` (k/d). An orthonormal k-dimensional codec that keeps only a
  random share k/d of the update gives the same expected step with the same noise per
  kept coordinate; a codec is worth its bytes only if it does better than this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drencoder.config import CodecBasis, Method, RunConfig, load_config
from drencoder.config.methods import spec_for
from drencoder.errors import ConfigError

ALL_METHODS = tuple(Method)
DEFAULT_EPSILONS = (2.0, 8.0)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TASKS = ("mmlu",)
STRAWMAN = "lr-scaled"


def variant_overrides(variant: str, base: RunConfig) -> tuple[Method, list[str]]:
    """The method and the ``--set`` overrides of a ``METHOD+OPTION`` variant."""
    method, _, option = variant.partition("+")
    bases = [b.value for b in CodecBasis if b is not CodecBasis.AUTOENCODER]
    if method == Method.DR_ENCODER.value and option in bases:
        return Method.DR_ENCODER, [f"codec.basis={option}"]
    if method == Method.DP_FEDAVG_LORA.value and option == STRAWMAN:
        lr = base.server.lr * base.codec.compression_ratio
        return Method.DP_FEDAVG_LORA, [f"server.lr={lr!r}"]
    valid = [f"dr-encoder+{b}" for b in bases] + [f"dp-fedavg-lora+{STRAWMAN}"]
    raise ConfigError(f"unknown variant {variant!r}; variants: {', '.join(valid)}")


@dataclass(frozen=True)
class CompareSpec:
    """A comparison: which runs, and how each final adapter is scored.

    ``tasks`` are scored on each final adapter with ``drencoder eval``'s scorer, in
    addition to the run's own held-out evaluation (its training task), which the run
    already computed. ``method_overrides`` maps a method to extra ``--set`` overrides for
    that method only (e.g. a clip norm suited to its units).
    """

    methods: tuple[Method, ...] = ALL_METHODS
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    tasks: tuple[str, ...] = DEFAULT_TASKS
    eval_limit: int | None = 200
    shots: int | None = None
    ceval_dir: str | None = None
    config_path: str | None = None
    preset: str = "default"
    overrides: tuple[str, ...] = ()
    method_overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    variants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        methods = tuple(Method(m) for m in self.methods)
        if not methods or len(set(methods)) != len(methods):
            raise ConfigError(f"methods must be distinct and non-empty, got {self.methods}")
        object.__setattr__(self, "methods", methods)
        if any(not e > 0 for e in self.epsilons) or len(set(self.epsilons)) != len(self.epsilons):
            raise ConfigError(f"epsilons must be distinct and > 0, got {self.epsilons}")
        if any(spec_for(m).private for m in methods) and not self.epsilons:
            raise ConfigError("private methods need at least one epsilon (--epsilons 2,8)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"eval_limit must be >= 1 or none, got {self.eval_limit}")
        unknown = sorted(set(self.method_overrides) - {m.value for m in Method})
        if unknown:
            raise ConfigError(
                f"per-method overrides name unknown methods {unknown}; methods: "
                + ", ".join(m.value for m in Method)
            )
        object.__setattr__(self, "variants", tuple(self.variants))
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants must be distinct, got {self.variants}")
        for key in ("method", "target_epsilon", "seed"):
            if any(o.partition("=")[0].strip() == key for o in self.all_overrides()):
                raise ConfigError(
                    f"{key} is set by the comparison itself (--methods, --epsilons, --seeds); "
                    f"drop --set {key}=..."
                )

    def all_overrides(self) -> list[str]:
        return [*self.overrides, *(o for v in self.method_overrides.values() for o in v)]

    def eval_settings(self) -> dict[str, Any]:
        """How final adapters are scored: may change between calls on one comparison."""
        return {"limit": self.eval_limit, "shots": self.shots, "ceval_dir": self.ceval_dir}

    def grid_json(self) -> dict[str, Any]:
        """What defines the runs themselves: must not change within one comparison."""
        full = self.to_json()
        for key in ("tasks", "eval_limit", "shots", "ceval_dir"):
            full.pop(key)
        return full

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CompareSpec:
        """The spec :meth:`to_json` wrote."""
        tuples = ("methods", "epsilons", "seeds", "tasks", "overrides", "variants")
        fields = {k: tuple(v) if k in tuples else v for k, v in data.items()}
        fields["method_overrides"] = {k: tuple(v) for k, v in data["method_overrides"].items()}
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "methods": [m.value for m in self.methods],
            "epsilons": list(self.epsilons),
            "seeds": list(self.seeds),
            "tasks": list(self.tasks),
            "eval_limit": self.eval_limit,
            "shots": self.shots,
            "ceval_dir": self.ceval_dir,
            "config_path": self.config_path,
            "preset": self.preset,
            "overrides": list(self.overrides),
            "method_overrides": {k: list(v) for k, v in sorted(self.method_overrides.items())},
            "variants": list(self.variants),
        }


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid; ``epsilon`` is None for the non-private reference."""

    method: Method
    epsilon: float | None
    seed: int
    config: RunConfig
    variant: str | None = None
    """``METHOD+OPTION`` for a variant arm (see the module doc), else None."""

    @property
    def label(self) -> str:
        """The arm's name in tables: the method, or the variant."""
        return self.variant or self.method.value

    @property
    def name(self) -> str:
        eps = "" if self.epsilon is None else f"_eps{self.epsilon:g}"
        return f"{self.label}{eps}_seed{self.seed}"


def plan_runs(spec: CompareSpec) -> list[PlannedRun]:
    """Every run of ``spec``, each config loaded and validated before anything trains."""
    runs = []
    arms: list[tuple[Method, str | None, list[str]]] = [(m, None, []) for m in spec.methods]
    if spec.variants:
        base = load_config(spec.config_path, overrides=list(spec.overrides), preset=spec.preset)
        for variant in spec.variants:
            method, extra = variant_overrides(variant, base)
            arms.append((method, variant, extra))
    for method, variant, extra in arms:
        epsilons: Sequence[float | None] = spec.epsilons if spec_for(method).private else (None,)
        for eps in epsilons:
            for seed in spec.seeds:
                overrides = [
                    *spec.overrides,
                    *spec.method_overrides.get(method.value, ()),
                    *extra,
                    f"method={method.value}",
                    f"seed={seed}",
                ]
                if eps is not None:
                    overrides.append(f"target_epsilon={eps!r}")
                config = load_config(spec.config_path, overrides=overrides, preset=spec.preset)
                if eps is not None and config.privacy.noise_multiplier is not None:
                    raise ConfigError(
                        "a comparison calibrates sigma per method for each epsilon; drop "
                        "privacy.noise_multiplier from the config and --set"
                    )
                runs.append(
                    PlannedRun(
                        method=method, epsilon=eps, seed=seed, config=config, variant=variant
                    )
                )
    return runs


def check_same_spec(out_dir: Path, spec: CompareSpec) -> None:
    """Write ``compare.json``, or refuse to mix a different grid into an existing one.

    Only the grid (methods, ε, seeds, configuration) must match; the tasks and how they
    are scored may change, and runs are then rescored, not retrained.
    """
    path = out_dir / "compare.json"
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); remove it") from None
        wanted = spec.grid_json()
        changed = sorted(k for k in wanted if found.get(k) != wanted[k])
        if changed:
            raise ConfigError(
                f"{out_dir} holds a comparison with other settings ({', '.join(changed)}); "
                "rerun with the same arguments to continue it, or choose another --out"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_json(), indent=1) + "\n")
