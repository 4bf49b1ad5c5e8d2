"""What a compiled chunk reports: statistics of the episodes that ended in it, and the
placeholder metrics of steps where a learner did not run (NaN, skipped by `nanmean`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class EpisodeAccumulator:
    """Running sums over the episodes that end within one chunk."""

    count: jax.Array
    return_sum: jax.Array
    return_min: jax.Array
    return_max: jax.Array
    length_sum: jax.Array

    @classmethod
    def zeros(cls):
        f = jnp.zeros((), jnp.float32)
        return cls(f, f, jnp.full((), jnp.inf), jnp.full((), -jnp.inf), f)

    def add(self, info: dict) -> "EpisodeAccumulator":
        done = info["episode_done"]
        ret = info["episode_return"]
        return EpisodeAccumulator(
            self.count + jnp.sum(done),
            self.return_sum + jnp.sum(jnp.where(done, ret, 0.0)),
            jnp.minimum(self.return_min, jnp.min(jnp.where(done, ret, jnp.inf))),
            jnp.maximum(self.return_max, jnp.max(jnp.where(done, ret, -jnp.inf))),
            self.length_sum + jnp.sum(jnp.where(done, info["episode_length"], 0)),
        )

    @staticmethod
    def per_env(num_envs: int) -> jax.Array:
        """Running statistics kept per env, `[5, num_envs]` with rows in field order: updated by
        `add_per_env` in one fused kernel per step (instead of `add`'s five reductions), folded
        into an accumulator by `merge` when a rollout ends."""
        zero = jnp.zeros((num_envs,), jnp.float32)
        return jnp.stack([zero, zero, zero + jnp.inf, zero - jnp.inf, zero])

    @staticmethod
    def add_per_env(stats: jax.Array, info: dict) -> jax.Array:
        done = info["episode_done"]
        ret = info["episode_return"].astype(jnp.float32)
        return jnp.stack([
            stats[0] + done.astype(jnp.float32),
            stats[1] + jnp.where(done, ret, 0.0),
            jnp.minimum(stats[2], jnp.where(done, ret, jnp.inf)),
            jnp.maximum(stats[3], jnp.where(done, ret, -jnp.inf)),
            stats[4] + jnp.where(done, info["episode_length"], 0).astype(jnp.float32),
        ])

    def merge(self, stats: jax.Array) -> "EpisodeAccumulator":
        """Add the episodes of per-env statistics (`per_env`, `add_per_env`)."""
        return EpisodeAccumulator(
            self.count + jnp.sum(stats[0]),
            self.return_sum + jnp.sum(stats[1]),
            jnp.minimum(self.return_min, jnp.min(stats[2])),
            jnp.maximum(self.return_max, jnp.max(stats[3])),
            self.length_sum + jnp.sum(stats[4]),
        )

    def summary(self) -> dict:
        n = jnp.maximum(self.count, 1.0)
        nan = jnp.full((), jnp.nan)
        has = self.count > 0
        return {
            "episodes": self.count,
            "episode_return_mean": jnp.where(has, self.return_sum / n, nan),
            "episode_return_min": jnp.where(has, self.return_min, nan),
            "episode_return_max": jnp.where(has, self.return_max, nan),
            "episode_length_mean": jnp.where(has, self.length_sum / n, nan),
        }


def nan_like(shapes: Any) -> Any:
    """NaNs shaped like `shapes` (metrics of a step that did not run; `nanmean` skips them)."""
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)
