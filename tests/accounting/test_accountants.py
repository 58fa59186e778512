import math
import subprocess
import sys

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from drencoder import accounting as A
from drencoder.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")


@pytest.mark.parametrize(("sigma", "rounds"), [(0.8, 1), (1.0, 5), (2.0, 8), (5.0, 20)])
def test_gdp_equals_pld_under_full_participation(sigma, rounds):
    event = A.rounds_event(noise_multiplier=sigma, sample_rate=1.0, rounds=rounds)
    gdp = A.epsilon(event, delta=1e-5, accountant="gdp")
    pld = A.epsilon(event, delta=1e-5, accountant="pld")
    assert gdp == pytest.approx(pld, rel=1e-4)


@pytest.mark.parametrize(("sigma", "q", "rounds"), [(1.0, 0.1, 100), (1.5, 0.04, 300)])
def test_rdp_and_pld_equal_dp_accounting_called_directly(sigma, q, rounds):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), rounds
    )
    rdp = rdp_privacy_accountant.RdpAccountant(orders=A.accountants.RDP_ORDERS)
    rdp.compose(event)
    pld = pld_privacy_accountant.PLDAccountant(
        value_discretization_interval=A.accountants.PLD_DISCRETIZATION
    )
    pld.compose(event)
    ours = A.rounds_event(noise_multiplier=sigma, sample_rate=q, rounds=rounds)
    assert A.epsilon(ours, delta=1e-5, accountant="rdp") == rdp.get_epsilon(1e-5)
    assert A.epsilon(ours, delta=1e-5, accountant="pld") == pld.get_epsilon(1e-5)


def test_rdp_reference_value_from_opacus():
    # Opacus tests/accountants_test.py::test_rdp_accountant: sigma=1.5, q=0.04,
    # steps=int(90/0.04)=2250, delta=1e-5 -> 7.32911117143 (Opacus' own RDP code; its
    # order grid and conversion differ slightly from dp-accounting's).
    event = A.rounds_event(noise_multiplier=1.5, sample_rate=0.04, rounds=2250)
    assert A.epsilon(event, delta=1e-5, accountant="rdp") == pytest.approx(7.32911, abs=2e-3)


def test_pld_is_tighter_than_rdp_and_gdp_clt_is_lowest_here():
    event = A.rounds_event(noise_multiplier=1.0, sample_rate=0.1, rounds=100)
    eps = A.epsilons(event, delta=1e-5)
    assert eps["pld"] < eps["rdp"]
    # The CLT is known to understate epsilon in this regime (Opacus PR #400).
    assert eps["gdp"] < eps["pld"]


def test_epsilons_warns_once_for_clt():
    event = A.rounds_event(noise_multiplier=1.0, sample_rate=0.1, rounds=10)
    with pytest.warns(A.GdpApproximationWarning) as record:
        A.epsilons(event, delta=1e-5)
    assert len([w for w in record if issubclass(w.category, A.GdpApproximationWarning)]) == 1


def test_delta_at_inverts_epsilon():
    event = A.rounds_event(noise_multiplier=1.2, sample_rate=1.0, rounds=4)
    for acc in A.ALL_ACCOUNTANTS:
        eps = A.epsilon(event, delta=1e-5, accountant=acc)
        assert A.delta_at(event, epsilon=eps, accountant=acc) <= 1e-5 * (1 + 1e-3)


def test_non_private_event_is_infinite():
    event = dp_accounting.NonPrivateDpEvent()
    for acc in A.ALL_ACCOUNTANTS:
        assert A.epsilon(event, delta=1e-5, accountant=acc) == math.inf


def test_convergence_warnings_stay_off_the_terminal(caplog):
    # dp-accounting logs "_compute_log_a_frac failed to converge" through absl for
    # q=0.25, sigma=1 at small fractional orders; the value is still finite.
    event = A.rounds_event(noise_multiplier=1.0, sample_rate=0.25, rounds=50)
    eps = A.epsilon(event, delta=1e-5, accountant="rdp")
    assert math.isfinite(eps)
    assert "failed to converge" not in caplog.text


def test_unknown_accountant_is_refused():
    with pytest.raises(ConfigError, match="prv"):
        A.epsilon(
            A.rounds_event(noise_multiplier=1, sample_rate=1, rounds=1),
            delta=1e-5,
            accountant="prv",
        )


