"""Running mean and variance over a stream of batches, and normalisation by them.

One implementation for every consumer: RND's observation and intrinsic-reward scales, the
on-policy agents' observation and return normalisation. The statistics are a pytree kept in
the algorithm's state, so each vmapped run has its own and evaluation uses the training ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningStats:
    """Running mean / variance over a stream of batches (parallel Welford update)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...] = ()) -> "RunningStats":
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.full((), 1e-4, jnp.float32))

    def update(self, batch: jax.Array, axis_name: str | None = None) -> "RunningStats":
        """Fold in `batch` whose leading axis holds samples; with `axis_name` (data-parallel
        devices holding equal shares), the moments of the batch over all devices."""
        batch = batch.astype(jnp.float32)
        b_mean = jnp.mean(batch, axis=0)
        b_sq = jnp.mean(jnp.square(batch), axis=0)
        b_count = jnp.asarray(batch.shape[0], jnp.float32)
        if axis_name is not None:
            b_mean, b_sq = jax.lax.pmean((b_mean, b_sq), axis_name)
            b_count = jax.lax.psum(b_count, axis_name)
        b_var = jnp.maximum(b_sq - jnp.square(b_mean), 0.0) if axis_name is not None else jnp.var(batch, axis=0)
        total = self.count + b_count
        delta = b_mean - self.mean
        mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + jnp.square(delta) * self.count * b_count / total
        return RunningStats(mean, m2 / total, total)

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(self.var + 1e-8)


def normalize_obs(obs: jax.Array, stats: RunningStats, clip: float) -> jax.Array:
    """(obs - mean) / std, clipped to [-clip, clip]."""
    return jnp.clip((obs.astype(jnp.float32) - stats.mean) / stats.std, -clip, clip)


def scale_by_std(x: jax.Array, stats: RunningStats, clip: float) -> jax.Array:
    """x / std (no centring: a reward keeps its sign), clipped to [-clip, clip]."""
    return jnp.clip(x.astype(jnp.float32) / stats.std, -clip, clip)


def discounted_filter(rewards: jax.Array, carry: jax.Array, gamma: jax.Array,
                      done: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Running discounted sums `e_t = γ e_{t-1} + r_t` over time-major `rewards [T, N]`.

    Returns `(carry_T, e [T, N])`. With `done [T, N]`, a sum restarts after each step where its
    episode ended (`carry_T` is then 0 for an env whose last step ended). The values `e` feed the
    running std that scales rewards (RND's intrinsic reward, the on-policy reward normalisation).
    """
    if done is None:
        done = jnp.zeros(rewards.shape, jnp.bool_)

    def step(e, inputs):
        r, d = inputs
        e = gamma * e + r
        return jnp.where(d, 0.0, e), e

    return jax.lax.scan(step, carry, (rewards, done))
