"""Metrics against published values and scipy (scipy only in the tests; the Pi has none)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_convnext import metrics


# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score, no continuity
# correction), 95 %.
@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe(successes, n, low, high):
    lo, hi = metrics.wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_wilson_edges_and_confidence():
    assert metrics.wilson_interval(10, 10)[1] == 1.0
    assert metrics.wilson_interval(0, 10)[0] == 0.0
    narrow, wide = metrics.wilson_interval(40, 100, 0.9), metrics.wilson_interval(40, 100, 0.99)
    assert wide[0] < narrow[0] < 0.4 < narrow[1] < wide[1]
    for bad in [(0, 0), (5, 4), (-1, 3)]:
        with pytest.raises(ValueError):
            metrics.wilson_interval(*bad)


def test_proportion_of_hits():
    proportion = metrics.Proportion.of(np.array([True, False, True, True]))
    assert (proportion.successes, proportion.n, proportion.value) == (3, 4, 0.75)
    assert proportion.ci95 == metrics.wilson_interval(3, 4)


@pytest.mark.parametrize(
    ("k", "n"),
    [
        (0, 1),
        (1, 1),
        (3, 20),
        (10, 20),
        (9, 19),
        (7, 10),
        (0, 50),
        (400, 1000),
        (12000, 25000),
        (1, 5000),
    ],
)
def test_binomial_matches_scipy(k, n):
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = scipy_stats.binomtest(k, n, 0.5, alternative="two-sided").pvalue
    assert metrics.binomial_two_sided_p(k, n) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_counts_only_discordant_pairs():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.8
    b = a.copy()
    flip = rng.choice(500, 40, replace=False)
    b[flip[:30]] = False  # a right, b wrong
    b[flip[30:]] = True
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    expected = scipy_stats.binomtest(only_a, only_a + only_b).pvalue
    assert metrics.mcnemar_exact_p(a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.mcnemar_exact_p(a, a) == 1.0


def test_binomial_rejects_bad_counts():
    with pytest.raises(ValueError):
        metrics.binomial_two_sided_p(5, 4)
    assert metrics.binomial_two_sided_p(0, 0) == 1.0


def test_topk_and_agreement():
    logits = np.array([[0.1, 0.9, 0.0, 0.2], [0.5, 0.1, 0.3, 0.2], [0.0, 0.1, 0.2, 0.3]])
    labels = np.array([1, 2, 0])
    assert metrics.topk_hits(logits, labels, 1).tolist() == [True, False, False]
    assert metrics.topk_hits(logits, labels, 2).tolist() == [True, True, False]
    assert metrics.topk_hits(logits, labels, 4).tolist() == [True, True, True]
    other = logits.copy()
    other[2] = [1.0, 0, 0, 0]
    assert metrics.agreement_top1(other, logits) == pytest.approx(2 / 3)


def test_cosine_snr_kl_on_known_values():
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert metrics.cosine_mean(ref, ref) == pytest.approx(1.0)
    assert metrics.cosine_mean(np.array([[4.0, -3.0], [2.0, 0.0]]), ref) == pytest.approx(0.5)
    noisy = ref + np.array([[0.1, 0.0], [0.0, -0.2]])
    assert metrics.snr_db(noisy, ref) == pytest.approx(10 * math.log10(26 / 0.05))
    assert metrics.snr_db(ref, ref) == math.inf
    assert metrics.kl_mean(ref, ref) == pytest.approx(0.0, abs=1e-12)
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    q = np.exp(noisy) / np.exp(noisy).sum(1, keepdims=True)
    expected = np.mean(np.sum(p * np.log(p / q), axis=1))
    assert metrics.kl_mean(noisy, ref) == pytest.approx(expected, rel=1e-10)


def test_kl_is_stable_for_large_logits():
    ref = np.array([[1000.0, 0.0, -1000.0]])
    assert math.isfinite(metrics.kl_mean(ref * 1.01, ref))


def test_latency_percentiles():
    assert metrics.latency_percentiles(np.arange(1, 11)) == {"p50": 5.5, "p90": 9.1}


def test_expected_agreement_matches_the_mean_of_many_noise_draws():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 50))
    assert metrics.expected_agreement(ref, ref) == 1.0
    noise = 0.05 * rng.normal(size=(400, *ref.shape))
    observed = np.mean([metrics.agreement_top1(ref + n, ref) for n in noise])
    one_draw = ref + noise[0]
    assert metrics.expected_agreement(one_draw, ref) == pytest.approx(observed, abs=0.01)
    assert 0.9 < observed < 0.98  # the noise flips some images, not none or most
