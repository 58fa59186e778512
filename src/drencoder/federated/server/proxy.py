"""Public data the server holds, and the LoRA updates it computes on them (``codec.basis =
proxy``, docs/codecs.md).

What is assumed public: ``codec.proxy_examples`` labelled examples of the run's task that no
client holds and that the run does not score. In the simulation they are taken from the
task's held-out split, from the end of its fixed order (highest ``uid`` first), skipping
every item of the run's evaluation set, so they are disjoint from both the clients' data
(which comes from the fine-tuning split) and the scored questions. A deployment would use
data it may publish: a public corpus of the same task family.

The server trains from the current global adapter exactly as a client does (``local.*``,
``data.batch_size``), once per update, on batches drawn from these examples; the updates
span the subspace. No client data is touched, so the subspace costs no privacy.
"""

from __future__ import annotations

import torch

from drencoder.config import RunConfig, Task
from drencoder.data import build_examples, load_mmlu, load_sentiment
from drencoder.errors import ConfigError
from drencoder.federated.seeds import draw_seed
from drencoder.federated.workload import Workload
from drencoder.lora import Layout, warmup_updates


def proxy_items(config: RunConfig, workload: Workload) -> list:
    """The public items: held-out items of the task, last uid first, none of them scored."""
    if config.data.task is Task.SENTIMENT:
        heldout = load_sentiment(max_chars=config.data.max_chars).heldout
    elif config.data.task is Task.MMLU:
        heldout = load_mmlu().heldout
    else:  # pragma: no cover - the config enum admits only the tasks above
        raise ConfigError(f"no proxy data for task {config.data.task!r}")
    scored = {it.uid for it in workload.eval_items}
    free = [
        it for it in sorted(heldout, key=lambda it: it.uid, reverse=True) if it.uid not in scored
    ]
    n = config.codec.proxy_examples
    if len(free) < n:
        raise ConfigError(
            f"codec.proxy_examples = {n}, but only {len(free)} held-out items are not scored; "
            "lower codec.proxy_examples or eval.questions"
        )
    return free[:n]


def proxy_workload(config: RunConfig, workload: Workload, tokenizer) -> Workload:
    """The server's public examples as a one-client workload (for its batches)."""
    items = proxy_items(config, workload)
    examples = build_examples(
        items,
        tokenizer,
        fmt=workload.fmt,
        max_length=config.data.max_length,
        loss_on=config.data.loss_on,
    )
    return Workload(
        task=workload.task,
        fmt=workload.fmt,
        clients=[examples],
        eval_items=[],
        pad_token_id=workload.pad_token_id,
        description={"proxy_examples": len(examples), "uids": [it.uid for it in items][:8]},
    )


def proxy_updates(
    model,
    global_state: dict[str, torch.Tensor],
    proxy: Workload,
    config: RunConfig,
    *,
    layout: Layout,
    generator: torch.Generator,
) -> torch.Tensor:
    """``codec.proxy_updates`` updates ``[m, d]`` trained from ``global_state`` on the public
    examples, ``local.steps`` steps each; batches and seeds from ``generator``."""
    out = []
    for _ in range(config.codec.proxy_updates):
        batches = proxy.batches(
            0, steps=config.local.steps, batch_size=config.data.batch_size, generator=generator
        )
        seed = draw_seed(generator)
        out += warmup_updates(
            model, global_state, [batches], config.local, layout=layout, seed=seed
        )
    return torch.stack(out)
