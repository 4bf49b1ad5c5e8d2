"""Run-comparison report: rliable's estimators against hand-computed cases, run loading,
figures and the report command."""
from __future__ import annotations

import numpy as np
import pytest

from angle_jax.report import stats


# ---- statistics ---------------------------------------------------------------------------------

def test_iqm_hand_cases():
    # 4 scores: drop int(0.25 * 4) = 1 at each end -> mean of 2 and 3
    assert stats.iqm(np.array([[4.0], [1.0], [3.0], [2.0]])) == pytest.approx(2.5)
    # 8 x 2 = 16 scores 0..15 (placed out of order): drop 4 at each end -> mean of 4..11 = 7.5
    scores = np.random.default_rng(0).permutation(np.arange(16.0)).reshape(8, 2)
    assert stats.iqm(scores) == pytest.approx(7.5)
    # an outlier in the top quarter does not move the IQM, it does move the mean
    scores[scores == 15.0] = 1e6
    assert stats.iqm(scores) == pytest.approx(7.5)
    assert stats.mean(scores) > 1000
    # 6 scores: int(1.5) = 1 dropped at each end -> mean of the middle 4
    assert stats.iqm(np.array([[10.0, 0.0, 1.0], [2.0, 3.0, 4.0]])) == pytest.approx(2.5)
    # fewer than 4 scores: nothing is dropped
    assert stats.iqm(np.array([[1.0], [5.0]])) == pytest.approx(3.0)


def test_mean_median_are_over_task_means():
    scores = np.array([[0.0, 10.0, 1.0], [2.0, 30.0, 3.0]])  # task means 1, 20, 2
    assert stats.mean(scores) == pytest.approx(23.0 / 3)
    assert stats.median(scores) == pytest.approx(2.0)


def test_optimality_gap_hand_case():
    scores = np.array([[0.5, 1.5], [1.0, 0.0]])
    # max(1 - s, 0): 0.5, 0, 0, 1 -> 1.5 / 4
    assert stats.optimality_gap(scores, 1.0) == pytest.approx(0.375)
    # threshold 2: 1.5, 0.5, 1, 2 -> 5 / 4
    assert stats.optimality_gap(scores, 2.0) == pytest.approx(1.25)


def test_normalize_and_its_checks():
    scores = np.array([[0.0, 100.0], [50.0, 300.0]])
    out = stats.normalize(scores, [0.0, 100.0], [100.0, 500.0])
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="low < high"):
        stats.normalize(scores, 1.0, 1.0)


def test_bad_matrices_are_refused():
    for bad in (np.zeros(3), np.zeros((0, 2)), np.array([[1.0, np.nan]])):
        with pytest.raises(ValueError):
            stats.iqm(bad)


def test_interval_of_a_constant_matrix_is_a_point():
    scores = np.full((5, 3), 2.5)
    out = stats.aggregate(scores, threshold=3.0, reps=500, rng=0)
    for name, e in out.items():
        assert e.low == e.value == e.high, name
    assert out["optimality_gap"].value == pytest.approx(0.5)


def test_bootstrap_resamples_only_within_tasks():
    # each task's runs are constant, tasks differ: resampling within tasks keeps every
    # per-task mean; resampling across tasks would mix 0 and 1 and move them
    scores = np.array([[0.0, 1.0]] * 6)
    low, high = stats.bootstrap_interval(scores, lambda s: s.mean(axis=-2), reps=1000, rng=0)
    np.testing.assert_array_equal(low, [0.0, 1.0])
    np.testing.assert_array_equal(high, [0.0, 1.0])
    resamples = stats.stratified_resample(np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]]), 200, rng=1)
    assert set(np.unique(resamples[..., 0])) <= {0.0, 1.0, 2.0}
    assert set(np.unique(resamples[..., 1])) <= {10.0, 11.0, 12.0}
    assert len(np.unique(resamples[..., 0])) == 3  # and it does resample


def test_bootstrap_is_seedable_and_covers_the_estimate():
    scores = np.random.default_rng(3).normal(size=(10, 4))
    a = stats.aggregate(scores, threshold=0.5, reps=400, rng=7)
    b = stats.aggregate(scores, threshold=0.5, reps=400, rng=7)
    c = stats.aggregate(scores, threshold=0.5, reps=400, rng=8)
    assert a == b and a != c
    for e in a.values():
        assert e.low <= e.value <= e.high and e.low < e.high
    # chunking the resamples does not change the draws' distribution much, nor the API
    lo, hi = stats.bootstrap_interval(scores, stats.iqm, reps=400, rng=7, chunk_elements=40)
    assert lo < stats.iqm(scores) < hi


def test_bootstrap_percentile_interval_hand_case():
    # two runs, one task: a resample's mean is 0 (p=1/4), 0.5 (1/2) or 1 (1/4)
    lo, hi = stats.bootstrap_interval(np.array([[0.0], [1.0]]), stats.mean, reps=4000, rng=0)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = stats.bootstrap_interval(np.array([[0.0], [1.0]]), stats.mean, reps=4000, rng=0, confidence=0.4)
    assert (lo, hi) == (0.5, 0.5)


def test_performance_profile():
    scores = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(stats.performance_profile(scores, [-1.0, 0.0, 1.5, 3.0]), [1.0, 0.75, 0.5, 0.0])
    profile, low, high = stats.performance_profile_bands(scores, [-1.0, 0.0, 1.5, 3.0], reps=300, rng=0)
    assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0


# ---- rliable, when installed ---------------------------------------------------------------------

def _rliable(module: str):
    try:
        return __import__(f"rliable.{module}", fromlist=[module])
    except Exception as e:  # noqa: BLE001 - any import failure means: cannot compare
        pytest.skip(f"rliable.{module} is not importable ({type(e).__name__}: {str(e).splitlines()[0]})")


def test_matches_rliable_point_estimates():
    metrics = _rliable("metrics")
    rng = np.random.default_rng(0)
    for shape in [(3, 1), (4, 1), (5, 3), (10, 7), (17, 2)]:
        scores = rng.normal(size=shape)
        assert stats.iqm(scores) == pytest.approx(metrics.aggregate_iqm(scores), abs=1e-12)
        assert stats.mean(scores) == pytest.approx(metrics.aggregate_mean(scores), abs=1e-12)
        assert stats.median(scores) == pytest.approx(metrics.aggregate_median(scores), abs=1e-12)
        for gamma in (0.0, 0.5, 1.0):
            assert stats.optimality_gap(scores, gamma) == pytest.approx(
                metrics.aggregate_optimality_gap(scores, gamma), abs=1e-12)


def test_matches_rliable_bootstrap_intervals():
    library = _rliable("library")
    metrics = _rliable("metrics")
    scores = np.random.default_rng(1).normal(size=(10, 3))
    reps = 20000
    _, theirs = library.get_interval_estimates(
        {"x": scores}, lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_optimality_gap(s, 0.5)]),
        reps=reps, random_state=np.random.RandomState(0))
    lo, hi = stats.bootstrap_interval(scores, lambda s: np.stack([stats.iqm(s), stats.optimality_gap(s, 0.5)], -1),
                                      reps=reps, rng=0)
    # different random streams: agreement up to the bootstrap's own Monte-Carlo error
    width = theirs["x"][1] - theirs["x"][0]
    np.testing.assert_allclose(lo, theirs["x"][0], atol=0.05 * width.max())
    np.testing.assert_allclose(hi, theirs["x"][1], atol=0.05 * width.max())
