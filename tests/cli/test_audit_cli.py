"""``drencoder audit`` end to end on tiny random models (the embedded model is swapped out)."""

from __future__ import annotations

import json

import pytest

from drencoder.cli.main import main
from helpers import make_tiny_llama, make_tiny_tokenizer

pytestmark = pytest.mark.filterwarnings(
    "ignore::drencoder.accounting.GdpApproximationWarning",
    "ignore::drencoder.errors.PrivacyWarning",
)

SMALL = ["--preset", "smoke", "--set", "rounds=1", "--set", "eval.questions=4"]


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setattr(
        "drencoder.models.load_model",
        lambda name, **kwargs: (make_tiny_llama(), make_tiny_tokenizer()),
    )


def test_json_has_one_entry_per_method_and_placement(tmp_path, capsys, tiny_models):
    out = tmp_path / "audit"
    code = main(
        [
            "audit",
            *SMALL,
            "--methods",
            "fedavg-lora,dp-fedavg-lora",
            "--placements",
            "local,central",
            "--canaries",
            "40",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    keys = {"method", "placement", "epsilon_theory", "epsilon_lower_bound", "confidence"}
    assert all(keys | {"canaries", "party"} <= set(e) for e in result["audits"])
    got = [(e["method"], e["placement"], e["party"]) for e in result["audits"]]
    assert got == [
        ("fedavg-lora", "local", "server"),
        ("fedavg-lora", "central", "released aggregates"),
        ("dp-fedavg-lora", "local", "server"),
        ("dp-fedavg-lora", "central", "released aggregates"),
    ]
    for e in result["audits"]:
        assert e["canaries"] == 40 and e["confidence"] == 0.95
        if e["method"] == "fedavg-lora":
            # The coins here come from OS entropy, so how much is detected varies; detection
            # itself is asserted with seeded coins in tests/audit/test_harness.py.
            assert e["epsilon_theory"] is None and e["epsilon_lower_bound"] >= 0.0
        else:
            assert e["epsilon_lower_bound"] <= e["epsilon_theory"]
    assert json.loads((out / "audit.json").read_text())["audits"] == result["audits"]
    assert (out / "dp-fedavg-lora-central" / "scores.json").is_file()
    # The directory now holds an audit: a second call refuses it.
    assert main(["audit", *SMALL, "--out", str(out)]) == 2
    assert "already holds an audit" in capsys.readouterr().err


def test_table_and_reproducible_noise_warning(tmp_path, capsys, tiny_models):
    code = main(
        [
            "audit",
            *SMALL,
            "--methods",
            "dp-fedavg-lora",
            "--set",
            "target_epsilon=1",
            "--canaries",
            "40",
            "--reproducible-noise",
            "--seed-known",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert code == 0
    out, err = capsys.readouterr()
    assert "server + seed" in out and "40 canaries" in out
    assert "does not hold against anyone who knows the seed" in err
    # Whether the bound exceeds epsilon 1 here depends on OS-entropy coins; the break itself
    # is asserted with seeded coins in tests/audit/test_harness.py.


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "fedsgd"], "--methods takes names from"),
        (["--placements", "nowhere"], "--placements takes local and/or central"),
    ],
)
def test_bad_input_fails_before_running(tmp_path, capsys, argv, message):
    assert main(["audit", *SMALL, *argv, "--out", str(tmp_path / "a")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv", [["--canaries", "1"], ["--confidence", "1.5"]])
def test_bad_numbers_are_usage_errors(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["audit", *SMALL, *argv, "--out", str(tmp_path / "a")])
    assert exc.value.code == 2
