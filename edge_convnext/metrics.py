"""Accuracy, agreement and numerical-fidelity metrics in numpy and the standard library only.

The Raspberry Pi has no scipy, so the normal quantile comes from :class:`statistics.NormalDist`
and the exact binomial test is summed in log space here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Proportion:
    """A proportion ``successes / n`` with its Wilson score interval.

    Attributes:
        successes: number of hits.
        n: number of trials (> 0).
        value: ``successes / n``.
        ci95: ``(low, high)`` Wilson score interval at 95 % confidence.
    """

    successes: int
    n: int
    value: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, hits: np.ndarray) -> Proportion:
        """Build from a boolean array of hits (must not be empty)."""
        successes, n = int(np.count_nonzero(hits)), int(np.size(hits))
        return cls(successes, n, successes / n, wilson_interval(successes, n))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (no continuity correction).

    Args:
        successes: number of hits, ``0 <= successes <= n``.
        n: number of trials, > 0.
        confidence: two-sided coverage, e.g. 0.95.

    Returns:
        ``(low, high)``, both within [0, 1].

    Raises:
        ValueError: ``n`` is 0 or ``successes`` is out of range.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(
            f"wilson_interval needs 0 <= successes <= n and n > 0, got {successes}/{n}"
        )
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # At 0 or n hits a bound is exactly 0 or 1; say so instead of leaving rounding noise.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """Boolean ``(N,)``: whether each label is among the ``k`` largest logits of its row.

    Ties at the k-th place count as hits only if ``argpartition`` puts the label there, which is
    what every framework's ``topk`` does in practice; exact ties do not occur with real logits.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if k == 1:
        return np.argmax(logits, axis=1) == labels
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return np.any(top == labels[:, None], axis=1)


def agreement_top1(logits: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the reference's argmax."""
    return float(np.mean(np.argmax(logits, axis=1) == np.argmax(reference, axis=1)))


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of ``k`` successes in ``n`` trials against p = 0.5.

    For p = 0.5 the distribution is symmetric, so the two-sided p-value (scipy's ``binomtest``,
    "minlike") is ``min(1, 2 * P(X <= min(k, n - k)))``. Summed in log space so that n in the
    tens of thousands does not underflow.
    """
    if not 0 <= k <= n:
        raise ValueError(f"binomial_two_sided_p needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    low = min(k, n - k)
    i = np.arange(low, dtype=np.float64)
    # log C(n, i) for i = 0..low via the ratio C(n, i+1) / C(n, i) = (n - i) / (i + 1).
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - i) - np.log(i + 1))])
    log_terms = log_comb - n * math.log(2.0)
    top = log_terms.max()
    tail = math.exp(top) * float(np.sum(np.exp(log_terms - top)))
    return min(1.0, 2.0 * tail)


def mcnemar_exact_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact paired McNemar test p-value: binomial test on the discordant pairs.

    Args:
        correct_a: boolean ``(N,)``, whether model A got each image right.
        correct_b: boolean ``(N,)``, the same images for model B.

    Returns:
        Two-sided p-value; 1.0 when there are no discordant pairs.
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    only_a = int(np.count_nonzero(correct_a & ~correct_b))
    only_b = int(np.count_nonzero(~correct_a & correct_b))
    return binomial_two_sided_p(only_a, only_a + only_b)


def cosine_mean(logits: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of the cosine similarity between logit vectors (float64)."""
    return float(np.mean(cosine_rows(logits, reference)))


def cosine_rows(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity between logit vectors, float64 ``(N,)`` (chunk by chunk, the
    mean of these equals :func:`cosine_mean` of all rows)."""
    x = np.asarray(logits, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    dot = np.sum(x * ref, axis=1)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dot / norms


def snr_db(logits: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-noise ratio in dB over all logits: ``10 log10(sum ref^2 / sum (x - ref)^2)``.

    Returns ``inf`` when the logits equal the reference exactly.
    """
    x = np.asarray(logits, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    return snr_db_of_sums(float(np.sum(ref**2)), float(np.sum((x - ref) ** 2)))


def snr_db_of_sums(signal: float, noise: float) -> float:
    """:func:`snr_db` from ``sum ref^2`` and ``sum (x - ref)^2`` (e.g. summed chunk by chunk)."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def expected_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 agreement expected at this error level, whichever near-ties happened to flip.

    An image keeps its top-1 when the error in its (top-1 - top-2) logit gap does not exceed the
    reference's gap. That error is taken as Gaussian with the RMS seen over all images, so an
    image of gap ``m`` keeps its top-1 with probability ``Phi(m / rms)``; this is the mean over
    images. Seeded weights leave many images within a hair of a tie, where observed agreement
    on a few hundred images swings by several images at the same error level.
    """
    x = np.asarray(logits, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    rows = np.arange(len(ref))
    order = np.argsort(ref, axis=1)
    first, second = order[:, -1], order[:, -2]
    gap = ref[rows, first] - ref[rows, second]
    error = x - ref
    rms = math.sqrt(float(np.mean((error[rows, first] - error[rows, second]) ** 2)))
    if rms == 0.0:
        return 1.0
    keep = NormalDist(sigma=rms).cdf
    return float(np.mean([keep(m) for m in gap]))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def kl_mean(logits: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of ``KL(softmax(reference) || softmax(logits))`` in nats (float64)."""
    return float(np.mean(kl_rows(logits, reference)))


def kl_rows(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-row ``KL(softmax(reference) || softmax(logits))`` in nats, float64 ``(N,)``, >= 0."""
    log_q = _log_softmax(np.asarray(logits, dtype=np.float64))
    log_p = _log_softmax(np.asarray(reference, dtype=np.float64))
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=1)
    return np.maximum(kl, 0.0)


def latency_percentiles(latencies_ms: np.ndarray) -> dict[str, float]:
    """``{"p50": ..., "p90": ...}`` of per-image latencies in ms (linear interpolation)."""
    p50, p90 = np.percentile(np.asarray(latencies_ms, dtype=np.float64), [50, 90])
    return {"p50": float(p50), "p90": float(p90)}
