"""Left-padded forward passes that return only the logits at the end of each sequence.

Scoring needs the next-token distribution after the prompt, and held-out loss with
answer-only labels needs a few positions at the end. Left padding puts those positions at
the same columns for every row, so the model can be asked for the last ``keep`` positions
only (``logits_to_keep``), which avoids a ``batch × length × vocabulary`` logits tensor.
``position_ids`` restart at 0 on each row's first real token, so models with absolute
position embeddings (GPT-2) give the same numbers batched as alone; both arguments are
passed only when the model's ``forward`` accepts them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from drencoder.errors import ConfigError


def accepts_kwarg(model, name: str) -> bool:
    """Whether ``model(...)`` takes keyword ``name`` (explicitly or via ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def left_pad(rows: Sequence[Sequence[int]], *, value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tensor, mask)``: ``rows`` right-aligned in a ``len(rows) × longest`` tensor."""
    if not rows or min(len(r) for r in rows) == 0:
        raise ConfigError("left_pad needs at least one row and no empty rows")
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r) :] = torch.as_tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return out, mask


def last_logits(model, ids: torch.Tensor, mask: torch.Tensor, *, keep: int) -> torch.Tensor:
    """Float32 logits of the last ``keep`` positions of a left-padded batch."""
    device = model_device(model)
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if accepts_kwarg(model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
    if accepts_kwarg(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    return model(**kwargs).logits[:, -keep:, :].float()
