"""Running a comparison: every planned run is an ordinary run directory.

``<out>/runs/<method>[_eps<ε>]_seed<s>/`` is exactly what ``drencoder run`` writes (the
same ``Simulator``); nothing is reimplemented. A run whose record (``compare-record.json``)
exists is reused, an interrupted one is resumed from its checkpoint, so calling the same
comparison again continues it and computes nothing twice. Each final adapter is scored
once on the extra tasks; the base model once per comparison (``base.json``). Calling it
again with other tasks (or another question limit or shot count) rescores the saved
adapters and retrains nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from drencoder.compare.plan import CompareSpec, PlannedRun, check_same_spec, plan_runs
from drencoder.compare.table import summarize_comparison
from drencoder.config import dump_toml, load_config
from drencoder.errors import CheckpointError
from drencoder.reporting.schema import evals

RECORD = "compare-record.json"
BASE = "base.json"

ModelFactory = Callable[[], tuple]


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _score_tasks(
    model, tokenizer, spec: CompareSpec, *, batch_size: int, progress: bool, tasks=None
):
    tasks = spec.tasks if tasks is None else tuple(tasks)
    if not tasks:
        return {}, 0.0
    from drencoder.evaluation.tasks import evaluate_tasks

    start = time.perf_counter()
    scores = evaluate_tasks(
        model,
        tokenizer,
        tasks,
        shots=spec.shots,
        limit=spec.eval_limit,
        ceval_dir=spec.ceval_dir,
        batch_size=batch_size,
        progress=progress,
    )
    return scores, time.perf_counter() - start


def _load(planned: PlannedRun, model_factory: ModelFactory | None, progress: bool):
    if model_factory is not None:
        return model_factory()
    from drencoder.models import load_model

    cfg = planned.config.model
    return load_model(cfg.name, device=cfg.device, progress=progress)


def base_scores(
    spec: CompareSpec,
    out_dir: Path,
    planned: PlannedRun,
    *,
    progress: bool,
    model_factory: ModelFactory | None,
) -> dict:
    """The base model (no adapter) on the extra tasks, computed once per comparison."""
    if not spec.tasks:
        return {"tasks": {}}
    path = out_dir / BASE
    data = json.loads(path.read_text()) if path.exists() else {"tasks": {}}
    return _score_missing(
        data,
        path,
        planned,
        spec,
        progress=progress,
        load=lambda: _load(planned, model_factory, progress),
    )


def rescore(
    record: dict,
    planned: PlannedRun,
    run_dir: Path,
    spec: CompareSpec,
    *,
    progress: bool,
    model_factory: ModelFactory | None,
) -> dict:
    """Score a finished run's saved adapter on the tasks its record lacks."""

    def load():
        from drencoder.lora import load_adapter

        base, tokenizer = _load(planned, model_factory, progress)
        return load_adapter(base, run_dir / "adapter"), tokenizer

    return _score_missing(record, run_dir / RECORD, planned, spec, progress=progress, load=load)


def _score_missing(
    data: dict,
    path: Path,
    planned: PlannedRun,
    spec: CompareSpec,
    *,
    progress: bool,
    load: Callable[[], tuple],
) -> dict:
    """``data`` with the tasks of ``spec`` it lacks (or scored otherwise) scored and saved
    to ``path``; returned with exactly ``spec``'s tasks."""
    same = data.get("eval_settings") == spec.eval_settings()
    missing = [t for t in spec.tasks if not same or t not in data.get("tasks", {})]
    if missing:
        model, tokenizer = load()
        scores, seconds = _score_tasks(
            model,
            tokenizer,
            spec,
            batch_size=planned.config.data.batch_size,
            progress=progress,
            tasks=missing,
        )
        data = {
            **data,
            "tasks": {**(data.get("tasks", {}) if same else {}), **scores},
            "eval_settings": spec.eval_settings(),
            "eval_seconds": round(data.get("eval_seconds", 0.0) * same + seconds, 2),
        }
        _write_json(path, data)
    return {**data, "tasks": {t: data["tasks"][t] for t in spec.tasks}}


