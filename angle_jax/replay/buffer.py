"""A functional, time-major circular replay buffer.

Every leaf is stored as `[capacity, num_envs, ...]`: row `t` holds what all
envs produced at one vectorised step, so neighbouring rows of one env are
consecutive transitions (what n-step returns and frame stacks read).
Built like an optax transformation: a NamedTuple of pure functions whose
static sizes are closed over.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.kernels import XLA, Kernels


@struct.dataclass
class BufferState:
    data: Any          # pytree, leaves [capacity, num_envs, ...]
    pos: jax.Array     # int32: next row to write
    size: jax.Array    # int32: rows written so far, at most capacity

    shared_fields = ("pos", "size")  # same for every seed: see core/axes.py


class ReplayBuffer(NamedTuple):
    init: Callable[[Any], BufferState]
    add: Callable[[BufferState, Any], BufferState]
    sample: Callable[[BufferState, jax.Array], Any]
    can_sample: Callable[[BufferState], jax.Array]
    capacity: int
    batch_size: int
    update_priorities: Callable[..., BufferState] | None = None


def uniform_replay(capacity: int, batch_size: int, min_size: int | None = None,
                   kernels: Kernels = XLA) -> ReplayBuffer:
    """Uniform sampling with replacement from the valid rows of every env.

    `capacity` is rows per env; a sample draws a row in `[0, size)` and an env
    index independently, so every stored transition is equally likely. The sampled
    indices are computed once (`kernels.once`) for all the gathers that read them.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    min_rows = 1 if min_size is None else max(1, int(min_size))

    def init(example: Any) -> BufferState:
        """`example`: one vectorised step, leaves `[num_envs, ...]`."""
        data = jax.tree.map(lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example)
        return BufferState(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def add(state: BufferState, item: Any) -> BufferState:
        chex.assert_trees_all_equal_shapes_and_dtypes(
            item, jax.tree.map(lambda d: d[0], state.data), custom_message="replay item does not match the buffer")
        data = jax.tree.map(
            lambda d, x: jax.lax.dynamic_update_index_in_dim(d, x, state.pos, 0), state.data, item)
        return BufferState(data, (state.pos + 1) % capacity, jnp.minimum(state.size + 1, capacity))

    def sample(state: BufferState, key: jax.Array) -> Any:
        num_envs = jax.tree.leaves(state.data)[0].shape[1]
        k_row, k_env = jax.random.split(key)
        rows = jax.random.randint(k_row, (batch_size,), 0, jnp.maximum(state.size, 1))
        envs = jax.random.randint(k_env, (batch_size,), 0, num_envs)
        rows, envs = kernels.once((rows, envs))
        return jax.tree.map(lambda d: d[rows, envs], state.data)

    def can_sample(state: BufferState) -> jax.Array:
        return state.size >= min_rows

    return ReplayBuffer(init, add, sample, can_sample, capacity, batch_size)
