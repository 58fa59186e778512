"""What each client trains on and what the run is scored on, built from the config.

Everything here is a deterministic function of the config (seed included), so a resumed
run rebuilds exactly the same clients and evaluation set without storing any data.

- ``sentiment``: the packaged Chinese review set (``data.sentiment``), partitioned over
  clients by label (iid or Dirichlet); evaluation on a label-balanced, fixed subset of the
  held-out part.
- ``mmlu``: the project's fine-tuning part of MMLU, partitioned by subject (iid,
  Dirichlet over subjects, or a few subjects per client); evaluation on a fixed subset of
  the held-out part spread over subjects, with few-shot exemplars from the exemplar part.

Each client keeps at most ``data.examples_per_client`` examples (a seeded choice among its
partition), tokenized once. Local batches are drawn per round from an explicit generator.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from drencoder.config import RunConfig, Task
from drencoder.data import (
    MMLU_FORMAT,
    SENTIMENT_FORMAT,
    MCItem,
    PromptFormat,
    build_examples,
    collate,
    item_keys,
    load_mmlu,
    load_sentiment,
    pad_token_id,
    partition,
    take_per_subject,
)
from drencoder.errors import ConfigError


@dataclass
class Workload:
    task: str
    fmt: PromptFormat
    clients: list[list[dict]]
    """Tokenized fine-tuning examples, one list per client."""
    eval_items: list[MCItem]
    pad_token_id: int
    exemplars: Mapping[str, Sequence[MCItem]] | None = None
    description: dict = field(default_factory=dict)

    def batches(
        self, client: int, *, steps: int, batch_size: int, generator: torch.Generator
    ) -> list[dict[str, torch.Tensor]]:
        """``steps`` padded batches for one client's local training in one round.

        Examples are taken in the order of a fresh permutation (drawn from ``generator``),
        wrapping around when ``steps * batch_size`` exceeds the client's data.
        """
        examples = self.clients[client]
        order = torch.randperm(len(examples), generator=generator).tolist()
        need = steps * batch_size
        picks = [order[i % len(order)] for i in range(need)]
        return [
            collate(
                [examples[j] for j in picks[s * batch_size : (s + 1) * batch_size]],
                pad_token_id=self.pad_token_id,
            )
            for s in range(steps)
        ]

    def poisson_batches(
        self,
        client: int,
        *,
        steps: int,
        rate: float,
        generator: torch.Generator,
        group: int = 1,
    ) -> list[dict[str, torch.Tensor] | None]:
        """``steps`` Poisson-sampled batches for record-level DP-SGD: each of the client's
        examples (with ``group`` = m > 1: each fixed group of m consecutive examples, the
        last one possibly shorter) enters each batch independently with probability
        ``rate``; with groups a batch's ``"group"`` holds each row's group. An empty batch is
        None (the step still adds its noise). ``generator`` must be the client's private
        one: which examples a step used is part of the mechanism."""
        examples = self.clients[client]
        n = len(examples)
        n_groups = -(-n // group)
        out: list[dict[str, torch.Tensor] | None] = []
        for _ in range(steps):
            draws = torch.rand(n_groups, generator=generator, dtype=torch.float64)
            chosen = (draws < rate).nonzero().reshape(-1).tolist()
            picks = [j for g in chosen for j in range(g * group, min((g + 1) * group, n))]
            if not picks:
                out.append(None)
                continue
            batch = collate([examples[j] for j in picks], pad_token_id=self.pad_token_id)
            if group > 1:
                batch["group"] = torch.tensor([j // group for j in picks], dtype=torch.long)
            out.append(batch)
        return out


def _balanced(items: Sequence[MCItem], n: int) -> list[MCItem]:
    """``n`` items alternating over answers, each answer's items in uid order."""
    by_answer: dict[int, list[MCItem]] = defaultdict(list)
    for it in sorted(items, key=lambda it: it.uid):
        by_answer[it.answer].append(it)
    queues = [by_answer[a] for a in sorted(by_answer)]
    out: list[MCItem] = []
    i = 0
    while len(out) < min(n, len(items)):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
    return out


def build_workload(config: RunConfig, tokenizer) -> Workload:
    data, task = config.data, config.data.task
    rng = np.random.default_rng([config.seed, 1])
    exemplars = None
    if task is Task.SENTIMENT:
        split = load_sentiment(max_chars=data.max_chars)
        train, fmt = list(split.train), SENTIMENT_FORMAT
        keys = item_keys(train, by="label")
        ev = config.eval
        eval_items = _balanced(split.heldout, ev.offset + ev.questions)[ev.offset :]
        description = {"sentiment": dict(split.report)}
    elif task is Task.MMLU:
        split = load_mmlu()
        train, fmt = list(split.finetune), MMLU_FORMAT
        keys = item_keys(train, by="subject")
        subjects = len(split.exemplars)
        ev = config.eval
        per_subject = math.ceil((ev.offset + ev.questions) / subjects)
        picked = sorted(
            take_per_subject(split.heldout, per_subject=per_subject), key=lambda i: i.uid
        )
        eval_items = picked[ev.offset : ev.offset + ev.questions]
        exemplars = split.exemplars
        counts = split.counts()
        description = {"mmlu": {k: v for k, v in counts.items() if k != "per_subject"}}
    else:  # pragma: no cover - the config enum admits only the tasks above
        raise ConfigError(f"unknown task {task!r}")
    if not eval_items:
        raise ConfigError(
            f"eval.offset = {config.eval.offset} leaves no held-out question to score; "
            "lower eval.offset"
        )
    parts = partition(
        keys,
        scheme=data.partition,
        num_clients=config.clients,
        rng=rng,
        alpha=data.dirichlet_alpha,
    )
    clients: list[list[dict]] = []
    for part in parts:
        chosen = rng.permutation(np.asarray(part))[: data.examples_per_client]
        items = [train[int(i)] for i in sorted(chosen.tolist())]
        clients.append(
            build_examples(
                items, tokenizer, fmt=fmt, max_length=data.max_length, loss_on=data.loss_on
            )
        )
    description.update(
        {
            "examples_per_client": [len(c) for c in clients],
            "eval_questions": len(eval_items),
            "partition": data.partition.value,
        }
    )
    return Workload(
        task=task.value,
        fmt=fmt,
        clients=clients,
        eval_items=eval_items,
        pad_token_id=pad_token_id(tokenizer),
        exemplars=exemplars,
        description=description,
    )


def training_model(model, config: RunConfig):
    """What a client trains and the server scores: ``model`` (a PEFT model) or, when its
    adapters sit above a frozen prefix, the prefix-cached top (``model.prefix_cache``)."""
    from drencoder.lora import prefix_cached
    from drencoder.models.cache import cache_root

    mode = config.model.prefix_cache
    return prefix_cached(model, mode=mode, cache_root=cache_root() if mode == "disk" else None)
