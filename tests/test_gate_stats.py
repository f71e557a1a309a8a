"""Gates that do not flip on noise: intervals and verdicts on planted distributions (pure functions,
fast), the paired timing loop on fake sessions with a known speed-up, and gate records built from them."""
from __future__ import annotations

import time

import numpy as np
import pytest

from compress.gates import threshold_gates
from compress.recipe import Gates
from compress.runtimes import Session
from compress.stats import (
    converged,
    mcnemar_p,
    mean_interval,
    needed_samples,
    proportion_interval,
    speedup_interval,
    verdict,
)
from compress.validation import paired_latency


def _rounds(true_speedup: float, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-round medians: a baseline at 10 ms drifting with machine load (shared by both in a round),
    the candidate `true_speedup` times faster, each with its own lognormal noise."""
    rng = np.random.default_rng(seed)
    load = np.exp(rng.normal(0, 0.3, n))          # the machine's load hits both sides of a round alike
    base = 10.0 * load * np.exp(rng.normal(0, noise, n))
    cand = 10.0 / true_speedup * load * np.exp(rng.normal(0, noise, n))
    return base, cand


@pytest.mark.parametrize("seed", range(5))
def test_a_true_1_25x_with_noise_is_covered_and_passes_a_1_1_gate(seed):
    base, cand = _rounds(1.25, 40, 0.05, seed)
    point, low, high = speedup_interval(base, cand)
    assert low < 1.25 < high and abs(point - 1.25) < 0.05
    assert high - low < 0.1
    assert verdict(low, high, 1.1, at_least=True) == "pass"
    assert verdict(low, high, 1.4, at_least=True) == "fail"
    assert verdict(low, high, 1.25, at_least=True) == "inconclusive"


@pytest.mark.parametrize("seed", range(5))
def test_a_true_1_0x_contains_1_and_fails_a_1_2_gate(seed):
    base, cand = _rounds(1.0, 30, 0.05, seed)
    point, low, high = speedup_interval(base, cand)
    assert low < 1.0 < high and abs(point - 1.0) < 0.05
    assert verdict(low, high, 1.2, at_least=True) == "fail"


def test_the_interval_is_honest_across_many_planted_runs():
    """95% intervals of a true 1.25x contain it about 95% of the time (not 60%, not 100%)."""
    covered = 0
    for seed in range(200):
        _, low, high = speedup_interval(*_rounds(1.25, 8, 0.08, seed))
        covered += low < 1.25 < high
    assert 0.88 <= covered / 200 <= 0.99


def test_few_rounds_give_no_interval_and_an_inconclusive_verdict():
    point, low, high = speedup_interval([10.0], [8.0])
    assert point == pytest.approx(1.25) and np.isnan(low) and np.isnan(high)
    assert verdict(low, high, 1.2, at_least=True) == "inconclusive"
    assert not converged(low, high, point, 0.5, [1.2])


def test_convergence_needs_a_narrow_interval_or_every_threshold_outside_it():
    assert converged(1.20, 1.25, 1.22, 0.05, [])
    assert not converged(1.0, 1.5, 1.2, 0.05, [])
    assert converged(1.3, 1.8, 1.5, 0.05, [1.2])
    assert not converged(1.3, 1.8, 1.5, 0.05, [1.2, 1.6])


def test_accuracy_delta_interval_from_paired_samples():
    rng = np.random.default_rng(0)
    ref = rng.random(2000) < 0.88
    flip = np.zeros(2000, bool)                           # 20 samples lost, 20 gained: no real change
    flip[np.flatnonzero(ref)[:20]] = flip[np.flatnonzero(~ref)[:20]] = True
    cand = np.where(flip, ~ref, ref)
    diff = 100.0 * (cand.astype(float) - ref)
    point, low, high = mean_interval(diff)
    assert point == 0 and low < 0 < high
    assert high - low < 1.5
    # a true 3-point loss on 2000 samples is resolved
    lose = (rng.random(2000) < 0.03) & ref
    point, low, high = mean_interval(100.0 * (np.where(lose, False, ref).astype(float) - ref))
    assert high < 0 and point == pytest.approx(-100 * lose.mean())
    # identical predictions: a zero-width interval
    assert mean_interval(np.zeros(100)) == (0.0, 0.0, 0.0)


def test_agreement_interval_is_exact_binomial_and_mcnemar_sees_one_sided_changes():
    point, low, high = proportion_interval(1990, 2000)
    assert point == pytest.approx(99.5) and 99.0 < low < 99.5 < high < 99.8
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(20, 0) < 1e-5 and mcnemar_p(10, 10) == pytest.approx(1.0)


def test_a_gate_the_eval_set_cannot_resolve_says_how_many_samples_it_needs():
    # 200 samples, a drop of 0.3 points +- 1 point around a 0.5-point gate: inconclusive
    assert verdict(-0.7, 1.3, 0.5, at_least=False) == "inconclusive"
    need = needed_samples(200, -0.7, 1.3, 0.3, 0.5)
    assert need == 200 * 25   # the interval must shrink five-fold: 25x the samples
    assert needed_samples(200, -0.7, 1.3, 0.5, 0.5) is None


def _record(speedup, interval, drop_interval, samples=200, size=0.5):
    return {"primary": {"name": "top1", "value": 88.0 - 0.3, "higher_is_better": True, "samples": samples,
                        "interval": [-drop_interval[1], -drop_interval[0]]},
            "speedup": {"vs_fp32_same_runtime": speedup, "interval": interval, "baseline": "fp32-openvino"},
            "artifact": {"size_mb": size},
            "timing": {"rounds": 30, "runs": 300, "load": {"busy": True, "other_cores": 1.2}}}


REFERENCE = {"primary": {"name": "top1", "value": 88.0}}


def test_policy_point_judges_an_inconclusive_gate_by_its_estimate_and_conservative_fails_it():
    record = _record(1.22, [1.15, 1.30], [-0.7, 1.3])
    point = threshold_gates(Gates(max_accuracy_drop=0.5, min_speedup=1.2), record, REFERENCE)
    assert [g["verdict"] for g in point] == ["inconclusive", "inconclusive"]
    assert [g["passed"] for g in point] == [True, True]
    assert point[0]["needed_samples"] == 5000 and "about 5000 samples" in point[0]["detail"]
    assert point[0]["interval"] == [-0.7, 1.3]
    assert "machine busy" in point[1]["detail"]
    strict = threshold_gates(Gates(max_accuracy_drop=0.5, min_speedup=1.2, policy="conservative"), record, REFERENCE)
    assert [g["passed"] for g in strict] == [False, False]
    clear = threshold_gates(Gates(max_accuracy_drop=2.0, min_speedup=1.1, max_size_mb=1, policy="conservative"),
                            record, REFERENCE)
    assert [(g["verdict"], g["passed"]) for g in clear] == [("pass", True)] * 3


def _fake(ms: float, load: list[float]):
    """Opens a session that sleeps `ms` per call, slowed by a shared load factor."""
    def infer(_feeds):
        time.sleep(ms / 1000.0 * load[0])
        return []
    return lambda: Session("fake", infer, settings={"threads": 1})


def test_paired_timing_stops_once_the_threshold_is_excluded_and_covers_the_true_speedup():
    load = [1.0]
    feeds = {"x": np.zeros((1, 1), np.float32)}
    ours, theirs, timing = paired_latency(_fake(2.0, load), _fake(4.0, load), feeds, warmup=1, runs=27,
                                          max_seconds=30, rel_precision=0.001, thresholds=(1.2,))
    low, high = timing["interval"]
    assert timing["stopped"] == "threshold excluded" and timing["blocks"] >= 3, timing
    assert 1.2 < low <= timing["speedup"] <= high   # (coverage of the true 2x: see the planted tests)
    assert ours["runs"] == theirs["runs"] == timing["runs"]


def test_paired_timing_of_one_model_against_itself_is_near_1_and_stops_at_the_budget():
    load = [1.0]
    feeds = {"x": np.zeros((1, 1), np.float32)}
    _, _, timing = paired_latency(_fake(2.0, load), _fake(2.0, load), feeds, warmup=1, runs=27, max_seconds=1,
                                  rel_precision=1e-6)
    low, high = timing["interval"]   # (coverage is checked on planted data above: one draw misses 1 in 20)
    assert 0.5 < timing["speedup"] < 2 and low <= timing["speedup"] <= high and timing["stopped"] == "budget"
    assert set(timing["load"]) >= {"other_cores", "busy", "cores"}


def test_an_ungated_artifact_is_timed_in_the_first_blocks_only():
    load = [1.0]
    feeds = {"x": np.zeros((1, 1), np.float32)}
    _, _, timing = paired_latency(_fake(0.5, load), _fake(0.5, load), feeds, warmup=1, runs=9, max_seconds=20,
                                  rel_precision=1e-6, adaptive=False)
    assert (timing["blocks"], timing["rounds"]) == (3, 12) and timing["stopped"].startswith("first blocks"), timing
