"""load_model through the path route, on a tiny model saved to a temporary folder."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from drencoder.errors import AssetError, ConfigError
from drencoder.models import MODELS, PADDING_SIDE, load_model, resolve


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, tiny_tokenizer) -> Path:
    folder = tmp_path / "tiny-llama"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _ids():
    return torch.tensor([[1, 10, 11, 12, 4, 13, 2]])


def test_path_route_loads_the_same_model(tiny_folder, tiny_model):
    model, tokenizer = load_model(str(tiny_folder))
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in tiny_model.parameters()
    )
    with torch.no_grad():
        assert torch.equal(model(_ids()).logits, tiny_model(_ids()).logits)
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.padding_side == PADDING_SIDE == "right"
    assert tokenizer("ab").input_ids[-2:] == [tokenizer.convert_tokens_to_ids(c) for c in "ab"]


def test_path_object_and_dtype(tiny_folder):
    model, _ = load_model(tiny_folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_pad_token_becomes_eos(tmp_path, tiny_model, tiny_tokenizer):
    folder = tmp_path / "nopad"
    tiny_model.config.pad_token_id = None
    tiny_model.generation_config.pad_token_id = None
    tiny_tokenizer.pad_token = None
    tiny_tokenizer.padding_side = "left"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    model, tokenizer = load_model(folder)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id


def test_never_opens_a_network_connection(tiny_folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load_model(str(tiny_folder))


def test_progress_bar_setting_is_restored(tiny_folder):
    before = hf_logging.is_progress_bar_enabled()
    load_model(tiny_folder)
    assert hf_logging.is_progress_bar_enabled() == before


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError, match="smollm2-135m") as err:
        load_model("smollm3-999m")
    assert "gemma3-270m" in str(err.value) and "'smollm3-999m'" in str(err.value)


def test_missing_path_is_an_asset_error(tmp_path):
    with pytest.raises(AssetError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_folder_without_config_json(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(AssetError, match=r"no config\.json"):
        load_model(tmp_path)


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(AssetError, match="is a file"):
        load_model(f)


def test_broken_folder_is_an_asset_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(AssetError, match="could not load"):
        load_model(tmp_path)


@pytest.mark.parametrize("dtype", [torch.int64, "float32"])
def test_bad_dtype(tiny_folder, dtype):
    with pytest.raises(ConfigError, match="dtype"):
        load_model(tiny_folder, dtype=dtype)


def test_bad_device(tiny_folder):
    with pytest.raises(ConfigError, match="nonsense"):
        load_model(tiny_folder, device="nonsense")


def test_registered_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "config.json").write_text("{}")
    assert resolve("smollm2-135m") is MODELS["smollm2-135m"]
    assert resolve("./smollm2-135m") == Path("smollm2-135m")
