"""Never Give Up's episodic novelty (Badia et al. 2020b, Algorithm 1 of the appendix).

Each of `N` envs has an episodic memory of up to `M` embeddings of the states seen in its current
episode. The episodic reward of an embedding `f(x_t)` comes from its `k` nearest stored
neighbours (`knn.knn`, squared Euclidean distances `d²`):

    d²_m ← running mean of every neighbour distance seen so far (updated with this step's first)
    d_n = max(d² / d²_m − ξ, 0),   K = ε / (d_n + ε),   s = √(Σ K) + c,   r = 1/s if s ≤ s_max else 0

Conventions (the paper leaves them open):

- The reward is computed against the memory *before* the current embedding is added (the paper's
  `M` holds `f(x_0) … f(x_{t−1})`). Per step: `r, mem = episodic_reward(mem, e)`, then
  `mem = add(mem, e)`, then at an episode end `mem = reset(mem, done)` so that the next
  episode's first embedding meets an empty memory.
- Fewer than `k` entries stored: only the stored ones count; a missing neighbour is one
  infinitely far away (K = 0). An empty memory therefore gives `s = c` and `r = 1/c` (1000 for
  c = 0.001), the largest reward the formula can give and its limit as every neighbour moves
  away: the first state of an episode is as novel as a state can be. Callers that want another
  value there can test `memory.count == 0` before adding.
- `d²_m` is the cumulative mean of all valid neighbour distances an env has produced, kept
  across episodes (`reset` does not clear it, like the paper's actor whose running average
  outlives its episodes). Where it is 0 (only zero distances seen), `d_n` is 0. Its count is a
  float32: it never overflows, and past 2²⁴ distances the weight of a new batch only rounds.
- Each kernel value is at most 1, so `s ≤ √k + c`: with the paper's k = 10 and s_max = 8 the
  `s_max` cut never applies (it needs k ≥ 64 or a smaller s_max).
- `add` is a ring buffer per env: entry `count mod M` is written, so once an episode is longer
  than `M` steps the oldest embeddings of it are overwritten (NGU sizes `M` above the episode
  length, so this only bounds the memory). `count` is the number added since the last reset.

The lifelong novelty multiplier `α = 1 + (err − μ)/σ` (RND's error against its running
statistics) and the combined reward `r_episodic · clip(α, 1, L)` are plain formulas here.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.running_stats import RunningStats
from angle_jax.episodic.knn import knn


@struct.dataclass
class EpisodicMemory:
    embeddings: jax.Array   # [N, M, D] float32
    count: jax.Array        # [N] int32: embeddings added since the env's last reset (stored: min(count, M))
    dist_mean: jax.Array    # [N] float32: running mean d²_m of the neighbours' squared distances
    dist_count: jax.Array   # [N] float32: distances folded into dist_mean


def check(k: int, capacity: int, dim: int, xi: float = 0.008, eps: float = 1e-4, c: float = 0.001,
          s_max: float = 8.0) -> None:
    """Raise ValueError (one line) for settings the episodic reward cannot run with."""
    if capacity < 1:
        raise ValueError(f"episodic memory capacity must be at least 1, got {capacity}")
    if dim < 1:
        raise ValueError(f"episodic embedding size must be at least 1, got {dim}")
    if not 1 <= k <= capacity:
        raise ValueError(f"episodic k must be in [1, capacity={capacity}], got {k}")
    if not 0.0 <= xi < math.inf:
        raise ValueError(f"episodic cluster distance xi must be >= 0 and finite, got {xi}")
    if not 0.0 < eps < math.inf:
        raise ValueError(f"episodic kernel epsilon must be positive and finite, got {eps}")
    if not 0.0 < c < math.inf:
        raise ValueError(f"episodic pseudo-count constant c must be positive and finite, got {c}")
    if not s_max > 0.0:
        raise ValueError(f"episodic s_max must be positive, got {s_max}")


def init(num_envs: int, capacity: int, dim: int) -> EpisodicMemory:
    """Empty memories of `capacity` embeddings of size `dim` for `num_envs` envs."""
    if num_envs < 1 or capacity < 1 or dim < 1:
        raise ValueError(f"episodic memory sizes must be at least 1, got num_envs={num_envs}, "
                         f"capacity={capacity}, dim={dim}")
    return EpisodicMemory(
        embeddings=jnp.zeros((num_envs, capacity, dim), jnp.float32),
        count=jnp.zeros((num_envs,), jnp.int32),
        dist_mean=jnp.zeros((num_envs,), jnp.float32),
        dist_count=jnp.zeros((num_envs,), jnp.float32),
    )


def _check_emb(memory: EpisodicMemory, emb: jax.Array) -> None:
    chex.assert_rank(emb, 2)
    chex.assert_shape(emb, (memory.embeddings.shape[0], memory.embeddings.shape[2]))


def episodic_reward(memory: EpisodicMemory, emb: jax.Array, k: int = 10, xi: float | jax.Array = 0.008,
                    eps: float | jax.Array = 1e-4, c: float | jax.Array = 0.001,
                    s_max: float | jax.Array = 8.0) -> tuple[jax.Array, EpisodicMemory]:
    """`(r [N] float32, memory)`: each env's episodic reward for `emb [N, D]` against its memory as it
    is (the embedding is not added), and the memory with the running mean `d²_m` updated."""
    _check_emb(memory, emb)
    capacity = memory.embeddings.shape[1]
    if not 1 <= k <= capacity:
        raise ValueError(f"episodic k must be in [1, capacity={capacity}], got {k}")
    emb = emb.astype(jnp.float32)
    size = jnp.minimum(memory.count, capacity)
    _, idx, valid = jax.vmap(lambda e, m, s: knn(e[None], m, k, size=s))(emb, memory.embeddings, size)
    idx, valid = idx[:, 0], valid[:, 0]                                            # [N, k]
    near = jnp.take_along_axis(memory.embeddings, idx[..., None], axis=1)          # [N, k, D]
    d2 = jnp.where(valid, jnp.sum(jnp.square(near - emb[:, None, :]), axis=-1), 0.0)  # exact form

    n_new = jnp.sum(valid, axis=1).astype(jnp.float32)
    total = memory.dist_count + n_new
    batch_mean = jnp.sum(d2, axis=1) / jnp.maximum(n_new, 1.0)
    mean = jnp.where(n_new > 0, memory.dist_mean + (batch_mean - memory.dist_mean) * n_new / jnp.maximum(total, 1.0),
                     memory.dist_mean)

    d_n = jnp.where(mean[:, None] > 0, d2 / jnp.where(mean > 0, mean, 1.0)[:, None], 0.0)
    d_n = jnp.maximum(d_n - xi, 0.0)
    kern = jnp.where(valid, eps / (d_n + eps), 0.0)
    s = jnp.sqrt(jnp.sum(kern, axis=1)) + c
    reward = jnp.where(s <= s_max, 1.0 / s, 0.0).astype(jnp.float32)
    return reward, memory.replace(dist_mean=mean, dist_count=total)


def add(memory: EpisodicMemory, emb: jax.Array) -> EpisodicMemory:
    """Store `emb [N, D]`, one per env, at slot `count mod M` (a ring buffer per env); `count` + 1."""
    _check_emb(memory, emb)
    capacity = memory.embeddings.shape[1]
    slot = memory.count % capacity
    embeddings = memory.embeddings.at[jnp.arange(emb.shape[0]), slot].set(emb.astype(memory.embeddings.dtype))
    return memory.replace(embeddings=embeddings, count=memory.count + 1)


def reset(memory: EpisodicMemory, done: jax.Array) -> EpisodicMemory:
    """Empty the memories of the envs where `done [N]` (count 0; arrays reused, `d²_m` kept)."""
    chex.assert_shape(done, memory.count.shape)
    return memory.replace(count=jnp.where(done, 0, memory.count))


def lifelong_multiplier(err: jax.Array, stats: RunningStats) -> jax.Array:
    """NGU's lifelong novelty `α = 1 + (err − μ)/σ` from the running statistics of the error."""
    return 1.0 + (err - stats.mean) / stats.std


def intrinsic_reward(r_episodic: jax.Array, alpha: jax.Array, L: float | jax.Array = 5.0) -> jax.Array:  # noqa: N803
    """NGU's intrinsic reward `r_episodic · min(max(α, 1), L)` (the paper's L = 5 caps the multiplier)."""
    return r_episodic * jnp.clip(alpha, 1.0, L)
