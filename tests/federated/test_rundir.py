"""Run-directory checks made before a run loads or trains anything."""

from __future__ import annotations

import errno
import shutil

import pytest

from drencoder.errors import CheckpointError, ConfigError, StorageError
from drencoder.federated.server import rundir


def test_prepare_creates_and_leaves_no_probe(tmp_path):
    out = rundir.prepare_run_dir(tmp_path / "a" / "b", fresh=True, probe_bytes=3 * 2**20 + 5)
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_failed_write_is_a_storage_error_and_the_probe_is_removed(tmp_path, monkeypatch):
    # Works as root too, where a read-only chmod would not block the write.
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", full)
    with pytest.raises(StorageError, match=r"No space left on device.*choose another --out"):
        rundir.prepare_run_dir(tmp_path / "run", fresh=True)
    assert list((tmp_path / "run").iterdir()) == []


def test_resume_needs_a_run_directory_and_creates_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="not a drencoder run directory"):
        rundir.prepare_run_dir(tmp_path / "missing", fresh=False)
    assert not (tmp_path / "missing").exists()


def test_out_must_not_be_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        rundir.prepare_run_dir(tmp_path / "f", fresh=True)


def test_free_space_check_names_both_numbers(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        rundir.shutil, "disk_usage", lambda p: type(usage)(usage.total, usage.total - 7, 7)
    )
    with pytest.raises(StorageError, match=r"has 7 bytes .* about 100 bytes"):
        rundir.check_free_space(tmp_path / "not" / "yet", need_bytes=100)
    rundir.check_free_space(tmp_path, need_bytes=7)


def test_estimate_counts_the_adapter_four_times():
    # KEEP = 2 checkpoints + one being written + the PEFT adapter.
    assert rundir.estimate_run_bytes(adapter_bytes=10, codec_bytes=3) == 43 + rundir.SLACK_BYTES
    small = rundir.codec_bytes_estimate(input_dim=100, chunk_size=4096, compression_ratio=0.5)
    big = rundir.codec_bytes_estimate(input_dim=10**6, chunk_size=4096, compression_ratio=0.5)
    assert 0 < small < big
