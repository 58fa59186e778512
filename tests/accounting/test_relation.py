import itertools
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from drencoder import accounting as A
from drencoder.accounting import gdp
from drencoder.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

NR = dp_accounting.NeighboringRelation
G = dp_accounting.GaussianDpEvent
SIGMA, Q, T, DELTA = 1.3, 0.25, 12, 1e-5


@pytest.mark.parametrize(
    ("placement", "sampling", "expected"),
    [
        ("central", "poisson", A.Relation.ADD_REMOVE),
        ("central", "fixed", A.Relation.REPLACE_ONE),
        ("local", "poisson", A.Relation.REPLACE_ONE),
        ("local", "fixed", A.Relation.REPLACE_ONE),
    ],
)
def test_auto_picks_add_remove_only_where_participation_is_hidden(placement, sampling, expected):
    assert A.resolve_relation("auto", placement=placement, sampling=sampling) is expected
    for explicit in A.Relation:  # an explicit choice is returned as given
        assert A.resolve_relation(explicit.value, placement=placement, sampling=sampling) is (
            explicit
        )


def test_relation_choices_and_parse_errors_name_the_values():
    assert A.RELATION_CHOICES == ("auto", "add-remove", "replace-one")
    assert A.parse_relation("replace-one") is A.Relation.REPLACE_ONE
    with pytest.raises(ConfigError, match="'add-remove', 'replace-one'.*'zero-out'"):
        A.parse_relation("zero-out")
    with pytest.raises(ConfigError, match="'auto'.*got relation='both'"):
        A.resolve_relation("both", placement="local", sampling="poisson")
    with pytest.raises(ConfigError, match="placement must be one of.*'trusted'"):
        A.resolve_relation("auto", placement="trusted", sampling="poisson")
    with pytest.raises(ConfigError, match="sampling must be one of.*'uniform'"):
        A.round_event(noise_multiplier=1, placement="local", sampling="uniform", sample_rate=1)


def test_mechanism_enums_are_accepted_as_their_strings():
    from drencoder.mechanisms import NoisePlacement, Sampling

    relation = A.resolve_relation(
        "auto", placement=NoisePlacement.CENTRAL, sampling=Sampling.POISSON
    )
    assert relation is A.Relation.ADD_REMOVE


@pytest.mark.parametrize(
    ("placement", "sampling", "warns"),
    [
        ("central", "poisson", False),
        ("central", "fixed", True),
        ("local", "poisson", True),
        ("local", "fixed", True),
    ],
)
def test_warning_when_add_remove_is_forced_where_participation_is_seen(placement, sampling, warns):
    message = A.relation_warning("add-remove", placement=placement, sampling=sampling)
    if warns:
        assert "sees who took part" in message and "replace-one" in message
        assert "\n" not in message
    else:
        assert message is None
    # Replace-one is never weaker than what holds.
    assert A.relation_warning("replace-one", placement=placement, sampling=sampling) is None


def test_round_event_rule():
    def event(placement, sampling, q, sigma=SIGMA):
        return A.round_event(
            noise_multiplier=sigma, placement=placement, sampling=sampling, sample_rate=q
        )

    assert event("central", "poisson", Q) == dp_accounting.PoissonSampledDpEvent(Q, G(SIGMA))
    assert event("central", "poisson", 1.0) == G(SIGMA)
    assert event("central", "fixed", Q) == G(SIGMA)
    assert event("local", "poisson", Q) == G(SIGMA)
    assert event("local", "fixed", Q) == G(SIGMA)
    assert event("central", "poisson", Q, sigma=0) == dp_accounting.NonPrivateDpEvent()
    with pytest.raises(ConfigError, match=r"sample_rate must be in \(0, 1\], got sample_rate=0"):
        event("local", "poisson", 0)
    with pytest.raises(ConfigError, match="noise_multiplier must be finite and >= 0"):
        event("local", "poisson", 1, sigma=-1)
    assert A.charged_to("local") == "participants"
    assert A.charged_to("central") == "all"


