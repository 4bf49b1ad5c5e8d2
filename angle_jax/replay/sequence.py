"""Sequence replay for recurrent agents (R2D2, Kapturowski et al. 2019).

A recurrent learner trains on sequences of `L` consecutive steps of one env, starting from the
core state the actor had at the first step. Steps are kept time-major like the other buffers
(`[capacity, num_envs, ...]`, each observation once) and a sequence is a view of `L` rows, so
overlapping sequences (`period < L`) cost no extra memory. Sequences start every `period` rows;
the core state is stored only at those rows (`[capacity // period, num_envs, ...]`).

Slot `(k, env)` is the sequence of env `env` starting at row `k * period`, leaf
`k * num_envs + env` of a sum tree (and a min tree for importance weights) shared by uniform
sampling (every valid slot has priority 1) and proportional prioritised sampling. A slot is
valid from the write of its last row until its start row is overwritten; invalid slots hold
priority 0 (sum tree) and +inf (min tree), so they are never drawn.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.types import SequenceBatch, SequenceStep
from angle_jax.replay.buffer import ReplayBuffer
from angle_jax.replay.prioritized import (beta_schedule, importance_weights, stratified_targets, sumtree_find,
                                          tree_init, tree_leaf_values, tree_set, tree_total)


@struct.dataclass
class SequenceState:
    data: SequenceStep         # leaves [capacity, num_envs, ...]; core is None (stored in `core`)
    core: Any                  # core state at sequence starts, leaves [capacity // period, num_envs, ...]
    pos: jax.Array             # int32: next row to write
    size: jax.Array            # int32: rows written, at most capacity
    added: jax.Array           # int32: rows ever written (slot validity and the β schedule)
    sum_tree: jax.Array        # [2L] float32, leaf per slot: p = (priority + eps)^α, 0 where invalid
    min_tree: jax.Array        # [2L] float32, +inf where invalid
    max_priority: jax.Array    # float32: largest priority + eps seen, given to new slots

    shared_fields = ("pos", "size", "added")  # same for every seed: see core/axes.py


def sequence_priority(td_abs: jax.Array, mask: jax.Array, eta: float | jax.Array = 0.9) -> jax.Array:
    """R2D2's sequence priority η·max_t|δ_t| + (1-η)·mean_t|δ_t| over the steps where `mask` != 0.

    td_abs, mask: `[T, B]`; returns `[B]` float32, 0 for a sequence without a valid step.
    Masked steps are left out of both the max and the mean.
    """
    chex.assert_rank([td_abs, mask], 2)
    chex.assert_equal_shape([td_abs, mask])
    valid = mask != 0
    a = jnp.where(valid, jnp.abs(td_abs.astype(jnp.float32)), 0.0)
    count = jnp.sum(valid, axis=0)
    mean = jnp.sum(a, axis=0) / jnp.maximum(count, 1)
    return jnp.where(count > 0, eta * jnp.max(a, axis=0) + (1.0 - eta) * mean, 0.0).astype(jnp.float32)


def sequence_replay(capacity: int, batch_size: int, sequence_length: int, period: int, *,
                    prioritized: bool = False, alpha: float = 0.9, beta0: float = 0.6,
                    beta_steps: float = 100_000, eps: float = 1e-6) -> ReplayBuffer:
    """Replay of `SequenceStep`s sampling `SequenceBatch`es of `sequence_length` consecutive steps.

    capacity: rows per env (a multiple of `period`); sequences start every `period` rows and
    wrap around the circular store. `prioritized=False`: uniform over the valid slots, weights
    1, `update_priorities` returns the state unchanged. `prioritized=True`: proportional
    sampling with p = (|priority| + eps)^α, new slots get the largest priority seen, stratified
    draws and importance weights with β annealed from `beta0` to 1 over `beta_steps` env steps
    (rows written x num_envs), as in `prioritized_replay`.
    """
    length = sequence_length
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    if capacity % period:
        raise ValueError(f"capacity ({capacity}) must be a multiple of period ({period})")
    if length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {length}")
    if length > capacity:
        raise ValueError(f"sequence_length ({length}) must not exceed capacity ({capacity})")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not 0.0 <= beta0 <= 1.0:
        raise ValueError(f"beta0 must be in [0, 1], got {beta0}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    starts = capacity // period

    def num_envs_of(state: SequenceState) -> int:
        return state.data.reward.shape[1]

    def init(example: SequenceStep) -> SequenceState:
        """`example`: one vectorised step, leaves `[num_envs, ...]` (core included)."""
        def zeros(rows):
            return lambda x: jnp.zeros((rows, *jnp.shape(x)), jnp.asarray(x).dtype)

        data = jax.tree.map(zeros(capacity), example.replace(core=None))
        num_envs = data.reward.shape[1]
        return SequenceState(
            data=data, core=jax.tree.map(zeros(starts), example.core),
            pos=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32), added=jnp.zeros((), jnp.int32),
            sum_tree=tree_init(starts * num_envs, 0.0), min_tree=tree_init(starts * num_envs, jnp.inf),
            max_priority=jnp.ones((), jnp.float32),
        )

    def add(state: SequenceState, item: SequenceStep) -> SequenceState:
        """Write one row; invalidate the slots starting at it and validate those ending at it."""
        step = item.replace(core=None)
        chex.assert_trees_all_equal_shapes_and_dtypes(
            step, jax.tree.map(lambda d: d[0], state.data), custom_message="sequence step does not match the buffer")
        chex.assert_trees_all_equal_shapes_and_dtypes(
            item.core, jax.tree.map(lambda c: c[0], state.core), custom_message="core state does not match the buffer")
        num_envs = num_envs_of(state)
        pos = state.pos
        data = jax.tree.map(lambda d, x: jax.lax.dynamic_update_index_in_dim(d, x, pos, 0), state.data, step)

        # the row starts a sequence: store its core; the old sequence there loses its start row
        k_new = pos // period
        is_start = pos % period == 0
        core = jax.tree.map(
            lambda c, x: jax.lax.dynamic_update_index_in_dim(c, jnp.where(is_start, x, c[k_new]), k_new, 0),
            state.core, item.core)
        # the row ends the sequence that started L - 1 rows ago (if one started there and it was written)
        s = (pos - length + 1) % capacity
        k_end = s // period
        ready = jnp.logical_and(s % period == 0, state.added + 1 >= length)

        # one tree write for both; a leaf's value depends only on the leaf, so duplicates (L == 1) agree
        envs = jnp.arange(num_envs, dtype=jnp.int32)
        leaves = jnp.concatenate([k_new * num_envs + envs, k_end * num_envs + envs])
        slot = leaves // num_envs
        fresh = state.max_priority ** alpha if prioritized else jnp.ones((), jnp.float32)
        drop = jnp.logical_and(is_start, slot == k_new)
        keep = jnp.logical_and(ready, slot == k_end)

        def values(tree, empty):
            current = tree_leaf_values(tree, leaves)
            return jnp.where(keep, fresh, jnp.where(drop, empty, current))

        return state.replace(
            data=data, core=core, pos=(pos + 1) % capacity, size=jnp.minimum(state.size + 1, capacity),
            added=state.added + 1,
            sum_tree=tree_set(state.sum_tree, leaves, values(state.sum_tree, 0.0), jnp.add),
            min_tree=tree_set(state.min_tree, leaves, values(state.min_tree, jnp.inf), jnp.minimum),
        )

    def sample(state: SequenceState, key: jax.Array) -> SequenceBatch:
        """`batch_size` valid slots (stratified over the sum tree), read as `[L, B, ...]` sequences."""
        num_envs = num_envs_of(state)
        targets = stratified_targets(key, tree_total(state.sum_tree), batch_size)
        leaves = jnp.minimum(sumtree_find(state.sum_tree, targets), starts * num_envs - 1)
        k, envs = leaves // num_envs, leaves % num_envs
        rows = (k[None, :] * period + jnp.arange(length, dtype=jnp.int32)[:, None]) % capacity
        seq = jax.tree.map(lambda d: d[rows, envs[None, :]], state.data)
        if prioritized:
            beta = beta_schedule(state.added * num_envs, beta0, beta_steps)
            weights = importance_weights(tree_leaf_values(state.sum_tree, leaves), tree_total(state.min_tree), beta)
        else:
            weights = jnp.ones((batch_size,), jnp.float32)
        return SequenceBatch(
            obs=seq.obs, action=seq.action, reward=seq.reward, terminated=seq.terminated,
            truncated=seq.truncated, reset=seq.reset, core=jax.tree.map(lambda c: c[k, envs], state.core),
            index=leaves.astype(jnp.int32), weights=weights.astype(jnp.float32),
        )

    def update_priorities(state: SequenceState, batch: SequenceBatch, priorities: jax.Array) -> SequenceState:
        """Set p = (|priority| + eps)^α at `batch.index`; slots that became invalid since stay invalid."""
        chex.assert_shape(priorities, batch.index.shape)
        if not prioritized:
            return state
        p = jnp.abs(priorities.astype(jnp.float32)) + eps
        valid = tree_leaf_values(state.sum_tree, batch.index) > 0
        values = p ** alpha
        return state.replace(
            sum_tree=tree_set(state.sum_tree, batch.index, jnp.where(valid, values, 0.0), jnp.add),
            min_tree=tree_set(state.min_tree, batch.index, jnp.where(valid, values, jnp.inf), jnp.minimum),
            max_priority=jnp.maximum(state.max_priority, jnp.max(jnp.where(valid, p, 0.0))),
        )

    def can_sample(state: SequenceState) -> jax.Array:
        return tree_total(state.sum_tree) > 0

    return ReplayBuffer(init, add, sample, can_sample, capacity, batch_size, update_priorities)
