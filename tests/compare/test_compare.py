"""``drencoder compare``: the grid, reuse of finished runs, the table and the verdicts."""

from __future__ import annotations

import csv

import pytest

from drencoder.cli.main import main
from drencoder.compare import CompareSpec, plan_runs, run_comparison
from drencoder.compare.table import stat, verdict
from drencoder.config import Method
from drencoder.errors import CheckpointError, ConfigError
from drencoder.federated import simulator as sim_mod
from helpers import no_model
from helpers import tiny_model_and_tokenizer as tiny

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

TINY = ("rounds=2", "clients=3", "local.lr=0.01", "eval.questions=4", "eval.every=0")


def spec(**kw):
    base = {
        "methods": ("fedavg-lora", "dp-fedavg-lora", "dr-encoder"),
        "epsilons": (8.0,),
        "seeds": (0, 1),
        "tasks": (),
        "preset": "smoke",
        "overrides": TINY,
    }
    return CompareSpec(**{**base, **kw})


def test_the_default_grid_has_every_method_at_every_epsilon_and_seed():
    runs = plan_runs(CompareSpec(preset="smoke"))
    assert len(runs) == 4 * 2 * 3 + 3  # four private methods x {2, 8} x 3 seeds + fedavg
    assert len({r.name for r in runs}) == len(runs)
    for r in runs:
        assert r.config.method is r.method and r.config.seed == r.seed
        if r.method is Method.FEDAVG_LORA:
            assert r.epsilon is None and r.config.target_epsilon is None
        else:
            assert r.config.target_epsilon == r.epsilon in (2.0, 8.0)
            assert r.config.privacy.noise_multiplier is None  # calibrated per method


def test_per_method_overrides_touch_only_that_method():
    runs = plan_runs(spec(method_overrides={"dr-encoder": ("privacy.clip_norm=0.5",)}))
    clips = {r.method.value: r.config.privacy.clip_norm for r in runs}
    assert clips == {"fedavg-lora": 1.0, "dp-fedavg-lora": 1.0, "dr-encoder": 0.5}


def test_variants_add_structured_codecs_and_the_lr_scaled_strawman():
    runs = plan_runs(
        spec(
            methods=("dp-random-projection",),
            variants=("dr-encoder+history", "dp-fedavg-lora+lr-scaled"),
            overrides=(*TINY, "server.lr=2.0"),
        )
    )
    by = {r.label: r for r in runs if r.seed == 0}
    assert set(by) == {"dp-random-projection", "dr-encoder+history", "dp-fedavg-lora+lr-scaled"}
    history, straw = by["dr-encoder+history"], by["dp-fedavg-lora+lr-scaled"]
    assert history.method is Method.DR_ENCODER and history.config.codec.basis.value == "history"
    assert history.name == "dr-encoder+history_eps8_seed0"
    # The strawman: the full update with the server learning rate times k/d = 1/64.
    assert straw.method is Method.DP_FEDAVG_LORA
    assert straw.config.server.lr == pytest.approx(2.0 / 64)
    assert by["dp-random-projection"].config.server.lr == 2.0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"variants": ("dr-encoder+autoencoder",)}, "unknown variant"),
        ({"variants": ("dp-fedavg-lora+fast",)}, "dp-fedavg-lora\\+lr-scaled"),
        ({"overrides": ("seed=3",)}, "seed is set by the comparison"),
        ({"overrides": ("privacy.noise_multiplier=1.0",)}, "calibrates sigma"),
        ({"method_overrides": {"dr-encodr": ("rounds=1",)}}, "unknown methods"),
        ({"epsilons": (8.0, 8.0)}, "distinct"),
        ({"seeds": ()}, "seeds"),
        ({"methods": ("dp-fedavg",)}, "dp-fedavg"),
    ],
)
def test_bad_grids_are_refused_before_anything_runs(kw, message):
    with pytest.raises(ConfigError, match=message):
        plan_runs(spec(**kw))