SIGMAS = st.floats(0.8, 4.0)
QS = st.sampled_from([0.05, 0.2, 0.5, 1.0])
TS = st.integers(1, 40)


@pytest.mark.parametrize(("acc", "examples"), [("gdp", 30), ("rdp", 10), ("pld", 4)])
def test_epsilon_monotone_in_sigma_t_and_q(acc, examples):
    @settings(max_examples=examples, deadline=None)
    @given(sigma=SIGMAS, q=QS, t=TS, factor=st.floats(1.05, 2.0))
    def check(sigma, q, t, factor):
        _check_monotone(acc, sigma, q, t, factor)

    check()


def _check_monotone(acc, sigma, q, t, factor):
    def eps(s, qq, tt):
        return A.epsilon(
            A.rounds_event(noise_multiplier=s, sample_rate=qq, rounds=tt),
            delta=1e-5,
            accountant=acc,
        )

    base = eps(sigma, q, t)
    tol = 1e-6 * max(1.0, base)
    assert eps(sigma * factor, q, t) <= base + tol  # more noise, less epsilon
    assert eps(sigma, q, t + 1) >= base - tol  # more rounds, more epsilon
    assert eps(sigma, min(1.0, q * factor), t) >= base - tol  # more sampling, more epsilon


def test_accounting_never_imports_torch():
    code = (
        "import sys, drencoder.accounting\n"
        "from drencoder.cli.main import main\n"
        "main(['privacy', '--noise-multiplier', '1', '--sample-rate', '1', '--rounds', '2',"
        " '--delta', '1e-5', '--json'])\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_pld_grid_coarsens_for_small_noise_and_keeps_an_upper_bound():
    import tracemalloc

    # At or above σ = 0.5 the grid is the fixed one (the calls above match dp-accounting).
    fine = A.accountants.PLD_DISCRETIZATION
    assert (
        A.accountants.pld_discretization(
            A.rounds_event(noise_multiplier=0.5, sample_rate=0.1, rounds=3)
        )
        == fine
    )
    # Below, the interval grows as 1/σ², so the grid's size stays about that of σ = 0.5.
    event = A.rounds_event(noise_multiplier=0.3, sample_rate=1.0, rounds=2)
    assert A.accountants.pld_discretization(event) == pytest.approx(fine * (0.5 / 0.3) ** 2)
    on_fine_grid = pld_privacy_accountant.PLDAccountant(value_discretization_interval=fine)
    on_fine_grid.compose(event)
    coarse = A.epsilon(event, delta=1e-5, accountant="pld")
    assert coarse >= on_fine_grid.get_epsilon(1e-5)  # pessimistic: still an upper bound
    assert coarse == pytest.approx(on_fine_grid.get_epsilon(1e-5), rel=1e-6)
    # σ = 0.01 on the fixed grid needed more than 12 GB; now a few MB.
    tiny = A.rounds_event(noise_multiplier=0.01, sample_rate=1.0, rounds=2)
    tracemalloc.start()
    try:
        eps = A.epsilon(tiny, delta=1e-5, accountant="pld")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6
    assert A.epsilon(tiny, delta=1e-5, accountant="rdp") >= eps > 1000


@pytest.mark.parametrize("relation", ["add-remove", "replace-one"])
def test_pld_reuses_subsampled_gaussian_plds_and_gives_the_same_epsilon(relation):
    """The reused PLD of a Poisson-subsampled Gaussian gives exactly dp-accounting's ε, also
    composed with other events, and is built once for all counts."""
    from drencoder.accounting.accountants import _NEIGHBORING, _subsampled_gaussian_pld

    step = dp_accounting.PoissonSampledDpEvent(0.3, dp_accounting.GaussianDpEvent(1.7))
    other = dp_accounting.GaussianDpEvent(5.0)
    _subsampled_gaussian_pld.cache_clear()
    for count in (1, 3, 7):
        event = dp_accounting.ComposedDpEvent(
            [dp_accounting.SelfComposedDpEvent(step, count), other]
        )
        plain = pld_privacy_accountant.PLDAccountant(
            neighboring_relation=_NEIGHBORING[A.parse_relation(relation)],
            value_discretization_interval=1e-4,
        )
        plain.compose(event)
        got = A.epsilon(event, delta=1e-5, accountant="pld", relation=relation)
        assert got == plain.get_epsilon(1e-5)
    info = _subsampled_gaussian_pld.cache_info()
    assert info.misses == 1 and info.hits == 2
