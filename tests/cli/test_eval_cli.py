"""``drencoder eval`` end to end on a tiny saved model: JSON shape, --limit, adapters, and
one-line errors for a bad C-Eval folder."""

from __future__ import annotations

import csv
import json

import pytest

from drencoder.cli.main import main


def ceval_fixture(root):
    """Two subjects in the official layout, 3 val and 5 dev questions each."""
    for split, n in (("val", 3), ("dev", 5)):
        for handle in ("art", "law"):
            path = root / split / f"{handle}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                w.writerows([i, f"{handle} {split} {i}", "a", "b", "c", "d", "B"] for i in range(n))
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from helpers import make_tiny_llama, make_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_llama().save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


def _eval_json(capsys, *argv):
    assert main(["eval", *argv, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_shape_and_limit(tiny_dir, tmp_path, capsys):
    root = ceval_fixture(tmp_path)
    out = _eval_json(
        capsys,
        "--model", str(tiny_dir),
        "--tasks", "mmlu,ceval,sentiment",
        "--ceval-dir", str(root),
        "--limit", "3",
        "--shots", "1",
        "--batch-size", "2",
    )  # fmt: skip
    assert set(out) == {"tasks", "model", "adapter"}
    assert out["model"] == str(tiny_dir) and out["adapter"] is None
    assert list(out["tasks"]) == ["mmlu", "ceval", "sentiment"]
    for res in out["tasks"].values():
        assert res["n"] == 3 and res["shots"] == 1 and 0.0 <= res["accuracy"] <= 1.0
        assert sum(s["n"] for s in res["subjects"].values()) == 3
        hits = sum(s["accuracy"] * s["n"] for s in res["subjects"].values())
        assert res["accuracy"] == pytest.approx(hits / 3)
    assert len(out["tasks"]["mmlu"]["subjects"]) == 3  # one question from each of 3 subjects


def test_adapter_is_loaded_and_hashed(tiny_dir, tmp_path, capsys):
    from drencoder.lora import LoraSettings, attach_lora, get_adapter_state, set_adapter_state
    from helpers import make_tiny_llama

    peft_model = attach_lora(make_tiny_llama(), LoraSettings(rank=2, alpha=4), seed=1)
    state = get_adapter_state(peft_model)
    state = {k: (v + 0.3 if "lora_B" in k else v) for k, v in state.items()}
    set_adapter_state(peft_model, state)
    peft_model.save_pretrained(tmp_path / "adapter")

    argv = ("--model", str(tiny_dir), "--tasks", "sentiment", "--limit", "4")
    base = _eval_json(capsys, *argv)
    tuned = _eval_json(capsys, *argv, "--adapter", str(tmp_path / "adapter"))
    assert tuned["adapter"]["path"] == str(tmp_path / "adapter")
    assert tuned["adapter"]["hash"].startswith("sha256:")
    assert base["tasks"]["sentiment"]["n"] == tuned["tasks"]["sentiment"]["n"] == 4
    # A different adapter gives a different hash.
    state = {k: (v * 2 if "lora_B" in k else v) for k, v in state.items()}
    set_adapter_state(peft_model, state)
    peft_model.save_pretrained(tmp_path / "adapter2")
    other = _eval_json(capsys, *argv, "--adapter", str(tmp_path / "adapter2"))
    assert other["adapter"]["hash"] != tuned["adapter"]["hash"]


def test_table_output_says_which_split(tiny_dir, capsys):
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "mmlu", "--limit", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mmlu: accuracy" in out and "on 2 questions, 5-shot" in out
    assert "held-out evaluation part of the fixed split" in out
    assert "abstract algebra" in out and "adapter: none" in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tasks", "ceval"], "--tasks ceval needs --ceval-dir"),
        (["--tasks", "ceval", "--ceval-dir", "no/such/dir"], "does not exist"),
        (["--tasks", "gsm8k"], "tasks must be a non-empty list"),
        (["--tasks", "mmlu", "--shots", "7"], "use --shots 0 to 5"),
        (["--tasks", "mmlu", "--limit", "0"], "--limit: must be an integer in [1, inf), got 0"),
        (["--batch-size", "0"], "--batch-size: must be an integer in [1, inf), got 0"),
        (["--tasks", "mmlu", "--adapter", "no/such/adapter"], "adapter directory"),
        (["--device", "tpu"], "must be cpu, cuda or cuda:N, got 'tpu'"),
        (["--device", "cuda:x"], "must be cpu, cuda or cuda:N, got 'cuda:x'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_dir, capsys, extra, needle):
    try:
        code = main(["eval", "--model", str(tiny_dir), "--no-progress", *extra])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_ceval_column_is_one_line(tiny_dir, tmp_path, capsys):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "law_val.csv").write_text("id,question,A,B,C\n0,q,a,b,c\n", "utf-8")
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "ceval", "--ceval-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "law_val.csv: missing columns ['D', 'answer']" in err and "ceval-exam.zip" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_argument_accepts_what_model_device_accepts(name):
    from drencoder.cli.argtypes import device

    assert device(name) == name
