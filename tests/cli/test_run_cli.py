import pytest

from drencoder.cli.main import main


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--set", "rounds=0", "--out", "x"], "rounds must be >= 1"),
        (["--set", "privacy.clipnorm=1", "--out", "x"], "did you mean 'clip_norm'"),
        (["--preset", "nope", "--out", "x"], "invalid choice"),
        (["--config", "missing.toml", "--out", "x"], "config file not found"),
        (["--resume", "no-such-run"], "not a drencoder run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["run", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    _, err = capsys.readouterr()
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture
def tiny_model_dir(tmp_path):
    """The tiny random model saved as a local Hugging Face folder."""
    from helpers import make_tiny_llama, make_tiny_tokenizer

    model_dir = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    return model_dir


def test_out_or_resume_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_help_lists_every_config_key_with_its_default(capsys):
    from drencoder.config import describe_keys

    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key, default, _ in describe_keys():
        assert f"  {key} = {default}\n" in out, key
    assert "FedAdam" in out and "target quantile" in out


@pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")
def test_run_then_resume_from_the_command_line(tmp_path, capsys, tiny_model_dir):
    model_dir = tiny_model_dir
    out = tmp_path / "run"
    argv = ["run", "--preset", "smoke", "--set", f'model.name="{model_dir}"']
    assert main([*argv, "--set", "method=dp-fedavg-lora", "--out", str(out), "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "report.md" in first and "epsilon:" in first and "rounds:        2 of 2" in first
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert "rounds:        2 of 2" in capsys.readouterr().out
    assert main(["run", "--resume", str(out), "--set", "rounds=3"]) == 2
    assert "--resume continues with the run's own config.toml" in capsys.readouterr().err


def test_reproducible_noise_flag_sets_the_config_key_and_is_refused_on_resume(
    tmp_path, monkeypatch, capsys
):
    from drencoder.federated import simulator

    class Stop(Exception):
        pass

    seen = {}

    def fake_simulator(config, out, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(simulator, "Simulator", fake_simulator)
    with pytest.raises(Stop):
        main(["run", "--out", str(tmp_path / "d")])
    assert seen["config"].privacy.reproducible_noise is False  # OS entropy by default
    with pytest.raises(Stop):
        main(["run", "--reproducible-noise", "--out", str(tmp_path / "o")])
    assert seen["config"].privacy.reproducible_noise is True
    assert main(["run", "--resume", str(tmp_path / "o"), "--reproducible-noise"]) == 2
    assert "--reproducible-noise" in capsys.readouterr().err


def test_the_replaced_secure_rng_key_says_what_to_do(capsys, tmp_path):
    assert main(["run", "--set", "privacy.secure_rng=true", "--out", str(tmp_path / "o")]) == 2
    assert "replaced by privacy.reproducible_noise" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")
def test_a_reproducible_run_says_epsilon_does_not_hold_against_the_seed(
    tmp_path, capsys, tiny_model_dir
):
    import json

    model_dir = tiny_model_dir
    out = tmp_path / "run"
    argv = ["run", "--preset", "smoke", "--set", f'model.name="{model_dir}"']
    argv += ["--set", "method=dp-fedavg-lora", "--reproducible-noise", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert "replace-one relation" in printed
    assert "does NOT hold against anyone who knows the seed" in err
    privacy = json.loads((out / "summary.json").read_text())["privacy"]
    assert privacy["reproducible_noise"] is True and privacy["relation"] == "replace-one"
    assert "does NOT hold" in privacy["noise_seed"]
    report = (out / "report.md").read_text()
    assert "**Warning.**" in report and "does NOT hold" in report


@pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")
def test_json_prints_one_object_with_the_summary(tmp_path, capsys, tiny_model_dir):
    import json

    out = tmp_path / "run"
    argv = ["run", "--preset", "smoke", "--set", f'model.name="{tiny_model_dir}"', "--json"]
    assert main([*argv, "--set", "rounds=1", "--out", str(out), "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert record["run_dir"] == str(out)
    assert record["report"] == str(out / "report.md")
    assert record["summary"] == json.loads((out / "summary.json").read_text())
