"""95% confidence intervals for what gates judge, and the verdicts drawn from them (scipy.stats).

Speed-up: a paired test over timing rounds (each round times the artifact and its FP32 baseline right
after each other; the log of their median ratio per round is one paired observation). Accuracy: a
paired bootstrap over eval samples for task metrics (top-1 with labels, cosine), the exact binomial
(Clopper-Pearson) interval for top-1 agreement with FP32, and the exact McNemar test for top-1 changes.
"""
from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
VERDICTS = ("pass", "fail", "inconclusive")


def speedup_interval(baseline_ms: list[float], candidate_ms: list[float]) -> tuple[float, float, float]:
    """Speed-up (baseline / candidate) from paired per-round medians: the geometric mean of the
    per-round ratios and its t-interval (a one-sample t-test on the log ratios). NaN bounds with
    fewer than two rounds."""
    from scipy import stats

    logs = np.log(np.asarray(baseline_ms, dtype=float)) - np.log(np.asarray(candidate_ms, dtype=float))
    point = float(np.exp(logs.mean()))
    if len(logs) < 2:
        return point, math.nan, math.nan
    if np.ptp(logs) == 0:
        return point, point, point
    ci = stats.ttest_1samp(logs, 0.0).confidence_interval(CONFIDENCE)
    return point, float(np.exp(ci.low)), float(np.exp(ci.high))


def mean_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-sample values (e.g. the paired difference candidate - reference) and its
    percentile-bootstrap interval over samples."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    point = float(values.mean())
    if len(values) < 2 or np.ptp(values) == 0:
        return point, point, point
    res = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def proportion_interval(successes: int, n: int) -> tuple[float, float, float]:
    """A proportion (in percent) and its exact Clopper-Pearson interval."""
    from scipy import stats

    ci = stats.binomtest(int(successes), int(n)).proportion_ci(CONFIDENCE, method="exact")
    return 100.0 * successes / n, 100.0 * ci.low, 100.0 * ci.high


def mcnemar_p(lost: int, gained: int) -> float:
    """Exact McNemar test: p-value that samples the candidate got wrong and right (vs the reference)
    are equally likely among the discordant ones."""
    from scipy import stats

    if lost + gained == 0:
        return 1.0
    return float(stats.binomtest(int(gained), int(lost + gained), 0.5).pvalue)


def verdict(low: float, high: float, threshold: float, *, at_least: bool) -> str:
    """`pass` when the whole interval is on the right side of the threshold, `fail` when it is all on
    the wrong side, `inconclusive` when it straddles it (or is unknown)."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if at_least:
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


def needed_samples(n: int, low: float, high: float, point: float, threshold: float) -> int | None:
    """Eval samples an interval this wide on `n` samples would need to clear the threshold at the same
    point estimate (width shrinks as 1/sqrt(n)); None when the point sits on the threshold."""
    margin = abs(point - threshold)
    half = (high - low) / 2
    if margin == 0 or math.isnan(half):
        return None
    return max(n + 1, math.ceil(n * (half / margin) ** 2))


def converged(low: float, high: float, point: float, rel_precision: float, thresholds: list[float]) -> bool:
    """Stop timing: the interval is narrower than `rel_precision` of the estimate, or excludes every threshold."""
    if math.isnan(low) or math.isnan(high):
        return False
    if (high - low) / point <= rel_precision:
        return True
    return bool(thresholds) and all(t < low or t > high for t in thresholds)
