import json

import pytest

from drencoder import accounting as A
from drencoder.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")


def run(capsys, *argv):
    code = main(["privacy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_epsilon_matches_library(capsys):
    code, out, err = run(
        capsys,
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.1",
        "--rounds",
        "50",
        "--delta",
        "1e-5",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    event = A.rounds_event(noise_multiplier=1.0, sample_rate=0.1, rounds=50)
    assert result["epsilon"] == pytest.approx(A.epsilons(event, delta=1e-5))
    assert result["mu"] == pytest.approx(A.gdp_mu(event)[0])
    assert "central-limit" in err  # the CLT warning reaches the user


def test_full_participation_table(capsys):
    code, out, _ = run(
        capsys, "--noise-multiplier", "2", "--sample-rate", "1", "--rounds", "8", "--delta", "1e-5"
    )
    assert code == 0
    assert "full participation" in out
    for name in ("gdp", "rdp", "pld"):
        assert name in out
    assert "6.57" in out  # gdp = pld = 6.573 for mu = sqrt(8)/2


def test_target_epsilon_calibrates_per_accountant(capsys):
    code, out, _ = run(
        capsys,
        "--target-epsilon",
        "4",
        "--sample-rate",
        "1",
        "--rounds",
        "10",
        "--delta",
        "1e-5",
        "--json",
    )
    assert code == 0
    sigmas = json.loads(out)["noise_multiplier"]
    assert set(sigmas) == {"gdp", "rdp", "pld"}
    for acc, sigma in sigmas.items():
        event = A.rounds_event(noise_multiplier=sigma, sample_rate=1, rounds=10)
        assert A.epsilon(event, delta=1e-5, accountant=acc) <= 4


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (
            ["--noise-multiplier", "0", "--sample-rate", "1", "--rounds", "5", "--delta", "1e-5"],
            ["--noise-multiplier", "(0, inf)", "0"],
        ),
        (
            ["--noise-multiplier", "-1", "--sample-rate", "1", "--rounds", "5", "--delta", "1e-5"],
            ["--noise-multiplier", "-1"],
        ),
        (
            ["--noise-multiplier", "1", "--sample-rate", "0", "--rounds", "5", "--delta", "1e-5"],
            ["--sample-rate", "(0, 1]"],
        ),
        (
            ["--noise-multiplier", "1", "--sample-rate", "1.2", "--rounds", "5", "--delta", "1e-5"],
            ["--sample-rate", "1.2"],
        ),
        (
            ["--noise-multiplier", "1", "--sample-rate", "1", "--rounds", "0", "--delta", "1e-5"],
            ["--rounds", "[1, inf)"],
        ),
        (
            ["--noise-multiplier", "1", "--sample-rate", "1", "--rounds", "3.5", "--delta", "1e-5"],
            ["--rounds", "integer"],
        ),
        (
            ["--noise-multiplier", "1", "--sample-rate", "1", "--rounds", "5", "--delta", "1"],
            ["--delta", "(0, 1)"],
        ),
        (
            ["--noise-multiplier", "abc", "--sample-rate", "1", "--rounds", "5", "--delta", "1e-5"],
            ["--noise-multiplier", "abc"],
        ),
        (
            ["--noise-multiplier", "nan", "--sample-rate", "1", "--rounds", "5", "--delta", "1e-5"],
            ["--noise-multiplier"],
        ),
        (
            ["--sample-rate", "1", "--rounds", "5", "--delta", "1e-5"],
            ["--noise-multiplier", "--target-epsilon"],
        ),
        (["--noise-multiplier", "1", "--rounds", "5", "--delta", "1e-5"], ["--sample-rate"]),
        (
            [
                "--noise-multiplier",
                "1",
                "--target-epsilon",
                "2",
                "--sample-rate",
                "1",
                "--rounds",
                "5",
                "--delta",
                "1e-5",
            ],
            ["not allowed"],
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, names):
    with pytest.raises(SystemExit) as exc:
        main(["privacy", *argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    for name in names:
        assert name in err
