"""The Koch verdict (issue 40): the rule on effect sizes whose answer is known, the effect sizes on severities whose
change is known, and the guards (hosts, competence, transplant)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from koch_explore.koch.scoring import ImageScore, Tally
from koch_explore.koch.verdict import VerdictRule, decide, effect_sizes

RULE = VerdictRule()
COMPETENT = {"population": "phantom", "n": 60, "referable_auc": 0.95, "spread": 1.5}


def effects(change, auc=(0.8, 0.75, 0.85), control=None, hosts=20, trials=None):
    """An effect-size dict as :func:`effect_sizes` writes it: ``change`` (mean, lo, hi) in grades."""
    out = {"distinct_hosts": hosts, "trials": trials or hosts, "largest_count": 16,
           "severity_change": {"mean": change[0], "ci": [change[1], change[2]]},
           "placement_auc": {"value": auc[0], "ci": [auc[1], auc[2]]}, "control": None}
    if control is not None:
        out["control"] = {"severity_change": {"mean": control[0], "ci": [control[1], control[2]]}}
    return out


@pytest.mark.parametrize("case, competence, expected, why", [
    (effects((1.4, 1.1, 1.7), control=(0.9, 0.6, 1.2)), COMPETENT, "lesion-driven", "above"),
    (effects((0.0001, 0.0, 0.0002), auc=(0.46, 0.40, 0.52), control=(0.0, -0.01, 0.01)), COMPETENT, "not-lesion-driven", "within"),
    # a map drawn to edges may point at lesions the grade ignores: still not lesion-driven
    (effects((0.01, -0.02, 0.03), auc=(0.7, 0.65, 0.75), control=(0.0, -0.02, 0.02)), COMPETENT, "not-lesion-driven", "nonetheless"),
    # responds to the synthesizer's lesions, not to real ones: artefacts
    (effects((0.8, 0.5, 1.1), control=(0.01, -0.03, 0.04)), COMPETENT, "not-lesion-driven", "artefacts"),
    # responds to real lesions, not to the synthesized ones: a verdict on the synthesizer
    (effects((0.01, -0.03, 0.05), control=(0.9, 0.6, 1.2)), COMPETENT, "inconclusive", "synthesizer"),
    # flat, but the model does not grade these photos at all
    (effects((0.0, -0.01, 0.01), control=(0.0, -0.01, 0.01)), {**COMPETENT, "referable_auc": 0.55}, "inconclusive", "does not grade"),
    (effects((0.0, -0.01, 0.01), control=(0.0, -0.01, 0.01)), None, "inconclusive", "competence not measured"),
    # one photo reused eight times is one host
    (effects((1.4, 1.4, 1.4), control=(0.9, 0.9, 0.9), hosts=1, trials=8), COMPETENT, "inconclusive", "reused 8 times"),
    # a rise whose CI reaches below the line, or a map that does not point at the lesions
    (effects((0.12, 0.06, 0.18), control=(0.12, 0.06, 0.18)), COMPETENT, "inconclusive", "neither"),
    (effects((1.0, 0.8, 1.2), auc=(0.5, 0.45, 0.55), control=(0.9, 0.6, 1.2)), COMPETENT, "inconclusive", "does not point"),
])
def test_the_rule_on_cases_whose_answer_is_known(case, competence, expected, why):
    verdict, reasons = decide(case, competence, RULE)
    assert verdict == expected, reasons
    assert reasons and any(why in r for r in reasons), reasons


def rising_tally(n_trials, pos, neg):
    tally = Tally()
    for _ in range(n_trials):
        tally.add({16: ImageScore(16, [None] * 16, [], [True] * 16, [True] * 16, [(0, 0)] * 16, [False] * 16, [False] * 16,
                                  [pos] * 16, [neg] * 16, [])})
    return tally


def test_effect_sizes_measure_a_known_change_with_a_host_bootstrap():
    counts = [0, 16]
    rng = np.random.default_rng(0)
    hosts = [f"h{i}" for i in range(20)]
    rise = np.c_[np.full(20, 0.5), 0.5 + 1.0 + rng.normal(0, 0.1, 20)]  # +1 grade, host noise 0.1
    e = effect_sizes(counts, rise, hosts, rising_tally(20, 0.9, 0.1), competence=COMPETENT, n_boot=400)
    assert e["distinct_hosts"] == 20 and e["largest_count"] == 16
    lo, hi = e["severity_change"]["ci"]
    assert 0.9 < lo < 1.0 < hi < 1.1
    assert e["slope_per_lesion"]["mean"] == pytest.approx(e["severity_change"]["mean"] / 16)
    assert e["relative_change"]["mean"] == pytest.approx(e["severity_change"]["mean"] / 1.5)
    assert e["placement_auc"]["value"] == 1.0 and e["hit_minus_chance"]["value"] == 1.0
    assert decide(e, COMPETENT, RULE)[0] == "lesion-driven"  # no control given: decided on the synthesized lesions
    flat = np.c_[np.full(20, 0.5), 0.5 + rng.normal(0, 0.01, 20)]
    e = effect_sizes(counts, flat, hosts, rising_tally(20, 0.5, 0.5), control=rising_tally(20, 0.5, 0.5),
                     control_severity=flat[:, 1:], competence=COMPETENT, n_boot=400)
    assert abs(e["severity_change"]["ci"][0]) < 0.02 and e["placement_auc"]["value"] == 0.5
    assert decide(e, COMPETENT, RULE)[0] == "not-lesion-driven"
    # the same rising trials all on one host: the CI cannot pretend to twenty observations
    e = effect_sizes(counts, rise, ["one"] * 20, rising_tally(20, 0.9, 0.1), n_boot=100)
    assert e["distinct_hosts"] == 1 and e["severity_change"]["ci"][0] == e["severity_change"]["ci"][1]
    assert decide(e, COMPETENT, RULE) == ("inconclusive", ["only 1 distinct host (at least 8 needed): one host reused 20 times"])


def test_exact_binomial_interval_on_known_values():
    from koch_explore.core.stats import exact_binomial_ci

    assert exact_binomial_ci(0, 12)[0] == 0.0 and exact_binomial_ci(0, 12)[1] == pytest.approx(0.2646, abs=1e-4)
    assert exact_binomial_ci(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)  # Clopper & Pearson's tables
    assert exact_binomial_ci(12, 12) == pytest.approx((0.7354, 1.0), abs=1e-4)
    with pytest.raises(ValueError):
        exact_binomial_ci(3, 2)


# -- two models whose answer is known by construction, through the whole chain ---------------------

ZOO = Path(__file__).parent / "data" / "zoo"


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    from koch_explore.koch import zoo

    return zoo.build_pool(tmp_path_factory.mktemp("zoo") / "pool.npz", zoo.PoolConfig(n=60, n_val=60, seed0=20_000), progress=False)


@pytest.mark.parametrize("name, expected", [("lesion-driven-plain-s2", "lesion-driven"),
                                            ("shortcut-rim-tint-s2", "not-lesion-driven")])
def test_known_answer_models_get_their_verdict(name, expected, small_pool):
    """A grader trained on phantom grades, and one trained on a rim tint that tells an independent grade (lesions
    drawn at random): 8 phantom hosts, lesions transplanted, competence measured on their own populations."""
    from koch_explore.koch import zoo
    from koch_explore.koch.test import KochConfig, koch_test

    member = next(m for m in zoo.zoo_members("dev") if m.name == name)
    model = zoo.load_member(member, ZOO / f"{name}.safetensors")
    competence = zoo.member_competence(model, member, small_pool)
    assert competence["referable_auc"] > 0.9  # each grades its own population
    synth, bank = zoo.transplant_setup()
    hosts = zoo.koch_hosts(zoo.MeasureConfig(n_hosts=8))
    report = koch_test(model, synth, bank, hosts, config=KochConfig(trials=8, counts=(0, 4, 16), n_boot=300), vessel_model=False,
                       competence=competence, progress=False)
    assert report.distinct_hosts == 8
    assert report.verdict == expected, report.verdict_reasons
