"""The server optimizer: how the decoded mean update Δ̄ moves the global adapter.

Everything here is post-processing of the DP aggregate and costs no privacy. ``server.lr``
is η, ``server.optimizer`` one of:

- ``sgd`` (default): θ ← θ + η·Δ̄, exactly :func:`drencoder.lora.apply_delta` with
  ``scale = η`` (bit for bit what a run did before the option existed);
- ``momentum`` (FedAvgM; Hsu, Qi and Brown 2019, "Measuring the effects of non-identical
  data distribution for federated visual classification"): m ← β·m + Δ̄, θ ← θ + η·m;
- ``adam`` (FedAdam; Reddi et al. 2021, "Adaptive Federated Optimization"):
  m ← β₁m + (1−β₁)Δ̄, v ← β₂v + (1−β₂)Δ̄², θ ← θ + η·m/(√v + τ).

Why an explicit implementation rather than ``torch.optim``: ``torch.optim.Adam`` always
applies bias correction (m/(1−β₁ᵗ), v/(1−β₂ᵗ)) and adds ε to the corrected √v̂, which is
not FedAdam's update (no bias correction, τ added to √v). ``torch.optim.SGD(momentum=β,
dampening=0)`` on the pseudo-gradient −Δ̄ does give FedAvgM (a test checks it), but it
binds its state to parameter objects and keys it by parameter index; the global adapter
here is a dict of tensors that a round replaces, and the state is checkpointed by adapter
key (``m/<key>``, ``v/<key>`` in safetensors, the step count in JSON), so a few explicit
lines are simpler and keep one code path for both.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from drencoder.config import ServerConfig, ServerOptimizer
from drencoder.errors import CheckpointError
from drencoder.lora import apply_delta


class GlobalOptimizer:
    """The server optimizer of :mod:`this module <drencoder.federated.server.optimizer>`.

    :meth:`apply` takes the global state and the decoded update (a dict over the sent
    keys, possibly a subset of the state's) and returns the new state. Its moments live on
    the update's device, keyed like the update.
    """

    def __init__(self, settings: ServerConfig) -> None:
        self.kind = ServerOptimizer(settings.optimizer)
        self.lr = float(settings.lr)
        self.beta1 = float(settings.momentum)
        self.beta2 = float(settings.beta2)
        self.tau = float(settings.adaptivity)
        self.steps = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def apply(
        self, state: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One server step with the decoded mean update ``delta`` (Δ̄)."""
        self.steps += 1
        if self.kind is ServerOptimizer.SGD:
            return apply_delta(state, delta, scale=self.lr)
        d = {k: v.to(torch.float32) for k, v in delta.items()}
        # Moments restored from a checkpoint are on the CPU; they follow the update.
        self.m = {k: t.to(d[k].device) if k in d else t for k, t in self.m.items()}
        self.v = {k: t.to(d[k].device) if k in d else t for k, t in self.v.items()}
        if self.kind is ServerOptimizer.MOMENTUM:
            for k, dk in d.items():
                prev = self.m.get(k)
                self.m[k] = dk.clone() if prev is None else self.beta1 * prev + dk
            return apply_delta(state, self.m, scale=self.lr)
        step = {}
        b1, b2 = self.beta1, self.beta2
        for k, dk in d.items():
            m, v = self.m.get(k), self.v.get(k)
            m = (1 - b1) * dk if m is None else b1 * m + (1 - b1) * dk
            v = (1 - b2) * dk.square() if v is None else b2 * v + (1 - b2) * dk.square()
            self.m[k], self.v[k] = m, v
            step[k] = m / (v.sqrt() + self.tau)
        return apply_delta(state, step, scale=self.lr)

    # -- checkpoints -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The moments, for ``optimizer.safetensors`` (empty for ``sgd``)."""
        out = {f"m/{k}": t for k, t in self.m.items()}
        out.update({f"v/{k}": t for k, t in self.v.items()})
        return out

    def state_scalars(self) -> dict:
        """What goes beside the tensors in the checkpoint's JSON."""
        return {"optimizer": self.kind.value, "steps": self.steps}

    def load(self, tensors: Mapping[str, torch.Tensor], scalars: Mapping) -> None:
        """Restore :meth:`state_tensors` and :meth:`state_scalars`; ``CheckpointError``
        when they were written by another optimizer or lack the moments it needs."""
        kind = scalars.get("optimizer", ServerOptimizer.SGD.value)
        if kind != self.kind.value:
            raise CheckpointError(
                f"the checkpoint's server optimizer state is for {kind!r}, this config uses "
                f"{self.kind.value!r}; resume with the run's own config.toml, or start a new "
                "run with --out"
            )
        try:
            steps = int(scalars.get("steps", 0))
        except (TypeError, ValueError):
            raise CheckpointError(
                f"the checkpoint's server optimizer step count {scalars.get('steps')!r} is "
                "not an integer; start a new run with --out"
            ) from None
        m = {k[2:]: t for k, t in tensors.items() if k.startswith("m/")}
        v = {k[2:]: t for k, t in tensors.items() if k.startswith("v/")}
        needs_m = self.kind is not ServerOptimizer.SGD
        needs_v = self.kind is ServerOptimizer.ADAM
        if steps > 0 and ((needs_m and not m) or (needs_v and set(v) != set(m))):
            raise CheckpointError(
                f"the checkpoint's optimizer.safetensors lacks the {self.kind.value} moments "
                f"after {steps} server steps; restore the file from a backup, or start a new "
                "run with --out"
            )
        self.steps, self.m, self.v = steps, dict(m), dict(v)