def run_one(
    planned: PlannedRun,
    run_dir: Path,
    spec: CompareSpec,
    *,
    progress: bool,
    model_factory: ModelFactory | None,
) -> dict:
    """Run (or resume, or reuse) one planned run and score its final adapter."""
    from drencoder.federated.simulator import Simulator

    record_path = run_dir / RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        return rescore(
            record, planned, run_dir, spec, progress=progress, model_factory=model_factory
        )
    kwargs = {"progress": progress, "model_and_tokenizer": _load(planned, model_factory, progress)}
    start = time.perf_counter()
    resumed = (run_dir / "checkpoints" / "latest.json").exists()
    if resumed:
        saved = dump_toml(load_config(run_dir / "config.toml"))
        if saved != dump_toml(planned.config):
            raise CheckpointError(
                f"{run_dir} was started with another configuration; remove it to rerun it"
            )
        sim = Simulator.resume(run_dir, **kwargs)
    else:
        sim = Simulator(planned.config, run_dir, **kwargs)
    summary = sim.run()
    run_seconds = time.perf_counter() - start
    cfg = planned.config
    scores, eval_seconds = _score_tasks(
        sim.model, sim.tokenizer, spec, batch_size=cfg.data.batch_size, progress=progress
    )
    scored = evals(sim.rows)
    first, last = scored[0], scored[-1]
    privacy, comm = summary["privacy"], summary["communication"]
    record = {
        "name": planned.name,
        "method": planned.label,
        "target_epsilon": planned.epsilon,
        "seed": planned.seed,
        "task": cfg.data.task.value,
        "epsilon": privacy.get("epsilon"),
        "relation": privacy.get("relation"),
        "delta": privacy.get("delta"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        "clip_norm": privacy.get("clip_norm"),
        "rounds_done": summary["rounds_done"],
        "stop_reason": summary["stop_reason"],
        "bytes_per_upload": comm["bytes_per_upload"],
        "full_bytes": comm["full_bytes"],
        "latent_dim": comm["latent_dim"],
        # A simulation diagnostic on raw updates: not covered by epsilon.
        "reconstruction": (summary.get("not_covered_by_epsilon") or {}).get("reconstruction"),
        "run_task": {
            "accuracy": last["accuracy"],
            "initial_accuracy": first["accuracy"],
            "heldout_loss": last["heldout_loss"],
            "initial_heldout_loss": first["heldout_loss"],
            "n": last["questions"],
            "shots": cfg.eval.n_shot,
        },
        "tasks": scores,
        "eval_settings": spec.eval_settings(),
        "wall_seconds": round(run_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "resumed": resumed,
    }
    _write_json(record_path, record)
    return record


def run_comparison(
    spec: CompareSpec,
    out_dir: str | Path,
    *,
    progress: bool = True,
    model_factory: ModelFactory | None = None,
) -> dict:
    """Run (or continue) the whole grid into ``out_dir``; write and return the summary.

    ``model_factory`` returns a fresh ``(model, tokenizer)`` per run (tests pass tiny
    models); by default each run loads ``model.name`` from the cache.
    """
    from drencoder.reporting.comparison import write_comparison

    out_dir = Path(out_dir)
    runs = plan_runs(spec)  # every config validated before anything trains
    check_same_spec(out_dir, spec)
    base = base_scores(spec, out_dir, runs[0], progress=progress, model_factory=model_factory)
    records = []
    for planned in tqdm(runs, desc="comparison runs", disable=not progress):
        run_dir = out_dir / "runs" / planned.name
        records.append(
            run_one(planned, run_dir, spec, progress=progress, model_factory=model_factory)
        )
    result = summarize_comparison(spec, records, base=base)
    write_comparison(out_dir, result)
    return result
