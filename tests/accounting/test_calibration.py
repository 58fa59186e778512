import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drencoder import accounting as A
from drencoder.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")


def _eps(sigma, q, t, acc, delta=1e-5):
    return A.epsilon(
        A.rounds_event(noise_multiplier=sigma, sample_rate=q, rounds=t), delta=delta, accountant=acc
    )


@pytest.mark.parametrize(
    ("acc", "expected", "tol"),
    [
        # Opacus tests/accountants_test.py, eps=8, delta=1e-5, q=0.04, 90 epochs (2250 steps).
        # Opacus bisects to epsilon_tolerance=0.01, hence the tolerance on sigma.
        ("gdp", 1.3232421875, 5e-3),  # test_get_noise_multiplier_gdp
        ("rdp", 1.416, 5e-3),  # test_get_noise_multiplier_rdp_epochs
        # PLD vs Opacus' PRV accountant (test_get_noise_multiplier_prv_epochs): two tight
        # numerical accountants; they agree to about 1 %.
        ("pld", 1.34765625, 1.5e-2),
    ],
)
def test_reference_calibrations(acc, expected, tol):
    sigma = A.calibrate_noise_multiplier(
        target_epsilon=8, delta=1e-5, sample_rate=0.04, rounds=2250, accountant=acc, rtol=1e-3
    )
    assert sigma == pytest.approx(expected, abs=tol)
    assert _eps(sigma, 0.04, 2250, acc) <= 8


@pytest.mark.parametrize("acc", ["gdp", "rdp"])
@settings(max_examples=15, deadline=None)
@given(
    target=st.floats(0.3, 20.0),
    q=st.sampled_from([0.01, 0.1, 0.5, 1.0]),
    t=st.integers(1, 200),
    delta=st.sampled_from([1e-4, 1e-5, 1e-7]),
)
def test_calibration_never_overshoots(acc, target, q, t, delta):
    sigma = A.calibrate_noise_multiplier(
        target_epsilon=target, delta=delta, sample_rate=q, rounds=t, accountant=acc
    )
    assert _eps(sigma, q, t, acc, delta) <= target
    # ... and is tight: 1 % less noise would exceed the target.
    assert _eps(sigma * 0.99, q, t, acc, delta) > target or sigma <= 1e-3


@settings(max_examples=3, deadline=None)
@given(target=st.floats(2.0, 10.0), q=st.sampled_from([0.2, 1.0]), t=st.integers(1, 20))
def test_pld_calibration_never_overshoots(target, q, t):
    sigma = A.calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, rounds=t, accountant="pld", rtol=1e-2
    )
    assert _eps(sigma, q, t, "pld") <= target


def test_calibrating_a_whole_ledger_event_includes_the_statistics_charge():
    stats = A.gaussian_round(noise_multiplier=5.0)

    def whole(sigma):
        rounds = A.rounds_event(noise_multiplier=sigma, sample_rate=1, rounds=10)
        return dp_accounting.ComposedDpEvent([stats, rounds])

    with_stats = A.calibrate(whole, target_epsilon=4, delta=1e-5, accountant="gdp")
    without = A.calibrate_noise_multiplier(
        target_epsilon=4, delta=1e-5, sample_rate=1, rounds=10, accountant="gdp"
    )
    assert with_stats > without


def test_unreachable_target_is_a_clear_error():
    with pytest.raises(ConfigError, match="no noise multiplier"):
        A.calibrate(
            lambda s: dp_accounting.NonPrivateDpEvent(),
            target_epsilon=1,
            delta=1e-5,
            accountant="gdp",
        )
