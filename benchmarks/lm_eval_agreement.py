"""Does ``drencoder eval`` predict what lm-evaluation-harness predicts on the same questions?

Question: on MMLU questions of the project's held-out evaluation part, scored with the
embedded SmolLM2-135M (fp32, CPU), how often does ``evaluate_tasks``' scorer pick the same
answer letter as ``lm_eval.simple_evaluate`` (model ``hf``), 0-shot and 5-shot?

Both sides see the same questions (``prepare_task("mmlu", shots=k, limit=n)``: n questions
spread over the 57 subjects) and the same exemplars (the split's 5 per subject). lm_eval
gets one local task per subject, built from its own installed MMLU template
(``lm_eval/tasks/mmlu/default/_default_template_yaml``: ``doc_to_text``, ``doc_to_choice``,
``doc_to_target``, ``output_type: multiple_choice``) and the same ``description`` its
``mmlu_<subject>`` tasks use, with ``dataset_path: json`` pointing at files written here:
``test`` = our questions, ``dev`` = our exemplars with ``fewshot_config: sampler:
first_n``, so its k-shot prompt uses exactly our first k exemplars in our order. Nothing
is downloaded (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE; datasets' cache in a temporary folder).

Prints one JSON object (and writes it to ``--out`` when given): per shot count, n, both
accuracies, the prediction agreement rate, the largest log-likelihood difference over all
questions and letters, and every disagreeing question with both sides' log-likelihoods and
margins (best minus second best). Needs the lm_eval extra (``make agreement`` installs
``requirements-lmeval.txt``). Usage:

    .venv/bin/python benchmarks/lm_eval_agreement.py --limit 200 --fewshot-limit 57 \\
        --shots 0,5 --threads 2 --out benchmarks/results/lm_eval_agreement.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

LETTERS = "ABCD"
TASK_PREFIX = "drencoder_mmlu_"
DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
"""lm_eval's ``mmlu_<subject>`` description (``tasks/mmlu/_generate_configs.py``)."""


def task_name(subject: str) -> str:
    """``drencoder_mmlu_<subject with non-alphanumerics as _>``."""
    return TASK_PREFIX + re.sub(r"[^0-9a-z]+", "_", subject.lower()).strip("_")


def doc(item) -> dict:
    """One lm_eval MMLU document (the fields of ``cais/mmlu``) plus our uid."""
    return {
        "question": item.question,
        "subject": item.subject,
        "choices": list(item.choices),
        "answer": item.answer,
        "uid": item.uid,
    }


def task_config(template: Mapping, *, subject: str, test: Path, dev: Path) -> dict:
    """lm_eval's MMLU template, pointed at local JSON-lines files for one subject."""
    config = {k: v for k, v in template.items() if k not in ("dataset_path", "dataset_name")}
    config.update(
        task=task_name(subject),
        dataset_path="json",
        dataset_kwargs={"data_files": {"test": str(test), "dev": str(dev)}},
        test_split="test",
        fewshot_split="dev",
        fewshot_config={"sampler": "first_n"},
        description=DESCRIPTION.format(subject=subject),
    )
    return config


