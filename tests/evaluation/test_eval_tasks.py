"""``evaluate_tasks``: task loading, --limit, subject weighting, exemplar provenance, C-Eval
folder errors, and saved adapters (tiny random models and rigged models only)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from drencoder.data import MCItem, load_mmlu
from drencoder.errors import AssetError, ConfigError
from drencoder.evaluation.tasks import (
    DEFAULT_SHOTS,
    evaluate_tasks,
    parse_tasks,
    prepare_task,
    score_task,
    spread_limit,
)

HEADER = ["id", "question", "A", "B", "C", "D", "answer"]


def write_ceval(root, *, val, dev=None):
    """Write ``{handle: rows}`` in the official layout: val/<h>_val.csv, dev/<h>_dev.csv."""
    for split, tables in (("val", val), ("dev", dev or {})):
        for handle, rows in tables.items():
            path = root / split / f"{handle}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(HEADER)
                w.writerows(rows)
    return root


def ceval_fixture(root):
    """Subject ``big`` has 3 val questions (answers A, B, C), ``small`` has 1 (answer A);
    each has 5 dev exemplars whose text names its subject."""
    val = {
        "big": [[i, f"big question {i}", "w", "x", "y", "z", "ABC"[i]] for i in range(3)],
        "small": [[0, "small question 0", "w", "x", "y", "z", "A"]],
    }
    dev = {
        h: [[i, f"{h} exemplar {i}", "p", "q", "r", "s", "D"] for i in range(5)]
        for h in ("big", "small")
    }
    return write_ceval(root, val=val, dev=dev)


class Recorder(torch.nn.Module):
    """Prefers one token id at every position and records every row it is shown."""

    def __init__(self, vocab, token_id):
        super().__init__()
        self.vocab, self.token_id, self.rows = vocab, token_id, []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            self.rows.append(ids[mask.bool()].tolist())
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token_id] = 4.0
        return SimpleNamespace(logits=logits)


def letter_id(tokenizer, letter):
    return tokenizer.encode(" " + letter, add_special_tokens=False)[-1]


def test_parse_tasks():
    assert parse_tasks("mmlu, sentiment,mmlu") == ("mmlu", "sentiment")
    for bad in ("", "mmlu,gsm8k", []):
        with pytest.raises(ConfigError, match="tasks must be"):
            parse_tasks(bad)


def test_spread_limit_takes_subjects_round_robin_and_exactly_n():
    items = [
        MCItem(question=f"{s}{i}", choices=("a", "b"), answer=0, subject=s, uid=f"{s}{i}")
        for s, n in (("b", 4), ("a", 1), ("c", 2))
        for i in range(n)
    ]
    assert [it.uid for it in spread_limit(items, 5)] == ["a0", "b0", "c0", "b1", "c1"]
    assert [it.uid for it in spread_limit(items, 2)] == ["a0", "b0"]
    assert len(spread_limit(items, 100)) == 7 and spread_limit(items, None) == tuple(items)
    with pytest.raises(ConfigError, match="limit must be"):
        spread_limit(items, 0)


def test_mmlu_scores_the_heldout_part_with_same_subject_exemplars():
    split = load_mmlu()
    task = prepare_task("mmlu", limit=120)
    assert task.shots == DEFAULT_SHOTS["mmlu"] == 5 and "held-out" in task.split
    assert len(task.items) == 120
    assert {it.uid for it in task.items} <= {it.uid for it in split.heldout}
    assert len({it.subject for it in task.items}) == 57  # spread over every subject
    scored = {it.uid for it in task.items}
    not_scorable = {it.uid for it in split.heldout} | {it.uid for it in split.finetune}
    for item in task.items:
        shots = task.exemplars[item.subject]
        assert len(shots) == 5 and all(s.subject == item.subject for s in shots)
        assert not {s.uid for s in shots} & (scored | not_scorable)
    with pytest.raises(ConfigError, match="--shots 0 to 5"):
        prepare_task("mmlu", shots=6)


def test_limit_scores_exactly_n(tiny_model, tiny_tokenizer):
    out = evaluate_tasks(
        tiny_model, tiny_tokenizer, ["mmlu", "sentiment"], shots=0, limit=7, progress=False
    )
    assert list(out) == ["mmlu", "sentiment"]
    assert out["mmlu"]["n"] == 7 and out["sentiment"]["n"] == 7
    assert sum(s["n"] for s in out["mmlu"]["subjects"].values()) == 7
    assert out["mmlu"]["shots"] == 0 and set(out["mmlu"]) >= {"accuracy", "n", "shots", "subjects"}


def test_accuracy_is_weighted_by_subject_size(tmp_path, tiny_tokenizer):
    root = ceval_fixture(tmp_path)
    model = Recorder(len(tiny_tokenizer), letter_id(tiny_tokenizer, "A"))  # always answers A
    out = evaluate_tasks(model, tiny_tokenizer, ["ceval"], ceval_dir=root, progress=False)
    res = out["ceval"]
    assert res["subjects"] == {
        "big": {"accuracy": pytest.approx(1 / 3), "n": 3},
        "small": {"accuracy": 1.0, "n": 1},
    }
    # 2 of 4 questions right; the unweighted mean of subjects would be (1/3 + 1) / 2.
    assert res["accuracy"] == pytest.approx(0.5) and res["n"] == 4 and res["shots"] == 5


def test_ceval_prompts_use_dev_exemplars_of_the_same_subject(tmp_path, tiny_tokenizer):
    root = ceval_fixture(tmp_path)
    model = Recorder(len(tiny_tokenizer), letter_id(tiny_tokenizer, "B"))
    evaluate_tasks(model, tiny_tokenizer, ["ceval"], shots=2, ceval_dir=root, progress=False)
    prompts = [tiny_tokenizer.decode(r, skip_special_tokens=True) for r in model.rows]
    assert len(prompts) == 4
    for prompt in prompts:
        subject = "small" if "small question" in prompt else "big"
        other = "big" if subject == "small" else "small"
        assert f"{subject} exemplar 0" in prompt and f"{subject} exemplar 1" in prompt
        assert f"{subject} exemplar 2" not in prompt and f"{other} exemplar" not in prompt
        assert prompt.count("question") == 1  # no scored question serves as an exemplar


def test_ceval_folder_errors_name_the_path_and_the_fix(tmp_path, tiny_tokenizer):
    model = Recorder(len(tiny_tokenizer), 0)
    missing = tmp_path / "nowhere"
    with pytest.raises(AssetError, match=r"nowhere.*does not exist.*ceval-exam\.zip"):
        evaluate_tasks(model, tiny_tokenizer, ["ceval"], ceval_dir=missing)
    with pytest.raises(ConfigError, match="needs the C-Eval folder"):
        evaluate_tasks(model, tiny_tokenizer, ["ceval"])
    with pytest.raises(AssetError, match="no C-Eval val directory"):
        evaluate_tasks(model, tiny_tokenizer, ["ceval"], ceval_dir=tmp_path)
    write_ceval(tmp_path, val={"law": [[0, "q", "a", "b", "c", "d", "A"]]})
    with pytest.raises(AssetError, match=r"dev/law_dev\.csv, found 0.*--shots 0"):
        evaluate_tasks(model, tiny_tokenizer, ["ceval"], ceval_dir=tmp_path)
    assert evaluate_tasks(model, tiny_tokenizer, ["ceval"], shots=0, ceval_dir=tmp_path)
    (tmp_path / "val" / "law_val.csv").write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n", "utf-8")
    with pytest.raises(AssetError, match=r"law_val\.csv: missing columns \['answer'\]"):
        evaluate_tasks(model, tiny_tokenizer, ["ceval"], shots=0, ceval_dir=tmp_path)


def test_saved_adapter_changes_the_scores(tmp_path, tiny_tokenizer):
    from drencoder.lora import (
        LoraSettings,
        attach_lora,
        get_adapter_state,
        load_adapter,
        set_adapter_state,
    )
    from helpers import make_tiny_llama

    peft_model = attach_lora(make_tiny_llama(), LoraSettings(rank=4, alpha=8), seed=3)
    state = get_adapter_state(peft_model)
    b_keys = [k for k in state if "lora_B" in k]
    assert b_keys and all(not state[k].any() for k in b_keys)  # B starts at zero
    for k in b_keys:
        state[k] = torch.linspace(-0.5, 0.5, state[k].numel()).view_as(state[k])
    set_adapter_state(peft_model, state)
    peft_model.save_pretrained(tmp_path / "adapter")

    task = prepare_task("sentiment", limit=6)
    base = score_task(make_tiny_llama(), tiny_tokenizer, task, progress=False)
    loaded = load_adapter(make_tiny_llama(), tmp_path / "adapter")
    assert all(torch.equal(get_adapter_state(loaded)[k], state[k]) for k in state)
    tuned = score_task(loaded, tiny_tokenizer, task, progress=False)
    again = score_task(peft_model, tiny_tokenizer, task, progress=False)
    diff = max(
        abs(a - b)
        for x, y in zip(base.choice_logprobs, tuned.choice_logprobs, strict=True)
        for a, b in zip(x, y, strict=True)
    )
    assert diff > 1e-3
    flat = [v for row in tuned.choice_logprobs for v in row]
    assert flat == pytest.approx([v for row in again.choice_logprobs for v in row], abs=1e-5)


def test_load_adapter_errors(tmp_path, tiny_model):
    from drencoder.lora import load_adapter

    with pytest.raises(ConfigError, match="does not exist; pass the adapter/ folder"):
        load_adapter(tiny_model, tmp_path / "missing")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}", "utf-8")
    with pytest.raises(AssetError, match="did you mean"):
        load_adapter(tiny_model, tmp_path)


@pytest.mark.slow
def test_smollm2_scores_the_same_letter_token_as_lm_eval_encodes():
    """lm-evaluation-harness scores the continuation ``" A"`` as
    ``encode(context + " A")[len(encode(context)):]``; the scorer uses
    ``encode(" A")[-1]`` after ``encode(context)``. For SmolLM2 these are one and the same
    token on real MMLU prompts (0- and 5-shot), which is what makes the two agree."""
    from transformers import AutoTokenizer

    from drencoder.evaluation import letter_token_ids
    from drencoder.models import MODELS, prepare_model

    tok = AutoTokenizer.from_pretrained(prepare_model(MODELS["smollm2-135m"], progress=False))
    for shots in (0, 5):
        task = prepare_task("mmlu", shots=shots, limit=57)
        prefix, ids = letter_token_ids(tok, fmt=task.fmt, n_choices=4)
        assert prefix == []
        for item in task.items:
            context = task.fmt.prompt(item, task.exemplars.get(item.subject, ()))
            n = len(tok(context)["input_ids"])
            for letter, tid in zip("ABCD", ids, strict=True):
                assert tok(context + " " + letter)["input_ids"][n:] == [tid]
