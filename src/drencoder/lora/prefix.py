"""Train and score only the adapted top of a model: the frozen prefix's output, cached.

When every LoRA adapter sits in decoder layers ``start, ..., L-1`` (``lora.layers =
"top:N"``), the hidden states entering layer ``start`` depend only on the tokens and the
frozen base weights. :class:`PrefixCachedLM` computes them once per distinct token
sequence, keeps them in a :class:`StateStore` (memory, or safetensors shards on disk that
later runs reuse), and runs only layers ``start..L-1``, the final norm and the output head
on them. It is called like the causal LM it wraps (``input_ids``, ``attention_mask``,
``labels``, ``position_ids``, ``logits_to_keep``), so local training and multiple-choice
scoring use it unchanged.

Exactness. The top layers see exactly the tensor the full model would feed them: states
are computed per sequence without padding (right padding and masking make padding
invisible to real tokens, and position ids are those the caller passes), then placed at
the caller's real positions; padded positions get zeros, which no real token attends to.
Losses and gradients therefore equal those of the full model up to float rounding of
batched matrix products (tests compare both). The prefix runs without dropout (eval mode):
it is frozen, and a model with dropout inside its frozen layers would only differ in that
noise. With labels, logits are formed only at the labelled positions (and the loss is the
same mean cross-entropy the model computes), which avoids a ``batch × length × vocabulary``
tensor; with the letters loss, only the choice letters' rows of the output head are used.

Only the positions the output needs, in the last layer. Training reads the top's output
at the labelled positions only, and scoring at the last ``logits_to_keep`` positions. In
the last decoder layer every other position's output is discarded, and a position's query
projection, attention output projection and MLP feed only that position's own output
(keys and values feed every later position, so they are computed everywhere). While the
top runs, the last layer's ``self_attn.q_proj``, ``self_attn.o_proj`` and ``mlp`` are
therefore applied to those positions only and give zeros elsewhere
(:func:`needed_positions_only`); with one labelled token per example (the letters loss)
this removes most of the top layer's work. Outputs and gradients at the needed positions
are unchanged, and the batch stays the first dimension, so per-example gradients
(:mod:`drencoder.lora.per_example`) see the same layout. Layers without those submodules
run in full.

How the layers are run. The decoder's own ``forward`` (masks, rotary embeddings, sliding
windows) is called with its ``layers`` list temporarily cut to the prefix (and the final
norm replaced by the identity) or to the top, and ``inputs_embeds`` set to the cached
states; per-layer config lists (``layer_types``) are cut alike. This works for decoders
laid out as ``model.model.layers`` / ``model.model.norm`` (Llama, Qwen2, Mistral, Gemma 3);
:func:`prefix_cached` refuses others.

Disk cache. ``<cache>/prefix-states/<fingerprint>/`` where the fingerprint hashes the
model class, its config, the first adapted layer and every weight of the prefix; a shard is
a safetensors file of tensors named by the hash of their token ids. Shards are written
atomically and only added, so concurrent runs can share a directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from drencoder.errors import ConfigError
from drencoder.lora._modes import training_mode
from drencoder.lora.adapter import adapted_layers
from drencoder.lora.training import letters_cross_entropy

PREFIX_CACHE_MODES = ("disk", "memory", "off")


class StateStore:
    """Prefix hidden states ``[length, hidden]`` by token-sequence key; see module doc.

    ``directory=None`` keeps everything in memory. With a directory, new states wait in
    memory until ``shard_size`` of them are pending (or :meth:`flush`), then go to a new
    shard; stored states are read back lazily through memory-mapped safetensors, so memory
    does not grow with the number of examples cached.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, shard_size: int = 512):
        self.directory = None if directory is None else Path(directory)
        self.shard_size = shard_size
        self._pending: dict[str, torch.Tensor] = {}
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self.computed = 0
        self.seconds = 0.0
        if self.directory is not None and self.directory.is_dir():
            from safetensors import safe_open

            for shard in sorted(self.directory.glob("*.safetensors")):
                with safe_open(str(shard), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                        self._where.setdefault(key, shard)

    @staticmethod
    def key(ids: Sequence[int]) -> str:
        """The key of a token sequence (a hash of its ids)."""
        return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:40]

    def __contains__(self, key: str) -> bool:
        return key in self._pending or key in self._where

    def __len__(self) -> int:
        return len(self._pending) + len(self._where)

    def get(self, key: str) -> torch.Tensor:
        if key in self._pending:
            return self._pending[key]
        shard = self._where[key]
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def put(self, key: str, states: torch.Tensor) -> None:
        self._pending[key] = states.detach().to("cpu").contiguous()
        if self.directory is not None and len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write pending states to a new shard (disk stores; a no-op in memory)."""
        if self.directory is None or not self._pending:
            return
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(sorted(self._pending)).encode()).hexdigest()[:24]
        shard = self.directory / f"{name}.safetensors"
        tmp = shard.with_suffix(f".{os.getpid()}.tmp")
        save_file(dict(self._pending), str(tmp))
        os.replace(tmp, shard)
        for key in self._pending:
            self._where[key] = shard
        self._pending.clear()

    def report(self) -> dict:
        """What this store cost and holds: ``{"computed", "seconds", "stored"}``."""
        return {"computed": self.computed, "seconds": round(self.seconds, 3), "stored": len(self)}


def _decoder(causal_lm) -> torch.nn.Module:
    decoder = getattr(causal_lm, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not hasattr(decoder, "norm"):
        raise ConfigError(
            f"the prefix cache needs a decoder laid out as model.layers and model.norm "
            f"(Llama, Qwen2, Mistral, Gemma 3); {type(causal_lm).__name__} is not. Set "
            "model.prefix_cache = 'off'"
        )
    return decoder


def fingerprint(causal_lm, start: int) -> str:
    """A hash of what the prefix's output depends on: class, config, ``start``, weights."""
    decoder = _decoder(causal_lm)
    digest = hashlib.blake2b(digest_size=16)
    config = {k: v for k, v in causal_lm.config.to_dict().items() if k != "_name_or_path"}
    digest.update(type(causal_lm).__name__.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(start).encode())
    modules = [("embed", decoder.embed_tokens)] + [
        (f"layer{i}", decoder.layers[i]) for i in range(start)
    ]
    for prefix, module in modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            digest.update(f"{prefix}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(
                tensor.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy()
            )
    return digest.hexdigest()