def test_gaussian_mechanism_delegates_to_round_event():
    from drencoder.mechanisms import GaussianMechanism, NoisePlacement, Sampling

    for placement, sampling, q in itertools.product(NoisePlacement, Sampling, (Q, 1.0)):
        mech = GaussianMechanism(clip_norm=0.5, noise_multiplier=SIGMA, placement=placement)
        assert mech.dp_event(sample_rate=q, sampling=sampling) == A.round_event(
            noise_multiplier=SIGMA, placement=placement, sampling=sampling, sample_rate=q
        )


def _direct_pld(event, relation):
    pld = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=relation,
        value_discretization_interval=A.accountants.PLD_DISCRETIZATION,
    )
    pld.compose(event)
    return pld.get_epsilon(DELTA)


def _direct_rdp(event):
    rdp = rdp_privacy_accountant.RdpAccountant(orders=A.accountants.RDP_ORDERS)
    rdp.compose(event)
    return rdp.get_epsilon(DELTA)


COMBINATIONS = list(itertools.product(("local", "central"), ("poisson", "fixed"), A.Relation))


@pytest.mark.parametrize(("placement", "sampling", "relation"), COMBINATIONS)
def test_epsilon_equals_dp_accounting_called_directly(placement, sampling, relation):
    one = A.round_event(
        noise_multiplier=SIGMA, placement=placement, sampling=sampling, sample_rate=Q
    )
    event = A.repeated(one, T)
    amplified = isinstance(one, dp_accounting.PoissonSampledDpEvent)
    replace = relation is A.Relation.REPLACE_ONE
    ours = A.epsilons(event, delta=DELTA, relation=relation)

    # PLD: dp-accounting with the neighbouring relation itself.
    nr = NR.REPLACE_ONE if replace else NR.ADD_OR_REMOVE_ONE
    assert ours["pld"] == _direct_pld(event, nr)

    # GDP: mu = sqrt(T)/sigma (or the CLT value q*sqrt(T*(e^{1/sigma^2}-1))), doubled
    # under replace-one (shift 2C).
    clt = Q * math.sqrt(T * math.expm1(1 / SIGMA**2))
    mu = (clt if amplified else math.sqrt(T) / SIGMA) * (2 if replace else 1)
    assert ours["gdp"] == pytest.approx(gdp.epsilon_from_mu(mu=mu, delta=DELTA), rel=1e-12)

    # RDP: the event itself under add-remove; under replace-one the equivalent
    # Gaussian(sigma/2) under add-remove; Poisson under replace-one is not supported.
    if not replace:
        assert ours["rdp"] == _direct_rdp(event)
    elif not amplified:
        assert ours["rdp"] == _direct_rdp(dp_accounting.SelfComposedDpEvent(G(SIGMA / 2), T))
    else:
        assert ours["rdp"] is None
        with pytest.raises(A.UnsupportedRelation, match="use accountant pld"):
            A.epsilon(event, delta=DELTA, accountant="rdp", relation=relation)


def test_replace_one_is_the_add_remove_gaussian_of_half_the_noise():
    # Measured with dp-accounting 0.6.0 (PLDAccountant, value_discretization_interval=1e-4):
    # six GaussianDpEvent(1.0) under REPLACE_ONE and six GaussianDpEvent(0.5) under
    # ADD_OR_REMOVE_ONE both give epsilon 32.17668 at delta=1e-5.
    six = A.repeated(G(1.0), 6)
    for acc in A.ALL_ACCOUNTANTS:
        replace = A.epsilon(six, delta=DELTA, accountant=acc, relation="replace-one")
        half = A.epsilon(A.repeated(G(0.5), 6), delta=DELTA, accountant=acc)
        assert replace == pytest.approx(half, rel=1e-9)
    assert A.epsilon(six, delta=DELTA, accountant="pld", relation="replace-one") == pytest.approx(
        32.17668, abs=1e-4
    )


