"""Aggregate metrics of a scores matrix with stratified bootstrap intervals (NumPy only).

The estimators of rliable (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice"): a scores matrix is `[runs, tasks]`; mean and median are over the per-task mean
scores, the interquartile mean (IQM) is the 25%-trimmed mean of all run x task scores, the
optimality gap is how far scores fall short of a threshold. Intervals are percentile intervals
of a stratified bootstrap: runs are resampled with replacement within each task, never across.

Every statistic works on the last two axes, so a stack of bootstrap resamples
`[reps, runs, tasks]` is evaluated in one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval [low, high]."""

    value: float
    low: float
    high: float


def _matrix(scores) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.ndim < 2 or scores.shape[-1] == 0 or scores.shape[-2] == 0:
        raise ValueError(f"scores must be a non-empty [runs, tasks] matrix, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores


def mean(scores) -> np.ndarray:
    """Mean over tasks of the per-task mean score."""
    return _matrix(scores).mean(axis=-2).mean(axis=-1)


def median(scores) -> np.ndarray:
    """Median over tasks of the per-task mean score (with one task: that task's mean)."""
    return np.median(_matrix(scores).mean(axis=-2), axis=-1)


def trim_count(n: int, cut: float = 0.25) -> int:
    """How many scores a `cut` trimmed mean drops at each end of `n` (rounded down)."""
    return int(cut * n)


def iqm(scores) -> np.ndarray:
    """Interquartile mean: the mean of all run x task scores after dropping the lowest and
    highest `int(0.25 * n)` of the n scores (a 25% trimmed mean)."""
    scores = _matrix(scores)
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    k = trim_count(flat.shape[-1])
    return flat[..., k:flat.shape[-1] - k].mean(axis=-1)


def optimality_gap(scores, threshold: float = 1.0) -> np.ndarray:
    """Mean over all run x task scores of max(threshold - score, 0): how far runs fall short
    of `threshold` (scores above it count as reaching it, not as making up for others)."""
    return np.maximum(threshold - _matrix(scores), 0.0).mean(axis=(-2, -1))


def normalize(scores, low, high) -> np.ndarray:
    """(score - low) / (high - low) per task, `low`/`high` the tasks' reference ranges
    (scalars or one value per task, e.g. a random and an expert policy's returns)."""
    scores = _matrix(scores)
    low = np.broadcast_to(np.asarray(low, np.float64), scores.shape[-1:])
    high = np.broadcast_to(np.asarray(high, np.float64), scores.shape[-1:])
    if np.any(~np.isfinite(low)) or np.any(~np.isfinite(high)) or np.any(high <= low):
        raise ValueError(f"reference ranges need finite low < high, got low={low.tolist()} high={high.tolist()}")
    return (scores - low) / (high - low)


def performance_profile(scores, taus) -> np.ndarray:
    """Fraction of all run x task scores above each threshold in `taus` (the run-score
    distribution): shape `[..., len(taus)]`."""
    scores = _matrix(scores)
    taus = np.asarray(taus, np.float64).reshape(-1)
    flat = scores.reshape(*scores.shape[:-2], -1)
    return (flat[..., None, :] > taus[:, None]).mean(axis=-1)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a seed (or the Generator itself), for reproducible intervals."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def stratified_resample(scores, reps: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """`reps` bootstrap resamples `[reps, runs, tasks]`: each task's column is drawn with
    replacement from that task's own runs."""
    scores = _matrix(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [runs, tasks] matrix, got shape {scores.shape}")
    runs, tasks = scores.shape
    idx = as_generator(rng).integers(0, runs, size=(reps, runs, tasks))
    return scores[idx, np.arange(tasks)]


def bootstrap_interval(scores, statistic: Statistic, reps: int = 2000,
                       rng: np.random.Generator | int | None = None, confidence: float = 0.95,
                       chunk_elements: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval (low, high) of `statistic` under the stratified bootstrap.

    `statistic` maps `[reps, runs, tasks]` to `[reps, ...]`; resamples are drawn in chunks of
    about `chunk_elements` scores so many reps fit in memory."""
    scores = _matrix(scores)
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = as_generator(rng)
    per_chunk = max(1, chunk_elements // scores.size)
    values = []
    for start in range(0, reps, per_chunk):
        values.append(np.asarray(statistic(stratified_resample(scores, min(per_chunk, reps - start), rng))))
    values = np.concatenate(values, axis=0)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [alpha, 100.0 - alpha], axis=0)
    return low, high


METRICS = ("mean", "median", "iqm", "optimality_gap")


def aggregate(scores, threshold: float | None = None, reps: int = 2000,
              rng: np.random.Generator | int | None = None, confidence: float = 0.95) -> dict[str, Estimate]:
    """Mean, median, IQM and (when `threshold` is given) optimality gap, each with its
    stratified bootstrap interval. One rng stream, drawn in METRICS order."""
    scores = _matrix(scores)
    rng = as_generator(rng)
    stats: dict[str, Statistic] = {"mean": mean, "median": median, "iqm": iqm}
    if threshold is not None:
        stats["optimality_gap"] = lambda s: optimality_gap(s, threshold)
    out = {}
    for name, fn in stats.items():
        low, high = bootstrap_interval(scores, fn, reps, rng, confidence)
        out[name] = Estimate(float(fn(scores)), float(low), float(high))
    return out


def performance_profile_bands(scores, taus, reps: int = 2000, rng: np.random.Generator | int | None = None,
                              confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The performance profile at `taus` and its bootstrap band: (profile, low, high)."""
    taus = np.asarray(taus, np.float64).reshape(-1)
    # the statistic holds a [chunk, taus, scores] comparison: size the chunks for it
    low, high = bootstrap_interval(scores, lambda s: performance_profile(s, taus), reps, rng, confidence,
                                   chunk_elements=max(1, 4_000_000 // max(1, len(taus))))
    return performance_profile(scores, taus), low, high
