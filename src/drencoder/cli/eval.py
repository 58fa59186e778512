"""``drencoder eval``: multiple-choice accuracy of a base model, or base + adapter."""

from __future__ import annotations

import argparse
import json

from drencoder.cli import argtypes
from drencoder.cli.argtypes import device

DESCRIPTION = """\
Score a model on MMLU, C-Eval and/or Chinese review sentiment the lm-evaluation-harness
way: log-likelihood of each answer letter after the prompt, argmax, accuracy averaged over
questions (subjects weigh by their size). MMLU is scored on the held-out evaluation part
of the project's fixed split (docs/data.md), with the split's 5 exemplars per subject for
few-shot; C-Eval on val/ of --ceval-dir with exemplars from dev/; sentiment on its
held-out part. Default shots: mmlu 5, ceval 5, sentiment 0. --limit N scores exactly N
questions per task (or all, if fewer), the first of every subject, then the second, and
so on. See docs/evaluation.md.
"""


TASK_NAMES = "mmlu,ceval,sentiment"  # drencoder.evaluation.tasks.TASKS, without importing torch


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a model (and adapter) on mmlu, ceval, sentiment",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_NAME",
        help="registered model name or local Hugging Face folder (default: smollm2-135m)",
    )
    p.add_argument("--adapter", metavar="DIR", help="PEFT adapter folder, e.g. run_dir/adapter")
    p.add_argument(
        "--tasks",
        default="mmlu",
        metavar="LIST",
        help=f"comma-separated, from {TASK_NAMES} (default: mmlu)",
    )
    p.add_argument(
        "--shots",
        type=argtypes.number(lo=0, integer=True),
        metavar="N",
        help="few-shot exemplars for every task",
    )
    p.add_argument(
        "--limit",
        type=argtypes.number(lo=1, integer=True),
        metavar="N",
        help="score at most N questions per task",
    )
    p.add_argument("--ceval-dir", metavar="DIR", help="official C-Eval folder (val/, dev/)")
    p.add_argument(
        "--batch-size",
        type=argtypes.number(lo=1, integer=True),
        default=8,
        metavar="N",
        help="default: 8",
    )
    p.add_argument(
        "--device", default="cpu", type=device, help="cpu, cuda or cuda:N (default: cpu)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def _table(tasks: dict[str, dict]) -> str:
    lines = []
    for name, res in tasks.items():
        lines.append(
            f"{name}: accuracy {res['accuracy']:.4f} on {res['n']} questions, "
            f"{res['shots']}-shot ({res['split']})"
        )
        width = max(len(s) for s in res["subjects"])
        lines.append(f"  {'subject':<{width}}  {'n':>5}  accuracy")
        for subject, row in res["subjects"].items():
            lines.append(f"  {subject:<{width}}  {row['n']:>5}  {row['accuracy']:.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from drencoder.errors import ConfigError
    from drencoder.evaluation import adapter_hash
    from drencoder.evaluation.tasks import evaluate_tasks, parse_tasks
    from drencoder.lora import adapter_layout, get_adapter_state, load_adapter
    from drencoder.models import DEFAULT_MODEL, load_model

    tasks = parse_tasks(args.tasks)
    for flag in ("batch_size", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if "ceval" in tasks and args.ceval_dir is None:
        raise ConfigError("--tasks ceval needs --ceval-dir DIR (the unzipped ceval-exam folder)")
    model_name = args.model or DEFAULT_MODEL
    progress = not args.no_progress
    model, tokenizer = load_model(model_name, device=args.device, progress=progress)
    adapter = None
    if args.adapter:
        model = load_adapter(model, args.adapter)
        flat = adapter_layout(model).flatten(get_adapter_state(model))
        adapter = {"path": args.adapter, "hash": adapter_hash(flat)}
    results = evaluate_tasks(
        model,
        tokenizer,
        tasks,
        shots=args.shots,
        limit=args.limit,
        ceval_dir=args.ceval_dir,
        batch_size=args.batch_size,
        progress=progress,
    )
    if args.json:
        print(json.dumps({"tasks": results, "model": model_name, "adapter": adapter}, indent=1))
        return 0
    print(f"model:   {model_name}")
    print(f"adapter: {adapter['path'] + ' (' + adapter['hash'] + ')' if adapter else 'none'}")
    print(_table(results))
    return 0
