"""The pure helpers of ``benchmarks/lm_eval_agreement.py`` (no lm_eval needed): the local
task files it writes and the agreement it computes from two sets of log-likelihoods."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from drencoder.data import MMLU_FORMAT, MCItem

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lm_eval_agreement.py"

# lm_eval 0.4.13, lm_eval/tasks/mmlu/default/_default_template_yaml (copied verbatim).
TEMPLATE = {
    "dataset_path": "cais/mmlu",
    "test_split": "test",
    "fewshot_split": "dev",
    "fewshot_config": {"sampler": "first_n"},
    "output_type": "multiple_choice",
    "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
    "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
    "doc_to_choice": ["A", "B", "C", "D"],
    "doc_to_target": "answer",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    "metadata": {"version": 1.0},
}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("lm_eval_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _item(subject, i, answer=0):
    return MCItem(
        question=f" {subject} q{i} ",
        choices=("w", "x", "y", "z"),
        answer=answer,
        subject=subject,
        uid=f"mmlu/{subject}/{i}",
    )


def test_task_files_hold_our_questions_exemplars_and_lm_evals_prompt(script, tmp_path):
    items = [_item("college physics", 0), _item("college physics", 1, 2), _item("law", 0)]
    exemplars = {"college physics": [_item("college physics", 9, 3)], "law": [_item("law", 9)]}
    names = script.write_task_files(items, exemplars, tmp_path, template=TEMPLATE)
    assert names == ["drencoder_mmlu_college_physics", "drencoder_mmlu_law"]
    config = yaml.safe_load((tmp_path / f"{names[0]}.yaml").read_text("utf-8"))
    assert config["task"] == names[0] and config["dataset_path"] == "json"
    assert config["doc_to_text"] == TEMPLATE["doc_to_text"]
    assert config["fewshot_config"] == {"sampler": "first_n"}
    assert config["output_type"] == "multiple_choice" and config["test_split"] == "test"
    # The description is our MMLU header for that subject, as lm_eval's mmlu tasks write it.
    assert config["description"] == MMLU_FORMAT.header_for("college physics")
    files = config["dataset_kwargs"]["data_files"]
    test = [json.loads(line) for line in Path(files["test"]).read_text("utf-8").splitlines()]
    dev = [json.loads(line) for line in Path(files["dev"]).read_text("utf-8").splitlines()]
    assert [d["uid"] for d in test] == ["mmlu/college physics/0", "mmlu/college physics/1"]
    assert test[1]["answer"] == 2 and test[1]["choices"] == ["w", "x", "y", "z"]
    assert [d["uid"] for d in dev] == ["mmlu/college physics/9"]


def test_compare_counts_agreement_accuracies_and_margins(script):
    ours = {"a": [-1.0, -2.0, -3.0, -4.0], "b": [-2.0, -1.0, -3.0, -4.0], "c": [-1, -1, -5, -5]}
    theirs = {"a": [-1.0, -2.0, -3.0, -4.0], "b": [-1.5, -1.6, -3.0, -4.0], "c": [-1, -1, -5, -5]}
    gold = {"a": 0, "b": 1, "c": 1}
    out = script.compare(ours, theirs, gold)
    assert out["n"] == 3 and out["agreement"] == pytest.approx(2 / 3)
    assert out["accuracy_ours"] == pytest.approx(2 / 3)  # a right, b right, c tie -> A, wrong
    assert out["accuracy_lm_eval"] == pytest.approx(1 / 3)
    assert out["max_abs_loglik_diff"] == pytest.approx(0.6)
    (d,) = out["disagreements"]
    assert d["uid"] == "b" and d["ours"]["pred"] == "B" and d["lm_eval"]["pred"] == "A"
    assert d["ours"]["margin"] == pytest.approx(1.0)
    assert d["lm_eval"]["margin"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same non-empty set"):
        script.compare(ours, {"a": theirs["a"]}, gold)


def test_lm_eval_logliks_reads_logged_samples(script):
    samples = [{"doc": {"uid": "u1"}, "filtered_resps": [[-1.5, False], [-0.5, True]]}]
    assert script.lm_eval_logliks(samples) == {"u1": [-1.5, -0.5]}
