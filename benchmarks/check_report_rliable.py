"""The report's estimators against rliable's (Agarwal et al. 2021), where rliable imports.

    pip install rliable && python benchmarks/check_report_rliable.py

Not part of the test suite: rliable pulls in pandas, arch and statsmodels, and its bootstrap
(`rliable.library`) does not import with pandas 3 (arch 7.2). Passed 2026-12-07 in a venv with
rliable 1.2.0 and pandas 2.3.3: point estimates equal to 1e-12, interval bounds within 5% of the
interval width (the two bootstraps draw different random streams).
"""
from __future__ import annotations

import numpy as np

from angle_jax.report import stats


def main() -> None:
    from rliable import metrics

    rng = np.random.default_rng(0)
    for shape in [(3, 1), (4, 1), (5, 3), (10, 7), (17, 2)]:
        scores = rng.normal(size=shape)
        np.testing.assert_allclose(stats.iqm(scores), metrics.aggregate_iqm(scores), atol=1e-12)
        np.testing.assert_allclose(stats.mean(scores), metrics.aggregate_mean(scores), atol=1e-12)
        np.testing.assert_allclose(stats.median(scores), metrics.aggregate_median(scores), atol=1e-12)
        for gamma in (0.0, 0.5, 1.0):
            np.testing.assert_allclose(stats.optimality_gap(scores, gamma),
                                       metrics.aggregate_optimality_gap(scores, gamma), atol=1e-12)
    print("point estimates: equal to 1e-12")
    from rliable import library

    scores = np.random.default_rng(1).normal(size=(10, 3))
    reps = 20000
    _, theirs = library.get_interval_estimates(
        {"x": scores}, lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_optimality_gap(s, 0.5)]),
        reps=reps, random_state=np.random.RandomState(0))
    lo, hi = stats.bootstrap_interval(scores, lambda s: np.stack([stats.iqm(s), stats.optimality_gap(s, 0.5)], -1),
                                      reps=reps, rng=0)
    width = theirs["x"][1] - theirs["x"][0]
    np.testing.assert_allclose(lo, theirs["x"][0], atol=0.05 * width.max())
    np.testing.assert_allclose(hi, theirs["x"][1], atol=0.05 * width.max())
    print("bootstrap intervals: within 5% of the interval width")


if __name__ == "__main__":
    main()