def test_comparison_runs_tables_and_reuses_finished_runs(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    result = run_comparison(spec(), out, progress=False, model_factory=tiny)
    names = sorted(r["name"] for r in result["records"])
    assert names == sorted(
        [
            "fedavg-lora_seed0",
            "fedavg-lora_seed1",
            "dp-fedavg-lora_eps8_seed0",
            "dp-fedavg-lora_eps8_seed1",
            "dr-encoder_eps8_seed0",
            "dr-encoder_eps8_seed1",
        ]
    )
    for name in names:  # ordinary run directories
        assert (out / "runs" / name / "summary.json").exists()
        assert (out / "runs" / name / "adapter" / "adapter_model.safetensors").exists()
    for f in ("report.md", "results.json", "results.csv", "utility_vs_epsilon.png"):
        assert (out / f).exists(), f
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    rows = {(r["method"], r["target_epsilon"]): r for r in result["rows"]}
    dr, dp = rows[("dr-encoder", 8.0)], rows[("dp-fedavg-lora", 8.0)]
    assert dr["metrics"]["epsilon pld"]["mean"] <= 8.0
    assert dp["metrics"]["epsilon pld"]["mean"] <= 8.0
    assert dr["metrics"]["uplink bytes"]["mean"] < dp["metrics"]["uplink bytes"]["mean"]
    assert rows[("fedavg-lora", None)]["metrics"]["epsilon pld"]["n"] == 0
    baselines = {(v["baseline"], v["metric"]) for v in result["verdicts"]}
    assert ("dp-fedavg-lora", "sentiment accuracy (run eval)") in baselines
    assert ("fedavg-lora", "held-out loss") in baselines
    report = (out / "report.md").read_text()
    assert "| dr-encoder | 8.0 |" in report and "∞ (no DP)" in report

    # Same command again: every run is reused, nothing trains.
    def no_training(self):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(sim_mod.Simulator, "run", no_training)
    again = run_comparison(spec(), out, progress=False, model_factory=tiny)
    assert again["records"] == result["records"]

    # A run without its record (interrupted after training) is resumed, not restarted.
    monkeypatch.undo()
    (out / "runs" / "dr-encoder_eps8_seed1" / "compare-record.json").unlink()
    started = []
    monkeypatch.setattr(sim_mod.Simulator, "start", lambda self: started.append(self))
    third = run_comparison(spec(), out, progress=False, model_factory=tiny)
    assert started == []
    redone = next(r for r in third["records"] if r["name"] == "dr-encoder_eps8_seed1")
    assert (
        redone["resumed"]
        and redone["run_task"]
        == next(r for r in result["records"] if r["name"] == "dr-encoder_eps8_seed1")["run_task"]
    )


def test_the_spec_survives_its_json():
    s = spec(
        method_overrides={"dr-encoder": ("privacy.clip_norm=0.5",)}, variants=("dr-encoder+proxy",)
    )
    assert CompareSpec.from_json(s.to_json()) == s


def test_parallel_runs_write_the_same_runs_as_sequential_ones(tmp_path):
    grid = spec(methods=("fedavg-lora", "dp-fedavg-lora"), seeds=(0,))
    one = run_comparison(grid, tmp_path / "one", progress=False, model_factory=tiny)
    two = run_comparison(grid, tmp_path / "two", progress=False, model_factory=tiny, jobs=2)
    names = [r["name"] for r in two["records"]]
    assert names == [r["name"] for r in one["records"]]  # in the grid's order
    for name in names:
        assert (tmp_path / "two" / "runs" / name / "summary.json").exists()
    for a, b in zip(one["records"], two["records"], strict=True):
        if a["method"] == "fedavg-lora":  # no noise: the same training in either process
            assert b["run_task"]["accuracy"] == a["run_task"]["accuracy"]
            assert b["run_task"]["heldout_loss"] == pytest.approx(a["run_task"]["heldout_loss"])
        else:
            assert b["epsilon"]["pld"] <= 8.0 and b["noise_multiplier"] == a["noise_multiplier"]
    assert (tmp_path / "two" / "report.md").exists()


def test_a_run_another_process_holds_is_refused(tmp_path):
    import fcntl

    from drencoder.compare.execute import LOCK

    out = tmp_path / "cmp"
    run_dir = out / "runs" / "fedavg-lora_seed0"
    run_dir.mkdir(parents=True)
    with open(run_dir / LOCK, "a") as held:  # another open file: flock sees another holder
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CheckpointError, match="being run by another process"):
            run_comparison(
                spec(methods=("fedavg-lora",), seeds=(0,)), out, progress=False, model_factory=tiny
            )
        assert not (run_dir / "config.toml").exists()  # nothing was written into it
    result = run_comparison(
        spec(methods=("fedavg-lora",), seeds=(0,)), out, progress=False, model_factory=tiny
    )
    assert [r["name"] for r in result["records"]] == ["fedavg-lora_seed0"]


