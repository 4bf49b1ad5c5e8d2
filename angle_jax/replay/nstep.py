"""n-step transitions read from the time-major store.

Row `t` of the store holds one vectorised env step, so the n steps that follow
a sampled transition of env `e` are rows `t, t+1, ..., t+n-1` (mod capacity) of
that same env. A window is cut

- at the write position: only rows already written after row `t` are read
  (the newest transitions get shorter windows, never stale data from across
  the circular boundary or unwritten rows);
- at the first episode end: a terminated step stops bootstrapping; a truncated
  step keeps it, from the true final observation stored in that transition's
  `next_obs`.

The buffer returns per-step rewards `[B, n]` and their mask instead of a
discounted sum, because γ lives in the agent's traced hyperparameters (so it can
be swept with `vmap` or meta-learned) and the buffer must not bake it in;
`angle_jax.core.returns.nstep_return` turns them into the return and bootstrap discount for
any γ.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from angle_jax.core.types import NStepBatch, Transition
from angle_jax.replay.buffer import BufferState, ReplayBuffer, uniform_replay


def window_mask(age: jax.Array, done: jax.Array) -> jax.Array:
    """Which of the n window steps are used.

    age: `[B]` how many rows were written after the sampled one (0 = newest);
    done: `[B, n]` terminated-or-truncated of each window step. Step k is used
    when k <= age and no earlier step of the window ended the episode.
    """
    chex.assert_rank([age, done], [1, 2])
    n = done.shape[1]
    written = jnp.arange(n)[None, :] <= age[:, None]
    ended_before = jnp.cumsum(done.astype(jnp.int32), axis=1) - done.astype(jnp.int32)
    return jnp.logical_and(written, ended_before == 0)


def gather_nstep(data: Transition, pos: jax.Array, rows: jax.Array, envs: jax.Array,
                 n_step: int, weights: jax.Array | None = None) -> NStepBatch:
    """Read n-step windows starting at `(rows, envs)` from a `[capacity, num_envs, ...]` store.

    `pos` is the next row to write; every sampled row must already be written.
    """
    chex.assert_rank([rows, envs], 1)
    capacity, num_envs = data.reward.shape[:2]
    age = (pos - 1 - rows) % capacity
    window_rows = (rows[:, None] + jnp.arange(n_step)[None, :]) % capacity
    env_cols = envs[:, None]
    rewards = data.reward[window_rows, env_cols].astype(jnp.float32)
    term = data.terminated[window_rows, env_cols]
    done = jnp.logical_or(term, data.truncated[window_rows, env_cols])
    used = window_mask(age, done)
    last = jnp.sum(used.astype(jnp.int32), axis=1) - 1
    batch_idx = jnp.arange(rows.shape[0])
    last_rows = window_rows[batch_idx, last]
    mask = used.astype(jnp.float32)
    if weights is None:
        weights = jnp.ones(rows.shape, jnp.float32)
    return NStepBatch(
        obs=data.obs[rows, envs],
        action=data.action[rows, envs],
        rewards=rewards * mask,
        mask=mask,
        terminated=term[batch_idx, last],
        next_obs=data.next_obs[last_rows, envs],
        index=(rows * num_envs + envs).astype(jnp.int32),
        weights=weights,
    )


def nstep_replay(capacity: int, batch_size: int, n_step: int) -> ReplayBuffer:
    """Uniform replay of Transitions that samples `NStepBatch`es of length `n_step`.

    Storage, `add` and `can_sample` are those of `uniform_replay`; every written
    slot is equally likely to start a window.
    """
    if n_step < 1:
        raise ValueError(f"n_step must be >= 1, got {n_step}")
    if n_step > capacity:
        raise ValueError(f"n_step ({n_step}) cannot exceed the rows per env ({capacity})")
    base = uniform_replay(capacity, batch_size)

    def sample(state: BufferState, key: jax.Array) -> NStepBatch:
        num_envs = state.data.reward.shape[1]
        k_row, k_env = jax.random.split(key)
        rows = jax.random.randint(k_row, (batch_size,), 0, jnp.maximum(state.size, 1))
        envs = jax.random.randint(k_env, (batch_size,), 0, num_envs)
        return gather_nstep(state.data, state.pos, rows, envs, n_step)

    return base._replace(sample=sample)
