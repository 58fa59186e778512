"""The evaluation tasks by name, scored the lm-evaluation-harness way (docs/design.md §4).

``evaluate_tasks(model, tokenizer, ["mmlu", "ceval", "sentiment"])`` scores each task with
``score_multiple_choice``: the log-likelihood of each answer letter (``" A"``, ``" B"``…)
after the task's prompt, argmax, accuracy averaged over questions (subjects weigh by their
size). What each task scores, and where its few-shot exemplars come from:

========== ======================================= ===================================== =====
task       scored questions                        exemplars (same subject)              shots
========== ======================================= ===================================== =====
mmlu       the held-out evaluation part of the     the 5 exemplars the split sets aside  5
           project's fixed split (2,786 questions, per subject (never scored, never
           ``data.load_mmlu``, docs/data.md)       fine-tuned on)
ceval      ``val/<subject>_val.csv`` under         ``dev/<subject>_dev.csv``             5
           ``ceval_dir`` (official layout)
sentiment  the held-out part of the sentiment set  the first k items (by uid) of its     0
           (3,424 reviews, ``data.load_sentiment``) training part
========== ======================================= ===================================== =====

``limit`` keeps exactly ``min(limit, available)`` questions, spread over subjects: the
first question of every subject (subjects in sorted order), then the second of every
subject that has one, and so on; within a subject the task's own fixed order is kept
(file order for MMLU and C-Eval, uid order for sentiment). No RNG is involved, so the
same ``limit`` always scores the same questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from drencoder.data.items import (
    CEVAL_FORMAT,
    MMLU_FORMAT,
    SENTIMENT_FORMAT,
    MCItem,
    PromptFormat,
    group_by_subject,
)
from drencoder.errors import AssetError, ConfigError
from drencoder.evaluation.scoring import MCResult, score_multiple_choice

TASKS = ("mmlu", "ceval", "sentiment")
"""Task names in the order they are reported."""

DEFAULT_SHOTS: Mapping[str, int] = {"mmlu": 5, "ceval": 5, "sentiment": 0}


@dataclass(frozen=True)
class PreparedTask:
    """Everything needed to score one task: the questions, their exemplars and the format."""

    name: str
    items: tuple[MCItem, ...]
    exemplars: Mapping[str, tuple[MCItem, ...]]
    fmt: PromptFormat
    shots: int
    split: str
    """Which part of the data is scored, in words (reported with the score)."""


def parse_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
    """``"mmlu,ceval"`` or ``["mmlu", "ceval"]`` to a checked tuple without duplicates."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ConfigError(
            f"tasks must be a non-empty list of {list(TASKS)}, got tasks={tasks!r}; "
            f"e.g. --tasks mmlu,sentiment"
        )
    return tuple(dict.fromkeys(names))


def spread_limit(items: Sequence[MCItem], limit: int | None) -> tuple[MCItem, ...]:
    """At most ``limit`` items, taken round-robin over sorted subjects (module docstring)."""
    if limit is None:
        return tuple(items)
    if not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be an integer >= 1 or None, got limit={limit!r}")
    groups = list(group_by_subject(items).values())
    out: list[MCItem] = []
    depth = 0
    while len(out) < limit and any(depth < len(g) for g in groups):
        out.extend(g[depth] for g in groups if depth < len(g))
        depth += 1
    return tuple(out[:limit])


def _check_shots(name: str, shots: int | None) -> int:
    if shots is None:
        return DEFAULT_SHOTS[name]
    if not isinstance(shots, int) or shots < 0:
        raise ConfigError(f"shots must be an integer >= 0, got shots={shots!r}")
    return shots


def _mmlu(shots: int) -> tuple[tuple[MCItem, ...], Mapping[str, tuple[MCItem, ...]], str]:
    from drencoder.data.mmlu import DEFAULT_N_EXEMPLARS, load_mmlu

    if shots > DEFAULT_N_EXEMPLARS:
        raise ConfigError(
            f"mmlu: the fixed split sets aside {DEFAULT_N_EXEMPLARS} exemplars per subject, "
            f"got shots={shots}; use --shots 0 to {DEFAULT_N_EXEMPLARS}"
        )
    split = load_mmlu()
    return split.heldout, split.exemplars, "held-out evaluation part of the fixed split"