def write_task_files(
    items: Sequence, exemplars: Mapping[str, Sequence], folder: Path, *, template: Mapping
) -> list[str]:
    """One ``<task>.yaml`` + test/dev JSON-lines files per subject present in ``items``."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    by_subject: dict[str, list] = {}
    for item in items:
        by_subject.setdefault(item.subject, []).append(item)
    names = []
    for subject, group in by_subject.items():
        name = task_name(subject)
        test, dev = folder / f"{name}_test.jsonl", folder / f"{name}_dev.jsonl"
        for path, rows in ((test, group), (dev, exemplars.get(subject, ()))):
            path.write_text("".join(json.dumps(doc(r)) + "\n" for r in rows), "utf-8")
        config = task_config(template, subject=subject, test=test, dev=dev)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
        names.append(name)
    return names


def margin(logliks: Sequence[float]) -> float:
    """Best minus second-best log-likelihood (how close the prediction was to flipping)."""
    top = sorted(logliks, reverse=True)
    return top[0] - top[1]


def compare(
    ours: Mapping[str, Sequence[float]],
    theirs: Mapping[str, Sequence[float]],
    gold: Mapping[str, int],
) -> dict:
    """Agreement of two ``{uid: per-letter log-likelihoods}`` maps over the same uids.

    Predictions are the argmax (first letter on a tie, as both ``torch.argmax`` and
    lm_eval's ``np.argmax`` do).
    """
    if set(ours) != set(theirs) or set(ours) != set(gold) or not ours:
        raise ValueError(
            f"both sides must score the same non-empty set of questions; "
            f"ours={len(ours)}, theirs={len(theirs)}, gold={len(gold)}, "
            f"common={len(set(ours) & set(theirs))}"
        )

    def pick(lls: Sequence[float]) -> int:
        return max(range(len(lls)), key=lambda i: (lls[i], -i))

    n = len(ours)
    disagree, same, ours_ok, theirs_ok, max_diff = [], 0, 0, 0, 0.0
    for uid in sorted(ours):
        a, b = list(ours[uid]), list(theirs[uid])
        pa, pb = pick(a), pick(b)
        same += pa == pb
        ours_ok += pa == gold[uid]
        theirs_ok += pb == gold[uid]
        max_diff = max(max_diff, *(abs(x - y) for x, y in zip(a, b, strict=True)))
        if pa != pb:
            disagree.append(
                {
                    "uid": uid,
                    "ours": {"pred": LETTERS[pa], "margin": margin(a), "logliks": a},
                    "lm_eval": {"pred": LETTERS[pb], "margin": margin(b), "logliks": b},
                }
            )
    return {
        "n": n,
        "agreement": same / n,
        "accuracy_ours": ours_ok / n,
        "accuracy_lm_eval": theirs_ok / n,
        "max_abs_loglik_diff": max_diff,
        "disagreements": disagree,
    }


def lm_eval_logliks(samples: Sequence[Mapping]) -> dict[str, list[float]]:
    """``{uid: [log-likelihood of " A", " B", …]}`` from lm_eval's logged samples."""
    out = {}
    for s in samples:
        out[s["doc"]["uid"]] = [float(r[0]) for r in s["filtered_resps"]]
    return out


def _template() -> dict:
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    return yaml.safe_load(path.read_text("utf-8"))


def run_lm_eval(folder: Path, names: list[str], *, pretrained: Path, shots: int, batch: int):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    result = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(pretrained), "dtype": "float32"},
        tasks=names,
        num_fewshot=shots,
        batch_size=batch,
        device="cpu",
        log_samples=True,
        task_manager=manager,
        bootstrap_iters=0,
    )
    logliks = {}
    for name in names:
        logliks.update(lm_eval_logliks(result["samples"][name]))
    return logliks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="0-shot questions (default: 200)")
    parser.add_argument(
        "--fewshot-limit",
        type=int,
        default=57,
        help="questions for k > 0 (default: 57, one per subject; 5-shot prompts are ~6x longer)",
    )
    parser.add_argument("--shots", default="0,5", help="comma-separated (default: 0,5)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="drencoder-lmeval-"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "datasets-cache")
    try:
        report = measure(args, tmp, command=" ".join(sys.argv[1:] or argv or []))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", "utf-8")
    return 0


def measure(args: argparse.Namespace, tmp: Path, *, command: str) -> dict:
    """Both scorers on the same questions, per shot count; the report as a dict."""
    import lm_eval
    import torch

    from drencoder.evaluation.tasks import prepare_task, score_task
    from drencoder.models import MODELS, load_model, prepare_model

    torch.set_num_threads(args.threads)
    pretrained = prepare_model(MODELS["smollm2-135m"], progress=False)
    model, tokenizer = load_model(pretrained)
    report = {
        "question": "per-question agreement of drencoder's MMLU scorer with lm-evaluation-harness",
        "model": "smollm2-135m (converted HF folder, float32, cpu)",
        "data": "MMLU held-out evaluation part of the fixed split, --limit spread over subjects",
        "command": "benchmarks/lm_eval_agreement.py " + command,
        "date": date.today().isoformat(),
        "versions": {
            "lm_eval": lm_eval.__version__,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
        },
        "runs": {},
    }
    template = _template()
    for shots in (int(s) for s in args.shots.split(",")):
        limit = args.limit if shots == 0 else args.fewshot_limit
        task = prepare_task("mmlu", shots=shots, limit=limit)
        # lm_eval's dev split gets all 5 exemplars of a subject (datasets cannot read an
        # empty file); num_fewshot=k with sampler first_n takes the same first k as ours.
        full = prepare_task("mmlu", shots=5, limit=limit)
        folder = tmp / f"tasks-{shots}shot"
        names = write_task_files(task.items, full.exemplars, folder, template=template)
        start = time.perf_counter()
        ours = score_task(model, tokenizer, task, batch_size=args.batch_size, progress=False)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs = run_lm_eval(
            folder, names, pretrained=pretrained, shots=shots, batch=args.batch_size
        )
        t_theirs = time.perf_counter() - start
        mine = {it.uid: list(lp) for it, lp in zip(task.items, ours.choice_logprobs, strict=True)}
        row = compare(mine, theirs, {it.uid: it.answer for it in task.items})
        row.update(shots=shots, seconds_ours=round(t_ours, 1), seconds_lm_eval=round(t_theirs, 1))
        assert abs(row["accuracy_ours"] - ours.accuracy) < 1e-12
        report["runs"][f"{shots}-shot"] = row
        print(json.dumps({k: v for k, v in row.items() if k != "disagreements"}), file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(main())