def test_dp_accounting_rdp_ignores_replace_one_for_gaussian_events():
    # Why rdp accounts the equivalent Gaussian(sigma/2) instead of passing REPLACE_ONE:
    # dp-accounting 0.6.0's RdpAccountant(neighboring_relation=REPLACE_ONE) returns the
    # add-remove value for GaussianDpEvent (13.776 for six Gaussian(1.0) at delta=1e-5,
    # while six Gaussian(0.5) under add-remove give 34.127). If this starts failing,
    # dp-accounting changed and the rewrite should be revisited.
    six = A.repeated(G(1.0), 6)
    rdp = rdp_privacy_accountant.RdpAccountant(
        orders=A.accountants.RDP_ORDERS, neighboring_relation=NR.REPLACE_ONE
    )
    rdp.compose(six)
    assert rdp.get_epsilon(DELTA) == pytest.approx(
        A.epsilon(six, delta=DELTA, accountant="rdp"), rel=1e-9
    )
    ours = A.epsilon(six, delta=DELTA, accountant="rdp", relation="replace-one")
    assert ours == pytest.approx(34.1266, abs=1e-3)


def test_pld_poisson_replace_one_reference_value():
    # dp-accounting 0.6.0 PLDAccountant, q=0.25, sigma=1, T=10, delta=1e-5:
    # 8.0042 under REPLACE_ONE, 5.9737 under ADD_OR_REMOVE_ONE (measured).
    event = A.repeated(dp_accounting.PoissonSampledDpEvent(0.25, G(1.0)), 10)
    assert A.epsilon(event, delta=DELTA, accountant="pld", relation="replace-one") == (
        pytest.approx(8.0042, abs=1e-3)
    )
    assert A.epsilon(event, delta=DELTA, accountant="pld") == pytest.approx(5.9737, abs=1e-3)


def test_delta_at_honours_the_relation():
    event = A.repeated(G(2.0), 4)
    for acc in A.ALL_ACCOUNTANTS:
        eps = A.epsilon(event, delta=DELTA, accountant=acc, relation="replace-one")
        assert A.delta_at(event, epsilon=eps, accountant=acc, relation="replace-one") <= (
            DELTA * (1 + 1e-3)
        )
        # the same epsilon leaves far less delta under add-remove
        assert A.delta_at(event, epsilon=eps, accountant=acc) < DELTA / 10


def test_gdp_mu_doubles_under_replace_one():
    event = A.repeated(G(2.0), 9)
    assert A.gdp_mu(event)[0] == pytest.approx(1.5)
    assert A.gdp_mu(event, relation="replace-one")[0] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("rounds", "target", "sigma_add_remove", "epsilon_replace_one"),
    [
        (6, 8.0, 1.481, 19.12),  # the default run (docs/privacy.md)
        (3, 8.0, 1.047, 19.12),  # docs/results.md, rows labelled 8 (dr-encoder)
        (3, 2.0, 3.766, 4.393),  # docs/results.md, rows labelled 2 (dr-encoder)
    ],
)
def test_the_numbers_the_docs_quote(rounds, target, sigma_add_remove, epsilon_replace_one):
    """σ as runs calibrated it before replace-one (stage-1 release Gaussian(5) plus T local
    rounds, add-remove, PLD, δ = 1e-5), and the ε that σ really gives against the server."""
    import dp_accounting

    from drencoder import accounting

    def run(sigma):
        rounds_event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(sigma), rounds
        )
        return dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(5.0), rounds_event])

    sigma = accounting.calibrate(
        run, target_epsilon=target, delta=1e-5, accountant="pld", relation="add-remove"
    )
    assert sigma == pytest.approx(sigma_add_remove, rel=2e-3)
    replaced = accounting.epsilon(run(sigma), delta=1e-5, accountant="pld", relation="replace-one")
    assert replaced == pytest.approx(epsilon_replace_one, rel=2e-3)
    if rounds == 6:  # the σ the default run calibrates now, under replace-one
        now = accounting.calibrate(
            run, target_epsilon=target, delta=1e-5, accountant="pld", relation="replace-one"
        )
        assert now == pytest.approx(3.03, rel=2e-3)


def test_the_statistics_release_alone_costs_what_its_docstring_says():
    import dp_accounting

    from drencoder import accounting

    event = dp_accounting.GaussianDpEvent(5.0)  # prior/release.py: sigma_s = 5
    eps = accounting.epsilon(event, delta=1e-5, accountant="pld", relation="replace-one")
    assert eps == pytest.approx(1.55, abs=0.01)
