"""LoRA adapters: PEFT wrappers, adapter state <-> flat vector, local training.

* ``LoraSettings`` / ``attach_lora``: a seeded, deterministic PEFT LoRA adapter
  (``train_a=False`` is FFA-LoRA).
* ``get_adapter_state`` / ``set_adapter_state`` / ``adapter_layout``: the adapter as a
  ``dict[str, Tensor]`` with PEFT's saved key format, and the ``Layout`` that maps it to a
  flat float32 vector (``sent="b_only"`` for the FFA-LoRA uplink).
* ``adapter_delta`` / ``apply_delta`` / ``assert_adapter_changed``: the update Δ and the
  check that training really moved the adapter.
* ``TrainSettings`` / ``train_local``: the client's local optimizer steps.
* ``prefix_cached``: with adapters only on the top layers, a model that reads the frozen
  prefix's hidden states from a cache and runs only the top (exact).
* ``load_adapter``: a saved PEFT adapter folder (``run_dir/adapter``) onto a base model.
"""

from drencoder.lora.adapter import (
    AdapterUpdateError,
    adapter_delta,
    adapter_layout,
    apply_delta,
    assert_adapter_changed,
    attach_lora,
    block_kind,
    get_adapter_state,
    set_adapter_state,
    trainable_keys,
)
from drencoder.lora.layout import Block, Layout, natural_key
from drencoder.lora.prefix import PrefixCachedLM, StateStore, prefix_cached
from drencoder.lora.saved import load_adapter
from drencoder.lora.settings import LoraSettings, SentBlocks
from drencoder.lora.training import OptimizerName, TrainingError, TrainSettings, train_local
from drencoder.lora.warmup import warmup_updates

__all__ = [
    "AdapterUpdateError",
    "Block",
    "Layout",
    "LoraSettings",
    "OptimizerName",
    "PrefixCachedLM",
    "SentBlocks",
    "StateStore",
    "TrainSettings",
    "TrainingError",
    "adapter_delta",
    "adapter_layout",
    "apply_delta",
    "assert_adapter_changed",
    "attach_lora",
    "block_kind",
    "get_adapter_state",
    "load_adapter",
    "natural_key",
    "prefix_cached",
    "set_adapter_state",
    "train_local",
    "trainable_keys",
    "warmup_updates",
]