# Submodules of a decoder layer whose output at a position feeds only that position's
# output (Llama, Qwen2, Mistral, Gemma 3 names).
POSITION_LOCAL = ("self_attn.q_proj", "self_attn.o_proj", "mlp")


def _gathered(forward, index: torch.Tensor):
    """``forward`` applied to the positions ``index`` ``[batch, k]`` of its ``[batch, length,
    features]`` input; zeros at every other position."""

    def at_positions(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        picked = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        y = forward(picked, *args, **kwargs)
        out = y.new_zeros((*x.shape[:2], y.shape[-1]))
        return out.scatter(1, index.unsqueeze(-1).expand(-1, -1, y.shape[-1]), y)

    return at_positions


@contextlib.contextmanager
def needed_positions_only(layer: torch.nn.Module, needed: torch.Tensor | None) -> Iterator[None]:
    """While inside, ``layer``'s position-local submodules (:data:`POSITION_LOCAL`) compute
    only the positions where ``needed`` ``[batch, length]`` is true; see module doc.

    Each row computes the same number ``k`` of positions (the most any row needs, padded with
    distinct unneeded positions of that row), so the batch stays the first dimension."""
    if needed is None:
        yield
        return
    k = max(1, int(needed.sum(1).max()))
    if k >= needed.shape[1]:
        yield
        return
    # Needed positions first (in order), then the others; every index distinct in its row.
    order = torch.argsort((~needed).to(torch.int8), dim=1, stable=True)
    index = order[:, :k].to(next(layer.parameters()).device)
    patched = []
    for name in POSITION_LOCAL:
        try:
            module = layer.get_submodule(name)
        except AttributeError:
            continue
        own = module.__dict__.get("forward")
        module.forward = _gathered(module.forward, index)
        patched.append((module, own))
    try:
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


class PrefixCachedLM(torch.nn.Module):
    """A PEFT causal LM whose frozen first ``start`` layers are read from a cache.

    Holds the PEFT model as a submodule (its LoRA parameters are this module's trainable
    parameters). ``accepts_choice_ids``: the letters loss is computed here, at the
    labelled positions only (see :func:`drencoder.lora.training.batch_loss`).
    """

    accepts_choice_ids = True

    def __init__(
        self,
        peft_model,
        *,
        start: int,
        store: StateStore,
        batch_size: int = 32,
        needed_only: bool = True,
    ):
        super().__init__()
        causal_lm = peft_model.get_base_model()
        decoder = _decoder(causal_lm)
        if not 0 < start < len(decoder.layers):
            raise ConfigError(
                f"the prefix cache needs 0 < start < {len(decoder.layers)}, got start={start}"
            )
        self.peft_model = peft_model
        # Plain references (not registered twice as submodules).
        self._parts = {
            "decoder": decoder,
            "head": causal_lm.get_output_embeddings(),
            "config": causal_lm.config,
        }
        self.start = start
        self.store = store
        self.batch_size = batch_size
        # False runs every position of the last layer (for comparison; same results).
        self.needed_only = needed_only
        self.softcap = getattr(causal_lm.config, "final_logit_softcapping", None)

    # -- running part of the decoder ----------------------------------------------------
    @contextlib.contextmanager
    def _only(self, lo: int, hi: int, *, final_norm: bool) -> Iterator[torch.nn.Module]:
        decoder = self._parts["decoder"]
        config = decoder.config
        layers, norm, count = decoder.layers, decoder.norm, config.num_hidden_layers
        types = getattr(config, "layer_types", None)
        try:
            decoder.layers = torch.nn.ModuleList(list(layers)[lo:hi])
            config.num_hidden_layers = hi - lo
            if types is not None:
                config.layer_types = list(types)[lo:hi]
            if not final_norm:
                decoder.norm = torch.nn.Identity()
            yield decoder
        finally:
            decoder.layers, decoder.norm = layers, norm
            config.num_hidden_layers = count
            if types is not None:
                config.layer_types = types

    def _compute(self, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Prefix states of ``rows`` (right-padded batch, no dropout, no gradient)."""
        decoder = self._parts["decoder"]
        device = decoder.embed_tokens.weight.device
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        with (
            training_mode(decoder, False),
            torch.no_grad(),
            self._only(0, self.start, final_norm=False) as prefix,
        ):
            out = prefix(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).last_hidden_state
        return [out[i, : len(r)] for i, r in enumerate(rows)]

    def warm(
        self, rows: Sequence[Sequence[int]], *, progress: bool = False, flush: bool = True
    ) -> int:
        """Compute and store the states of every row not cached yet; how many were new.

        ``flush=False`` leaves new states pending in memory (a disk store writes them when
        a shard fills up or at the next :meth:`StateStore.flush`)."""
        todo: dict[str, Sequence[int]] = {}
        for r in rows:
            key = self.store.key(r)
            if key not in self.store and key not in todo:
                todo[key] = r
        items = sorted(todo.items(), key=lambda kv: len(kv[1]))  # similar lengths together
        with tqdm(
            total=len(items), desc="caching prefix states", unit="seq", disable=not progress
        ) as bar:
            for i in range(0, len(items), self.batch_size):
                chunk = items[i : i + self.batch_size]
                started = time.perf_counter()
                states = self._compute([r for _, r in chunk])
                for (key, _), s in zip(chunk, states, strict=True):
                    self.store.put(key, s)
                self.store.seconds += time.perf_counter() - started
                self.store.computed += len(chunk)
                bar.update(len(chunk))
        if flush:
            self.store.flush()
        return len(items)

    def states(self, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        self.warm(rows, flush=False)
        return [self.store.get(self.store.key(r)) for r in rows]

    # -- the causal-LM interface ----------------------------------------------------------
    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's final logit soft-capping (Gemma), where it has one."""
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._capped(self._parts["head"](hidden))

    def _choice_logits(self, hidden: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` logits of the ``choices`` token ids only: the rows of the output head
        they need, not the whole vocabulary (what the letters loss reads)."""
        head = self._parts["head"]
        logits = torch.einsum("nh,nch->nc", hidden, head.weight[choices])
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[choices]
        return self._capped(logits)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        choice_ids: torch.Tensor | None = None,
        **_: object,
    ):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()
        rows = [input_ids[i][real[i]].tolist() for i in range(input_ids.shape[0])]
        states = self.states(rows)
        device = input_ids.device
        hidden = torch.zeros(
            (*input_ids.shape, states[0].shape[-1]), dtype=states[0].dtype, device=device
        )
        for i, s in enumerate(states):
            hidden[i, real[i]] = s.to(device)
        needed = None
        if self.needed_only and (labels is not None or logits_to_keep):
            needed = torch.zeros_like(real)
            if labels is not None:
                needed[:, :-1] = labels[:, 1:].to(real.device) != -100
            else:
                needed[:, -logits_to_keep:] = True
        layers = self._parts["decoder"].layers
        with (
            self._only(self.start, len(layers), final_norm=True) as top,
            needed_positions_only(layers[-1], needed),
        ):
            hidden = top(
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state
        if labels is None:
            # Contiguous: the output head on a strided slice ran 6-7 times slower on a
            # CPU (torch 2.13, a 262k-token head, measured with one thread).
            kept = hidden[:, -logits_to_keep:].contiguous() if logits_to_keep else hidden
            return CausalLMOutputWithPast(logits=self._logits(kept))
        targets = labels[:, 1:].to(device)
        valid = targets != -100
        at = hidden[:, :-1][valid]
        if choice_ids is None:
            logits = self._logits(at)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[valid])
        else:
            if not bool((valid.sum(1) == 1).all()):
                raise ConfigError("the letters loss needs exactly one labelled token per example")
            choices = choice_ids.to(device)[valid.nonzero()[:, 0]]
            loss = letters_cross_entropy(self._choice_logits(at, choices), targets[valid], choices)
        return CausalLMOutputWithPast(loss=loss)


def prefix_cached(peft_model, *, mode: str, cache_root: str | os.PathLike | None = None):
    """``peft_model`` itself, or a :class:`PrefixCachedLM` over it when its adapters leave a
    frozen prefix and ``mode`` is ``"disk"`` (under ``cache_root``) or ``"memory"``."""
    if mode not in PREFIX_CACHE_MODES:
        raise ConfigError(f"prefix_cache must be one of {PREFIX_CACHE_MODES}, got {mode!r}")
    layers = adapted_layers(peft_model)
    start = min(layers) if layers else 0
    if mode == "off" or start == 0:
        return peft_model
    directory = None
    if mode == "disk":
        if cache_root is None:
            raise ConfigError("prefix_cache = 'disk' needs a cache directory")
        causal_lm = peft_model.get_base_model()
        directory = Path(cache_root) / "prefix-states" / fingerprint(causal_lm, start)
    return PrefixCachedLM(peft_model, start=start, store=StateStore(directory))
