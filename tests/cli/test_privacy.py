import json

import pytest

from drencoder import accounting as A
from drencoder.cli import privacy
from drencoder.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")


def run(capsys, *argv):
    code = main(["privacy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_epsilon_matches_library(capsys):
    code, out, err = run(
        capsys,
        "--placement",
        "central",
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
    assert result["relation"] == "add-remove"  # central + poisson: participation hidden
    event = A.rounds_event(noise_multiplier=1.0, sample_rate=0.1, rounds=50)
    assert result["epsilon"] == pytest.approx(A.epsilons(event, delta=1e-5))
    assert result["mu"] == pytest.approx(A.gdp_mu(event)[0])
    assert "central-limit" in err  # the CLT warning reaches the user


def test_full_participation_table(capsys):
    code, out, _ = run(
        capsys,
        *("--placement", "central", "--noise-multiplier", "2", "--sample-rate", "1"),
        *("--rounds", "8", "--delta", "1e-5"),
    )
    assert code == 0
    assert "full participation" in out
    assert "relation add-remove" in out
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
    result = json.loads(out)
    assert result["relation"] == "replace-one"  # local noise by default
    sigmas = result["noise_multiplier"]
    assert set(sigmas) == {"gdp", "rdp", "pld"}
    for acc, sigma in sigmas.items():
        event = A.rounds_event(noise_multiplier=sigma, sample_rate=1, rounds=10)
        assert A.epsilon(event, delta=1e-5, accountant=acc, relation="replace-one") <= 4


ACCEPT_LOCAL = ["--noise-multiplier", "1", "--sample-rate", "1", "--rounds", "6", "--delta", "1e-5"]
ACCEPT_CENTRAL = [
    *("--placement", "central", "--sample-rate", "0.25", "--rounds", "10"),
    *("--noise-multiplier", "1", "--delta", "1e-5"),
]


def test_local_noise_by_default_prints_the_replace_one_epsilon(capsys):
    # Six Gaussian(1) rounds under replace-one = six Gaussian(0.5) under add-remove:
    # pld 32.1767 at delta=1e-5 (dp-accounting 0.6.0, measured).
    code, out, err = run(capsys, *ACCEPT_LOCAL, "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert (result["placement"], result["sampling"], result["relation"]) == (
        "local",
        "poisson",
        "replace-one",
    )
    half = A.repeated(
        A.round_event(noise_multiplier=0.5, placement="local", sampling="poisson", sample_rate=1), 6
    )
    assert result["epsilon"]["pld"] == pytest.approx(
        A.epsilon(half, delta=1e-5, accountant="pld"), rel=1e-9
    )
    assert result["epsilon"]["pld"] == pytest.approx(32.1767, abs=1e-3)
    assert result["mu"] == pytest.approx(2 * 6**0.5)
    assert result["warnings"] == []

    code, out, _ = run(capsys, *ACCEPT_LOCAL)
    assert "relation replace-one" in out
    assert "32.1767" in out
    assert "charged to its participants" in out


def test_central_poisson_prints_the_add_remove_epsilon(capsys):
    # dp-accounting 0.6.0 PLD, q=0.25, sigma=1, T=10, add-remove: 5.9737 (measured).
    code, out, _ = run(capsys, *ACCEPT_CENTRAL, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["relation"] == "add-remove"
    assert result["placement"] == "central"
    assert result["epsilon"]["pld"] == pytest.approx(5.9737, abs=1e-3)
    event = A.rounds_event(noise_multiplier=1, sample_rate=0.25, rounds=10)
    assert result["epsilon"] == pytest.approx(A.epsilons(event, delta=1e-5))
    assert not any("relation" in w for w in result["warnings"])

    code, out, _ = run(capsys, *ACCEPT_CENTRAL)
    assert "relation add-remove" in out
    assert "5.9737" in out


def test_local_noise_does_not_amplify(capsys):
    argv = ["--noise-multiplier", "1", "--sample-rate", "0.25", "--rounds", "10", "--delta", "1e-5"]
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    result = json.loads(out)
    whole = A.repeated(A.gaussian_round(noise_multiplier=1), 10)  # T un-amplified rounds
    assert result["epsilon"] == pytest.approx(A.epsilons(whole, delta=1e-5, relation="replace-one"))
    assert result["gdp_approximation"] == "exact"
    assert "does not amplify" in result["sampling_note"]
    _, out, _ = run(capsys, *argv)
    assert "note: q = 0.25 does not amplify against the party that sees who took part" in out


def test_forcing_add_remove_where_participation_is_seen_warns(capsys):
    code, out, err = run(capsys, *ACCEPT_LOCAL, "--relation", "add-remove", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["relation"] == "add-remove"
    assert any("sees who took part" in w for w in result["warnings"])
    assert "warning: relation add-remove with placement=local" in err
    _, _, err = run(
        capsys,
        *ACCEPT_CENTRAL[:6],
        "--sampling",
        "fixed",
        *ACCEPT_CENTRAL[6:],
        "--relation",
        "add-remove",
    )
    assert "sees who took part" in err


def test_gdp_is_not_calibrated_under_the_clt(capsys):
    argv = [*ACCEPT_CENTRAL[:6], "--target-epsilon", "8", "--delta", "1e-5"]
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    result = json.loads(out)
    sigmas = result["noise_multiplier"]
    assert sigmas["gdp"] is None
    assert "not calibrated" in result["notes"]["gdp"]
    for acc in ("rdp", "pld"):
        event = A.rounds_event(noise_multiplier=sigmas[acc], sample_rate=0.25, rounds=10)
        assert A.epsilon(event, delta=1e-5, accountant=acc) <= 8
    # the table of the same result (rendered directly: calibrating twice is slow)
    assert "not calibrated: CLT approximation can understate epsilon" in privacy._table(result)


def test_rdp_under_poisson_replace_one_is_not_available(capsys):
    code, out, _ = run(capsys, *ACCEPT_CENTRAL, "--relation", "replace-one", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["epsilon"]["rdp"] is None
    assert result["epsilon"]["pld"] == pytest.approx(8.0042, abs=1e-3)  # measured, see above
    code, out, _ = run(capsys, *ACCEPT_CENTRAL, "--relation", "replace-one")
    assert "n/a" in out


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
        (
            [*ACCEPT_LOCAL, "--relation", "zero-out"],
            ["--relation", "zero-out", "add-remove"],
        ),
        (
            [*ACCEPT_LOCAL, "--placement", "server"],
            ["--placement", "server", "central"],
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