def test_a_failed_parallel_run_stops_the_comparison(tmp_path):
    grid = spec(methods=("fedavg-lora",))
    with pytest.raises(RuntimeError, match="no model here"):
        run_comparison(grid, tmp_path / "c", progress=False, model_factory=no_model, jobs=2)
    with pytest.raises(ConfigError, match="jobs"):
        run_comparison(grid, tmp_path / "d", progress=False, model_factory=tiny, jobs=0)


def test_a_different_grid_is_not_mixed_into_an_existing_one(tmp_path):
    out = tmp_path / "cmp"
    run_comparison(
        spec(methods=("fedavg-lora",), seeds=(0,)), out, progress=False, model_factory=tiny
    )
    with pytest.raises(ConfigError, match="other settings"):
        run_comparison(
            spec(methods=("fedavg-lora",), seeds=(0, 1)), out, progress=False, model_factory=tiny
        )


@pytest.mark.parametrize(
    ("a", "b", "higher", "word"),
    [
        ([0.8, 0.82, 0.81], [0.6, 0.61, 0.59], True, "better"),
        ([0.6, 0.61, 0.59], [0.8, 0.82, 0.81], True, "worse"),
        ([0.7, 0.5, 0.6], [0.62, 0.58, 0.6], True, "no clear difference"),
        ([3.1, 3.12, 3.11], [3.5, 3.52, 3.49], False, "better"),  # lower loss is better
    ],
)
def test_verdicts_need_two_standard_errors(a, b, higher, word):
    assert verdict(stat(a), stat(b), higher_is_better=higher)["verdict"] == word


def test_accuracy_verdicts_count_the_question_sample():
    # Identical over seeds, but 10 questions cannot tell 0.6 from 0.5 apart; 10,000 can.
    few = verdict(
        stat([0.6] * 3, questions=10), stat([0.5] * 3, questions=10), higher_is_better=True
    )
    many = verdict(
        stat([0.6] * 3, questions=10_000), stat([0.5] * 3, questions=10_000), higher_is_better=True
    )
    assert few["verdict"] == "no clear difference" and many["verdict"] == "better"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "seed=3"], "seed is set by the comparison"),
        (["--method-set", "dr-encoder"], "METHOD:KEY=VALUE"),
        (["--epsilons", "two"], "expected numbers"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    try:
        code = main(["compare", "--out", str(tmp_path / "c"), "--preset", "smoke", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_help_lists_compare(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "compare" in capsys.readouterr().out


def test_new_tasks_rescore_saved_adapters_without_training(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    first = run_comparison(
        spec(methods=("dp-fedavg-lora",), seeds=(0,)), out, progress=False, model_factory=tiny
    )
    assert first["records"][0]["tasks"] == {}

    def no_training(self):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(sim_mod.Simulator, "run", no_training)
    more = spec(methods=("dp-fedavg-lora",), seeds=(0,), tasks=("sentiment",), eval_limit=4)
    second = run_comparison(more, out, progress=False, model_factory=tiny)
    scored = second["records"][0]["tasks"]["sentiment"]
    assert scored["n"] == 4 and 0.0 <= scored["accuracy"] <= 1.0
    assert second["base"]["tasks"]["sentiment"]["n"] == 4
    metrics = second["rows"][0]["metrics"]
    assert "sentiment accuracy" in metrics and "sentiment accuracy (run eval)" in metrics
    assert "sentiment (4 questions)" in (out / "report.md").read_text()


def test_cli_json_prints_one_object(tmp_path, capsys, monkeypatch):
    import json

    import drencoder.compare as compare_pkg

    fake = {"records": [{"name": "fedavg-lora_seed0"}], "rows": [], "verdicts": []}
    seen = {}

    def fake_run(spec, out, **kwargs):
        seen["spec"] = spec
        return fake

    monkeypatch.setattr(compare_pkg, "run_comparison", fake_run)
    out = tmp_path / "c"
    assert main(["compare", "--out", str(out), "--preset", "smoke", "--json", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert record == {"out": str(out), "report": f"{out}/report.md", **fake}
    assert seen["spec"].preset == "smoke"
