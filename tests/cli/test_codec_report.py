"""``drencoder codec-report`` end to end on a tiny model saved as a local HF folder."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from drencoder.cli.main import main
from helpers import make_tiny_llama, make_tiny_tokenizer

FAST = ["clients=2", "local.lr=0.01", "codec.train_steps=3", "eval.questions=4"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


def run(capsys, *argv):
    code = main(["codec-report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def args(folder, *extra):
    sets = [f"model.name={folder}", *FAST, *extra]
    return ["--preset", "smoke", "--no-progress", *(a for s in sets for a in ("--set", s))]


@pytest.fixture(scope="module")
def report(tiny_folder):
    out = io.StringIO()  # capsys is per test; this run is shared by the module
    with contextlib.redirect_stdout(out):
        code = main(["codec-report", *args(tiny_folder), "--json", "--other-architecture"])
    assert code == 0
    return json.loads(out.getvalue())


def test_json_schema(report, tiny_folder):
    names = [row["name"] for row in report["codecs"]]
    assert names == [
        "identity",
        "random-projection",
        "autoencoder",
        "conv-autoencoder",
        *(f"subspace-{b}" for b in ("random", "proxy", "sketch", "energy")),
    ]
    d = report["input_dim"]
    assert d == 3584  # 2 layers x (q, o: 2 x 8 x 32 x 2) + (k, v: 8 x 32 + 16 x 8) x 2
    assert report["model"] == str(tiny_folder)
    assert report["updates"] == 2 and report["synthetic_updates"] == 8
    rows = {row["name"]: row for row in report["codecs"]}
    assert rows["identity"]["latent_dim"] == d
    k = rows["random-projection"]["latent_dim"]
    assert k == rows["autoencoder"]["latent_dim"] == 56  # 3584 / 64: one chunk (4096 > d)
    assert rows["conv-autoencoder"]["latent_dim"] == 64  # its 64 x 64 grid pads d to 4096
    # Subspace codecs: whole long-side vectors of r = 8 numbers, at most k in all.
    assert all(48 < rows[f"subspace-{b}"]["latent_dim"] <= 56 for b in ("random", "proxy"))
    for row in report["codecs"]:
        assert row["bytes"] == 4 * row["latent_dim"]
        for part in ("real", "synthetic"):
            assert {"rel_error", "cosine"} <= set(row[part])
        assert row["encode_seconds"] > 0 and row["decode_seconds"] > 0
    assert rows["identity"]["real"]["rel_error"] == 0.0
    assert rows["identity"]["real"]["cosine"] == pytest.approx(1.0)
    assert rows["autoencoder"]["codec"] == "mlp-autoencoder"
    assert rows["conv-autoencoder"]["training"]["steps"] == 3
    assert report["stage1"]["clients"] == 2
    assert report["prior_fit"]["blocks"] == 8  # lora_A does not move in one step (B starts at 0)
    assert report["seconds"]["total"] > 0


def test_same_config_same_numbers(report, tiny_folder, capsys):
    code, out, _ = run(capsys, *args(tiny_folder), "--json")
    assert code == 0
    again = json.loads(out)
    first = {row["name"]: row for row in report["codecs"]}
    assert len(again["codecs"]) == len(first) - 1  # without --other-architecture
    for a in again["codecs"]:
        b = first[a["name"]]
        assert a["real"] == b["real"] and a["synthetic"] == b["synthetic"]


def test_table(tiny_folder, capsys):
    code, out, err = run(capsys, *args(tiny_folder, "stage1.release_noise=false"))
    assert code == 0
    for name in ("identity", "random-projection", "autoencoder", "no noise", "d = 3,584"):
        assert name in out
    assert err == ""  # --no-progress


def test_rounds_report_energy_per_round_and_codec(tiny_folder, capsys):
    code, out, _ = run(
        capsys,
        *args(tiny_folder, "codec.basis=proxy", "codec.proxy_examples=8"),
        "--json",
        "--rounds",
        "3",
        "--per-round",
        "2",
    )
    assert code == 0
    result = json.loads(out)
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    names = {"random-projection", "autoencoder", "sketch", "energy", "random", "history", "proxy"}
    for r in rounds:
        assert set(r["codecs"]) == names and r["clients"] == 2
        for e in r["codecs"].values():
            assert 0 <= e["energy_min"] <= e["energy"] <= e["energy_max"] <= 1 + 1e-9
    # Round 1's history codec is the random one; afterwards it is built from the decoded
    # aggregates (one per round so far) and differs.
    assert rounds[0]["codecs"]["history"] == rounds[0]["codecs"]["random"]
    assert rounds[1]["history_learned_vectors"] > 0
    assert rounds[1]["codecs"]["history"] != rounds[1]["codecs"]["random"]
    # A two-update round: their mean lies in the span of the proxy's updates only by
    # chance, but the history's span holds the decoded previous aggregates exactly.
    row = {r["name"]: r for r in result["codecs"]}
    assert 0 < row["subspace-random"]["real"]["energy"]["energy"] < 1


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--set", "clients=0"], ["clients", ">= 1", "0"]),
        (["--set", "codec.ratio=0.1"], ["codec.ratio", "compression_ratio"]),
        (["--set", "model.name=/nonexistent/folder"], ["/nonexistent/folder"]),
        (["--set", "codec.architecture=conv", "--set", "codec.compression_ratio=0.3"], ["0.3"]),
        (["--set", "codec.compression_ratio=0.3", "--other-architecture"], ["0.3", "conv"]),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, words):
    code, out, err = run(capsys, "--no-progress", *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("drencoder codec-report: error:")
    for word in words:
        assert word in err


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["codec-report", "--synthetic", "0"])
    assert exc.value.code == 2
    assert "--synthetic" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_default_smoke(capsys, torch_threads):
    code, out, _ = run(capsys, "--preset", "smoke", "--no-progress", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["input_dim"] == 921_600
    assert [r["name"] for r in result["codecs"]] == [
        "identity",
        "random-projection",
        "autoencoder",
        *(f"subspace-{b}" for b in ("random", "proxy", "sketch", "energy")),
    ]
