"""Local LoRA training: a fixed number of optimizer steps on causal-LM loss.

This is the non-private inner loop a client runs in one round. Privacy comes later, on the
update Δ (clip + noise in ``mechanisms/``); ``max_grad_norm`` here is ordinary gradient
clipping for stability and gives no DP guarantee.

Choices:

* The optimizer is created fresh on every call, so no moment estimates carry over from
  one round to the next (or from one client to another on the shared simulator model).
* Only parameters with ``requires_grad`` are optimized: with LoRA attached, the adapter
  matrices (``lora_B`` only under FFA-LoRA).
* Batches are used in order, one per step, starting over from the beginning when the
  iterable is exhausted (a list or a ``DataLoader``; a one-shot generator that runs out
  raises ``ConfigError``). Each batch is a mapping with ``input_ids``, ``labels`` and
  optionally ``attention_mask`` and ``choice_ids``; label -100 is ignored. The loss is the
  model's own shifted cross-entropy, averaged over the batch's non-ignored tokens; with
  ``choice_ids`` (``data.loss_on = "letters"``) it is the cross-entropy of the labelled
  letter over the logits of the choices' letters only (:func:`letters_cross_entropy`).
* Randomness (LoRA dropout, any dropout in the base model) is drawn inside a forked RNG
  scope seeded with ``seed``: the run is a function of its inputs and the caller's global
  RNG state is untouched. With the defaults no random numbers are drawn at all.
* Every module's train/eval mode is restored afterwards and gradients are cleared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from drencoder.errors import ConfigError, DrencoderError
from drencoder.lora._modes import training_mode
from drencoder.lora._rng import seeded


class TrainingError(DrencoderError):
    """Local training produced a non-finite loss."""


class OptimizerName(StrEnum):
    ADAMW = "adamw"
    SGD = "sgd"


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one client's local training in one round."""

    lr: float = field(
        default=5e-4, metadata={"help": "Learning rate of the local optimizer (> 0)."}
    )
    steps: int = field(
        default=2, metadata={"help": "Optimizer steps per round, one batch each (>= 1)."}
    )
    optimizer: OptimizerName = field(
        default=OptimizerName.ADAMW,
        metadata={"help": "Local optimizer: 'adamw' (betas 0.9/0.999, eps 1e-8) or 'sgd'."},
    )
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "Weight decay (decoupled for AdamW, L2 for SGD), >= 0."},
    )
    max_grad_norm: float | None = field(
        default=None,
        metadata={
            "help": "Clip the gradient norm of the trainable parameters to this value "
            "before each step (> 0), or none. Stability only: this is not DP clipping."
        },
    )

    def __post_init__(self) -> None:
        def number(name: str, value, *, low: float, inclusive: bool) -> None:
            ok = (
                not isinstance(value, bool)
                and isinstance(value, int | float)
                and math.isfinite(value)
                and (value >= low if inclusive else value > low)
            )
            if not ok:
                bound = f">= {low:g}" if inclusive else f"> {low:g}"
                raise ConfigError(
                    f"training {name} must be a finite number {bound}, got {name}={value!r}"
                )

        number("lr", self.lr, low=0.0, inclusive=False)
        number("weight_decay", self.weight_decay, low=0.0, inclusive=True)
        if self.max_grad_norm is not None:
            number("max_grad_norm", self.max_grad_norm, low=0.0, inclusive=False)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"training steps must be an integer >= 1, got steps={self.steps!r}")
        try:
            object.__setattr__(self, "optimizer", OptimizerName(self.optimizer))
        except ValueError:
            valid = ", ".join(repr(m.value) for m in OptimizerName)
            raise ConfigError(
                f"training optimizer must be one of {valid}, got optimizer={self.optimizer!r}"
            ) from None


def make_optimizer(params: list[torch.nn.Parameter], settings: TrainSettings):
    """A fresh optimizer over ``params`` as ``settings`` describe."""
    if settings.optimizer is OptimizerName.ADAMW:
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _prepare(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ConfigError(
            f"a training batch must be a mapping with input_ids, labels and optionally "
            f"attention_mask, got {keys}"
        )
    keys = ("input_ids", "attention_mask", "labels", "choice_ids")
    out = {k: batch[k].to(device) for k in keys if k in batch}
    if not (out["labels"][..., 1:] != -100).any():
        raise ConfigError(
            "a training batch has no label to predict (every label after the first "
            "position is -100); drop such batches before training"
        )
    return out


def letters_cross_entropy(
    choice_logits: torch.Tensor, targets: torch.Tensor, choice_ids: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` among ``choice_ids``.

    ``choice_logits`` ``[N, C]`` are the next-token logits of each row's choice letters
    ``choice_ids`` ``[N, C]`` at the N labelled positions, ``targets`` ``[N]`` the labelled
    letter token ids; each target must be one of its row's choices.
    """
    match = choice_ids == targets[:, None]
    if not bool(match.any(1).all()):
        raise ConfigError("a labelled letter is not among its example's choice_ids")
    return torch.nn.functional.cross_entropy(choice_logits.float(), match.float().argmax(1))


def batch_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of one prepared batch (see the module docstring).

    A model that takes ``choice_ids`` itself (``accepts_choice_ids``, the prefix-cached
    top of :mod:`drencoder.lora.prefix`) computes the letters loss where it computes logits;
    for any other model the full logits are formed and the letter positions picked here.
    """
    choice_ids = batch.get("choice_ids")
    if choice_ids is None or getattr(model, "accepts_choice_ids", False):
        return model(**batch).loss
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    logits = model(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    valid = targets != -100
    if not bool((valid.sum(1) == 1).all()):
        raise ConfigError("the letters loss needs exactly one labelled token per example")
    rows = valid.nonzero()[:, 0]
    choices = choice_ids[rows]
    return letters_cross_entropy(logits[valid].gather(1, choices), targets[valid], choices)


def train_local(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    settings: TrainSettings,
    *,
    seed: int,
    progress: bool = False,
    desc: str = "local training",
) -> list[float]:
    """Run ``settings.steps`` optimizer steps; return the loss of each step (before it).

    ``model`` is a causal LM with LoRA attached (``attach_lora``); ``seed`` controls every
    random draw made during training (see module docstring). ``progress`` shows a tqdm
    bar with the running loss.
    """
    from tqdm.auto import tqdm

    if not isinstance(settings, TrainSettings):
        raise ConfigError(f"settings must be a TrainSettings, got {type(settings).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            "the model has no trainable parameters; attach a LoRA adapter first (attach_lora)"
        )
    device = params[0].device
    optimizer = make_optimizer(params, settings)
    losses: list[float] = []
    iterator = iter(batches)
    try:
        with (
            training_mode(model, True),
            seeded(seed, model),
            tqdm(total=settings.steps, desc=desc, disable=not progress, leave=False) as bar,
        ):
            for step in range(settings.steps):
                try:
                    batch = next(iterator)
                except StopIteration:
                    iterator = iter(batches)
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        raise ConfigError(
                            f"ran out of batches after {step} of {settings.steps} steps; "
                            "pass a re-iterable (list, DataLoader) or enough batches"
                        ) from None
                optimizer.zero_grad(set_to_none=True)
                loss = batch_loss(model, _prepare(batch, device))
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"local training loss is {loss.item()} at step {step}; lower the "
                        f"learning rate (lr={settings.lr:g}) or set max_grad_norm"
                    )
                loss.backward()
                if settings.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update()
    finally:
        optimizer.zero_grad(set_to_none=True)
    return losses
