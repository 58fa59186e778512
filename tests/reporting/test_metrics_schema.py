"""Metrics rows and the summary are checked against their declared types."""

import json

import pytest

from drencoder.errors import CheckpointError
from drencoder.federated.server.rundir import read_metrics
from drencoder.reporting.schema import RowError, check_row, check_summary, evals, rounds


def eval_row(**changes):
    row = {
        "kind": "eval",
        "round": 0,
        "accuracy": 0.5,
        "heldout_loss": 0.7,
        "questions": 2,
        "correct": "10",
        "task": "sentiment",
        "model": "tiny",
        "adapter_hash": "sha256:00",
        "method": "fedavg-lora",
        "epsilon": None,
        "delta": None,
        "n_shot": 0,
        "n_questions": 2,
        "mean_logprob_correct": -0.7,
        "per_subject": {},
        "per_subject_n": {},
    }
    row.update(changes)
    return row


def round_row(**changes):
    row = {
        "kind": "round",
        "round": 1,
        "sampled": [0, 1],
        "participants": [0, 1],
        "failed": {},
        "rejected": {},
        "epsilon": {"gdp": 1.5, "rdp": 1.7, "pld": 1.4},
        "unit": "client",
        "relation": "add-remove",
        "noise_multiplier": 1.1,
        "clip_norm": 0.5,
        "bytes_up": 64,
        "bytes_down": 128,
        "seconds": 0.25,
    }
    row.update(changes)
    return row


def test_well_formed_rows_pass_unchanged():
    for row in (eval_row(), round_row(), round_row(epsilon=None, unit=None, relation=None)):
        assert check_row(row) is row
    # an int where a float is declared is a number all the same (JSON does not tell them apart)
    check_row(eval_row(accuracy=1))


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (eval_row(accuracy="0.5"), "accuracy"),  # no coercion from strings
        (eval_row(acuracy=0.5), "acuracy"),  # a misspelt key is an unknown key
        ({k: v for k, v in eval_row().items() if k != "correct"}, "correct"),
        (round_row(sampled=[0, "1"]), "sampled"),
        (round_row(epsilon={"pld": "8"}), "epsilon"),
        (round_row(bytes_up=1.5), "bytes_up"),
        (round_row(not_covered_by_epsilon={"train_los": 0.1}), "train_los"),
        ({**round_row(), "kind": "rounds"}, "kind"),
    ],
)
def test_malformed_rows_are_refused_with_the_field_named(row, field):
    with pytest.raises(RowError, match=field):
        check_row(row)


def test_row_selectors_keep_order_and_kind():
    rows = [eval_row(), round_row(round=1), round_row(round=2), eval_row(round=2)]
    assert [r["round"] for r in rounds(rows)] == [1, 2]
    assert [r["round"] for r in evals(rows)] == [0, 2]


def test_resume_refuses_a_metrics_file_with_a_malformed_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [eval_row(), round_row(), round_row(round=2, seconds="fast")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_metrics(path, 2) == rows[:2]
    with pytest.raises(CheckpointError, match="seconds"):
        read_metrics(path, 3)


def test_summary_is_checked():
    summary = {
        "method": "fedavg-lora",
        "model": "tiny",
        "task": "sentiment",
        "clients": 2,
        "seed": 0,
        "rounds_planned": 1,
        "rounds_done": 1,
        "stop_reason": "",
        "privacy": {"private": False},
        "utility": None,
        "communication": {
            "codec": "identity",
            "latent_dim": 16,
            "bytes_per_upload": 64,
            "full_dim": 16,
            "full_bytes": 64,
            "total_up": 128,
            "total_down": 128,
        },
        "not_covered_by_epsilon": {"note": "raw", "examples_per_client": [4, 4]},
        "run": {
            "drencoder": "0",
            "torch": "2",
            "python": "3.11",
            "seconds in rounds": 0.5,
            "one-time work": {},
        },
    }
    assert check_summary(summary) is summary
    with pytest.raises(RowError, match="privacy.epsilom"):
        check_summary({**summary, "privacy": {"private": True, "epsilom": {}}})
    with pytest.raises(RowError, match="rounds_done"):
        check_summary({k: v for k, v in summary.items() if k != "rounds_done"})
