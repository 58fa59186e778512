"""Running a comparison: every planned run is an ordinary run directory.

``<out>/runs/<method>[_eps<ε>]_seed<s>/`` is exactly what ``drencoder run`` writes (the
same ``Simulator``); nothing is reimplemented. A run whose record (``compare-record.json``)
exists is reused, an interrupted one is resumed from its checkpoint, so calling the same
comparison again continues it and computes nothing twice. Each final adapter is scored
once on the extra tasks; the base model once per comparison (``base.json``). Calling it
again with other tasks (or another question limit or shot count) rescores the saved
adapters and retrains nothing.

``jobs > 1`` runs that many grid runs at a time, each in its own worker process with an
equal share of the CPU cores as torch threads (small models on a CPU train faster as
several one-thread runs than as one run on every core). A worker receives the spec as
JSON and the name of its run, plans the grid again and writes the run directory exactly
as the sequential loop does; what is reused or resumed is the same. Workers are spawned,
not forked, so they inherit no state of the parent, random generators included: each run
seeds its DP noise from OS entropy (unless ``privacy.reproducible_noise``), as it does
when run alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from drencoder.compare.plan import CompareSpec, PlannedRun, check_same_spec, plan_runs
from drencoder.compare.table import summarize_comparison
from drencoder.config import dump_toml, load_config
from drencoder.errors import CheckpointError, ConfigError
from drencoder.reporting.schema import evals

RECORD = "compare-record.json"
BASE = "base.json"
LOCK = ".compare-lock"

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
            batch_size=planned.config.eval.batch_size,
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


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while this process runs it, or refuse at once.

    Two processes on one run directory would interleave its checkpoints and metrics: a
    comparison called again while an earlier one (or a worker it left behind when it was
    killed) is still running refuses that run instead. The lock is an ``flock`` on
    ``LOCK``, released when its holder ends, however it ends. Without ``fcntl`` (not
    POSIX) runs are not guarded.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"{run_dir} is being run by another process (an earlier comparison, or a "
                "worker of one that was stopped, is still running it); wait for it to end "
                "or stop it, then call the comparison again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _record(
    planned: PlannedRun, spec: CompareSpec, summary: dict, scored: list, scores: dict
) -> dict:
    """What the comparison keeps of a finished run (``compare-record.json``, less times)."""
    cfg = planned.config
    first, last = scored[0], scored[-1]
    privacy, comm = summary["privacy"], summary["communication"]
    return {
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
    }


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

    with claimed(run_dir):
        record_path = run_dir / RECORD
        if record_path.exists():
            record = json.loads(record_path.read_text())
            return rescore(
                record, planned, run_dir, spec, progress=progress, model_factory=model_factory
            )
        kwargs = {
            "progress": progress,
            "model_and_tokenizer": _load(planned, model_factory, progress),
        }
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
        scores, eval_seconds = _score_tasks(
            sim.model,
            sim.tokenizer,
            spec,
            batch_size=planned.config.eval.batch_size,
            progress=progress,
        )
        record = {
            **_record(planned, spec, summary, evals(sim.rows), scores),
            "wall_seconds": round(run_seconds, 2),
            "eval_seconds": round(eval_seconds, 2),
            "resumed": resumed,
        }
        _write_json(record_path, record)
        return record


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(
    spec_json: str, name: str, out_dir: str, model_factory: ModelFactory | None
) -> dict:
    """One run of the grid in a worker process (see the module doc)."""
    spec = CompareSpec.from_json(json.loads(spec_json))
    planned = next(r for r in plan_runs(spec) if r.name == name)
    run_dir = Path(out_dir) / "runs" / name
    return run_one(planned, run_dir, spec, progress=False, model_factory=model_factory)


def _run_parallel(
    runs: list[PlannedRun],
    spec: CompareSpec,
    out_dir: Path,
    *,
    jobs: int,
    progress: bool,
    model_factory: ModelFactory | None,
) -> list[dict]:
    """The records of ``runs``, in their order, computed ``jobs`` at a time.

    A failed run stops the comparison: runs not started are cancelled, the ones in
    progress end first (each is resumable anyway), then the error is raised."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(jobs, len(runs))
    records: list[dict | None] = [None] * len(runs)
    spec_json = json.dumps(spec.to_json())
    with (
        ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(max(1, _cores() // workers),),
        ) as pool,
        tqdm(total=len(runs), desc="comparison runs", disable=not progress) as bar,
    ):
        futures = {
            pool.submit(_run_in_worker, spec_json, r.name, str(out_dir), model_factory): i
            for i, r in enumerate(runs)
        }
        try:
            for future in as_completed(futures):
                records[futures[future]] = future.result()
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return records  # type: ignore[return-value]  # every slot was filled


def run_comparison(
    spec: CompareSpec,
    out_dir: str | Path,
    *,
    progress: bool = True,
    model_factory: ModelFactory | None = None,
    jobs: int = 1,
) -> dict:
    """Run (or continue) the whole grid into ``out_dir``; write and return the summary.

    ``model_factory`` returns a fresh ``(model, tokenizer)`` per run (tests pass tiny
    models); by default each run loads ``model.name`` from the cache. With ``jobs > 1``
    the runs go to worker processes (see the module doc) and ``model_factory``, if given,
    must be a module-level function.
    """
    from drencoder.reporting.comparison import write_comparison

    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    out_dir = Path(out_dir)
    runs = plan_runs(spec)  # every config validated before anything trains
    check_same_spec(out_dir, spec)
    base = base_scores(spec, out_dir, runs[0], progress=progress, model_factory=model_factory)
    if jobs > 1:
        records = _run_parallel(
            runs, spec, out_dir, jobs=jobs, progress=progress, model_factory=model_factory
        )
    else:
        records = []
        for planned in tqdm(runs, desc="comparison runs", disable=not progress):
            run_dir = out_dir / "runs" / planned.name
            records.append(
                run_one(planned, run_dir, spec, progress=progress, model_factory=model_factory)
            )
    result = summarize_comparison(spec, records, base=base)
    write_comparison(out_dir, result)
    return result
