"""Bad input to ``drencoder run``: one clear line on stderr, exit 2, nothing trained, nothing
overwritten.

Every case runs the real command line on a tiny random Llama saved as a local Hugging Face
folder. Cases that resume start from a copy of one finished tiny run and corrupt one file;
the run directory's files are hashed before and after and must be unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from drencoder.cli.main import main
from drencoder.federated.client import runtime as runtime_mod
from helpers import make_tiny_llama, make_tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

SMOKE = ["--preset", "smoke", "--set", "method=dp-fedavg-lora", "--set", "rounds=1"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny"
    make_tiny_llama().save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_folder) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    argv = ["run", *SMOKE, "--set", f'model.name="{tiny_folder}"', "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    return out


def tree_hashes(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _no_training(*args, **kwargs):
    pytest.fail("training started although the input was bad")


def run_cli(argv, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(runtime_mod, "local_update", _no_training)
    try:
        code = main(["run", *argv, "--no-progress"])
    except SystemExit as exc:
        code = exc.code
    _, err = capsys.readouterr()
    return code, err


# -- helpers that build one bad input in ``tmp`` and return the argv -------------------------
def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def config_file(text: str | bytes):
    def build(tmp, folder, run):
        cfg = write(tmp / "bad.toml", text)
        return ["--config", str(cfg), "--set", f'model.name="{folder}"', "--out", str(tmp / "o")]

    return build


def overrides(*sets: str):
    def build(tmp, folder, run):
        argv = [*SMOKE, "--set", f'model.name="{folder}"']
        for s in sets:
            argv += ["--set", s]
        return [*argv, "--out", str(tmp / "o")]

    return build


def model(make_folder):
    def build(tmp, folder, run):
        target = make_folder(tmp, folder)
        return [*SMOKE, "--set", f'model.name="{target}"', "--out", str(tmp / "o")]

    return build


def copy_model(tmp, folder, *, edit) -> Path:
    target = tmp / "model"
    shutil.copytree(folder, target)
    edit(target)
    return target


def truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def resume(edit):
    def build(tmp, folder, run):
        target = tmp / "run"
        shutil.copytree(run, target)
        edit(target)
        return ["--resume", str(target)]

    return build


def ckpt_dir(run: Path) -> Path:
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    return run / "checkpoints" / latest["dir"]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def out_is_file(tmp, folder, run):
    write(tmp / "o", "not a directory")
    return [*SMOKE, "--set", f'model.name="{folder}"', "--out", str(tmp / "o")]


def out_holds_a_run(tmp, folder, run):
    shutil.copytree(run, tmp / "o")
    return [*SMOKE, "--set", f'model.name="{folder}"', "--out", str(tmp / "o")]


Case = namedtuple("Case", "build needle watched")

CASES = {
    # configuration
    "wrong-type": Case(overrides('rounds="three"'), "rounds must be an integer", None),
    "out-of-range": Case(overrides("privacy.clip_norm=-1"), "privacy.clip_norm must be > 0", None),
    "unknown-key": Case(overrides("privacy.clipnorm=1"), "did you mean 'clip_norm'", None),
    "unknown-section": Case(overrides("privasy.clip_norm=1"), "unknown config key", None),
    "bad-enum": Case(overrides("privacy.placement=both"), "privacy.placement must be one", None),
    "non-finite": Case(overrides("privacy.clip_norm=nan"), "finite", None),
    "broken-toml": Case(config_file("rounds = [\n"), "is not valid TOML", None),
    "toml-not-utf8": Case(config_file(b"rounds = 2\n\xff\xfe\n"), "not valid UTF-8", None),
    "toml-section-is-value": Case(config_file("privacy = 3\n"), "must be a table", None),
    "config-is-a-directory": Case(
        lambda tmp, f, r: ["--config", str(tmp), "--out", str(tmp / "o")], "is a directory", None
    ),
    # model
    "unknown-model-name": Case(overrides("model.name=smollm3"), "unknown model 'smollm3'", None),
    "missing-model-folder": Case(
        model(lambda tmp, folder: tmp / "nowhere" / "model"), "does not exist", None
    ),
    "model-path-is-a-file": Case(
        model(lambda tmp, folder: write(tmp / "weights.bin", "x")), "is a file", None
    ),
    "model-without-config": Case(
        model(lambda t, f: copy_model(t, f, edit=lambda m: (m / "config.json").unlink())),
        "has no config.json",
        None,
    ),
    "model-broken-config-json": Case(
        model(lambda t, f: copy_model(t, f, edit=lambda m: write(m / "config.json", "{oops"))),
        "could not load",
        None,
    ),
    "model-truncated-safetensors": Case(
        model(lambda t, f: copy_model(t, f, edit=lambda m: truncate(m / "model.safetensors"))),
        "model.safetensors",
        None,
    ),
    "model-without-weights": Case(
        model(lambda t, f: copy_model(t, f, edit=lambda m: (m / "model.safetensors").unlink())),
        "could not load",
        None,
    ),
    # run directory for --out
    "out-is-a-file": Case(out_is_file, "is a file", "o"),
    "out-holds-a-run": Case(out_holds_a_run, "already holds a run", "o"),
    # --resume
    "resume-not-a-run": Case(
        lambda tmp, f, r: ["--resume", str(tmp)], "not a drencoder run directory", "."
    ),
    "resume-missing-dir": Case(
        lambda tmp, f, r: ["--resume", str(tmp / "nope")], "not a drencoder run directory", None
    ),
    "resume-a-file": Case(
        lambda tmp, f, r: ["--resume", str(write(tmp / "f.txt", "x"))], "not a drencoder run", "."
    ),
    "resume-no-checkpoint": Case(
        resume(lambda run: shutil.rmtree(run / "checkpoints")), "no checkpoint in", "run"
    ),
    "resume-broken-config-toml": Case(
        resume(lambda run: write(run / "config.toml", "rounds = = 1")), "not valid TOML", "run"
    ),
    "resume-latest-bad-json": Case(
        resume(lambda run: write(run / "checkpoints" / "latest.json", "{")),
        "latest.json",
        "run",
    ),
    "resume-latest-points-nowhere": Case(
        resume(lambda run: write(run / "checkpoints" / "latest.json", '{"round": 9, "dir": "x"}')),
        "checkpoint",
        "run",
    ),
    "resume-state-bad-json": Case(
        resume(lambda run: write(ckpt_dir(run) / "state.json", "[1, 2")), "state.json", "run"
    ),
    "resume-state-missing-key": Case(
        resume(lambda run: edit_json(ckpt_dir(run) / "state.json", lambda d: d.pop("round"))),
        "state.json",
        "run",
    ),
    "resume-truncated-adapter": Case(
        resume(lambda run: truncate(ckpt_dir(run) / "adapter.safetensors")),
        "adapter.safetensors",
        "run",
    ),
    "resume-truncated-rng": Case(
        resume(lambda run: truncate(ckpt_dir(run) / "rng.safetensors")), "rng.safetensors", "run"
    ),
    "resume-ledger-bad-json": Case(
        resume(lambda run: write(ckpt_dir(run) / "ledger.json", "nope")), "ledger", "run"
    ),
    "resume-ledger-wrong-shape": Case(
        resume(lambda run: write(ckpt_dir(run) / "ledger.json", "[]")), "ledger", "run"
    ),
    "resume-truncated-codec": Case(
        resume(lambda run: truncate(run / "checkpoints" / "codec" / "codec.safetensors", keep=3)),
        "codec.safetensors",
        "run",
    ),
    "resume-codec-bad-json": Case(
        resume(lambda run: write(run / "checkpoints" / "codec" / "codec.json", "{")),
        "codec.json",
        "run",
    ),
    "resume-metrics-bad-json": Case(
        resume(lambda run: write(run / "metrics.jsonl", "{not json}\n" * 9)),
        "metrics.jsonl",
        "run",
    ),
    "resume-adapter-wrong-shape": Case(
        resume(lambda run: _swap_adapter_for_other_shape(ckpt_dir(run))),
        "adapter.safetensors",
        "run",
    ),
}


def _swap_adapter_for_other_shape(directory: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3)}, directory / "adapter.safetensors")


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    case, tmp_path, tiny_folder, finished_run, capsys, monkeypatch
):
    build, needle, watched = CASES[case]
    argv = build(tmp_path, tiny_folder, finished_run)
    root = None if watched is None else (tmp_path / watched)
    before = tree_hashes(root) if root is not None else {}
    code, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    if root is not None:
        assert tree_hashes(root) == before


def test_unwritable_out_directory_is_refused_before_loading(
    tmp_path, tiny_folder, capsys, monkeypatch
):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        from drencoder.models import loading

        monkeypatch.setattr(loading, "load_folder", _no_training)
        code, err = run_cli(
            [*SMOKE, "--set", f'model.name="{tiny_folder}"', "--out", str(parent / "run")],
            capsys,
            monkeypatch,
        )
    finally:
        parent.chmod(0o700)
    assert code == 2
    assert "cannot write" in err and "--out" in err and len(err.strip().splitlines()) == 1
    assert not (parent / "run").exists()


def test_full_disk_is_refused_before_training(tmp_path, tiny_folder, capsys, monkeypatch):
    from drencoder.federated.server import rundir

    real = shutil.disk_usage

    def nearly_full(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr(rundir.shutil, "disk_usage", nearly_full)
    out = tmp_path / "o"
    code, err = run_cli(
        [*SMOKE, "--set", f'model.name="{tiny_folder}"', "--out", str(out)], capsys, monkeypatch
    )
    assert code == 2
    assert "free" in err and "1000 bytes" in err and len(err.strip().splitlines()) == 1
    assert not (out / "checkpoints").exists() and not (out / "config.toml").exists()


def test_full_disk_is_refused_on_resume(tmp_path, finished_run, capsys, monkeypatch):
    from drencoder.federated.server import rundir

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = tree_hashes(run)
    real = shutil.disk_usage
    monkeypatch.setattr(
        rundir.shutil, "disk_usage", lambda path: type(real(path))(10**9, 10**9 - 10, 10)
    )
    code, err = run_cli(["--resume", str(run)], capsys, monkeypatch)
    assert code == 2 and "free" in err, err
    assert tree_hashes(run) == before


def test_a_multi_line_error_message_is_printed_on_one_line(tmp_path, capsys, monkeypatch):
    from drencoder.errors import AssetError
    from drencoder.federated.server import rundir

    def missing(*args, **kwargs):
        raise AssetError("model needs a package. Install it with:\n    pip install --no-deps x")

    monkeypatch.setattr(rundir, "prepare_run_dir", missing)
    code, err = run_cli(["--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2
    assert err.strip().splitlines() == [
        "drencoder run: error: model needs a package. Install it with: pip install --no-deps x"
    ]