def _sentiment(shots: int) -> tuple[tuple[MCItem, ...], Mapping[str, tuple[MCItem, ...]], str]:
    from drencoder.data.sentiment import load_sentiment

    split = load_sentiment()
    exemplars = {"sentiment": split.train[:shots]} if shots else {}
    return split.heldout, exemplars, "held-out part"


def _ceval(
    shots: int, ceval_dir: str | Path | None
) -> tuple[tuple[MCItem, ...], Mapping[str, tuple[MCItem, ...]], str]:
    from drencoder.data.ceval import load_ceval

    if ceval_dir is None:
        raise ConfigError(
            "task ceval needs the C-Eval folder (ceval_dir, --ceval-dir DIR): C-Eval does not "
            "ship offline; unzip the official ceval-exam.zip and pass the folder holding val/"
        )
    root = Path(ceval_dir)
    data = load_ceval(root)
    if shots:
        have = {}
        for item in data.val:
            have.setdefault(item.subject, item.uid.split("/")[2])
        for subject, handle in have.items():
            n = len(data.dev.get(subject, ()))
            if n < shots:
                raise AssetError(
                    f"ceval {shots}-shot needs {shots} exemplars in "
                    f"{root / 'dev' / f'{handle}_dev.csv'}, found {n}; add the dev/ folder of "
                    f"ceval-exam.zip or use --shots {n}"
                )
    return data.val, data.dev, "val"


def prepare_task(
    name: str,
    *,
    shots: int | None = None,
    limit: int | None = None,
    ceval_dir: str | Path | None = None,
) -> PreparedTask:
    """Load task ``name`` and pick its questions and exemplars (module docstring)."""
    (name,) = parse_tasks([name])
    k = _check_shots(name, shots)
    if name == "mmlu":
        items, exemplars, split = _mmlu(k)
    elif name == "ceval":
        items, exemplars, split = _ceval(k, ceval_dir)
    else:
        items, exemplars, split = _sentiment(k)
    fmt = {"mmlu": MMLU_FORMAT, "ceval": CEVAL_FORMAT, "sentiment": SENTIMENT_FORMAT}[name]
    return PreparedTask(
        name=name,
        items=spread_limit(items, limit),
        exemplars={s: tuple(v[:k]) for s, v in exemplars.items()},
        fmt=fmt,
        shots=k,
        split=split,
    )


def score_task(
    model, tokenizer, task: PreparedTask, *, batch_size: int = 8, progress: bool = True
) -> MCResult:
    """``score_multiple_choice`` on a prepared task (per-question data in the result)."""
    return score_multiple_choice(
        model,
        tokenizer,
        task.items,
        fmt=task.fmt,
        n_shot=task.shots,
        exemplars=task.exemplars,
        batch_size=batch_size,
        progress=progress,
    )


def task_summary(task: PreparedTask, result: MCResult) -> dict:
    """``{"accuracy", "n", "shots", "split", "subjects": {subject: {"accuracy", "n"}}}``."""
    return {
        "accuracy": result.accuracy,
        "n": result.n_questions,
        "shots": result.n_shot,
        "split": task.split,
        "subjects": {
            s: {"accuracy": result.per_subject[s], "n": result.per_subject_n[s]}
            for s in result.per_subject
        },
    }


def evaluate_tasks(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    shots: int | None = None,
    limit: int | None = None,
    ceval_dir: str | Path | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, dict]:
    """Score ``model`` on each task; ``{task: task_summary(...)}`` in the order given.

    ``shots=None`` uses each task's default (``DEFAULT_SHOTS``: 5 for mmlu and ceval, 0 for
    sentiment); a number applies to every task. ``limit`` caps the questions per task
    (spread over subjects, see the module docstring). Every task is loaded and checked
    before the first one is scored, so a bad C-Eval folder fails in seconds.
    """
    prepared = [
        prepare_task(name, shots=shots, limit=limit, ceval_dir=ceval_dir)
        for name in parse_tasks(tasks)
    ]
    return {
        task.name: task_summary(
            task, score_task(model, tokenizer, task, batch_size=batch_size, progress=progress)
        )
        for task in prepared
    }
