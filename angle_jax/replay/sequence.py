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

Stacked frames (`frames=True`, Atari obs `[K, H, W]`): a stack shares K-1 frames with the
previous one, so each row keeps only the newest frame of its obs and a kind, found at `add`
by comparing the obs with the env's previous obs:

- continue: the previous stack moved on by one frame (obs[:K-1] == previous[1:]);
- restart: the newest frame repeated K times (envpool's first stack of a game);
- shift: the previous stack moved on by two frames (obs[:K-2] == previous[2:]), what the
  sequence store sees after a lost life with `episodic_life`: envpool moves the final stack of
  the life (never stored here, there is no next_obs) on by one frame. The skipped frame
  (obs[K-2]) goes to one of `shift_frames` side frames of the row's block of `period` rows.

The whole stack is stored at each sequence start row (`[capacity // period, num_envs, K, H, W]`,
like the core), and `sample` rebuilds every stack of a sequence from it, exactly. Side frames,
start stacks and the per-slot flags live exactly as long as the rows they belong to. A row that
is none of the three kinds, or a shift in a block whose side frames are all taken, cannot be
rebuilt: the slots that hold it at a later step are never made valid (`dropped` counts such
rows; the off-policy loop logs it as `replay_dropped`), so every sampled stack equals the obs that was added.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.types import SequenceBatch, SequenceStep
from angle_jax.replay.buffer import ReplayBuffer
from angle_jax.replay.prioritized import (beta_schedule, check_priority_settings, importance_weights,
                                          stratified_targets, sumtree_find, tree_init, tree_leaf_values, tree_set,
                                          tree_total)

CONTINUE, RESTART, SHIFT = 0, 1, 2  # row kinds of a frame-deduplicated store; SHIFT + m uses side frame m


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


@struct.dataclass
class SequenceFrameState:
    """A frame-deduplicated sequence store (S = capacity // period start slots, M side frames per block)."""

    data: SequenceStep         # leaves [capacity, num_envs, ...]; obs: the newest frame [C, N, H, W]; core None
    kind: jax.Array            # [C, N] uint8: CONTINUE, RESTART or SHIFT + m (side frame m of the row's block)
    stack: jax.Array           # [S, N, K, H, W] the whole obs at each sequence start row
    side: jax.Array            # [S, N, M, H, W] frames skipped by shifted obs, per block of `period` rows
    side_used: jax.Array       # [S, N] int32: side frames taken in the block
    broken: jax.Array          # [S, N] bool: the slot holds a row that cannot be rebuilt
    last: jax.Array            # [N, K, H, W] the previous obs of each env
    dropped: jax.Array         # int32: rows that could not be rebuilt (their slots are left out)
    core: Any                  # core state at sequence starts, leaves [S, num_envs, ...]
    pos: jax.Array
    size: jax.Array
    added: jax.Array
    sum_tree: jax.Array
    min_tree: jax.Array
    max_priority: jax.Array

    shared_fields = ("pos", "size", "added")


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


def bytes_per_step(state: SequenceState | SequenceFrameState) -> float:
    """Bytes of the whole store (cores, trees and side arrays included) per env step it holds when full."""
    capacity, num_envs = state.data.reward.shape
    total = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    return total / (capacity * num_envs)


def sequence_stacks(state: SequenceFrameState, k: jax.Array, envs: jax.Array, length: int) -> jax.Array:
    """The obs `[length, B, K, H, W]` of the sequences of `length` steps in slots `(k, envs)` (`[B]` each).

    Each env's frames form a stream: the start stack, then per later row its side frame (a
    shift) and its newest frame. Stack i is the K stream frames ending at row i's newest,
    none older than the latest restart (whose frame fills the rest). All stacks come from one
    gather, as fast as reading stored full stacks on CPU (a scan over the steps took 3.5x longer).
    """
    capacity = state.kind.shape[0]
    starts, _, m, _, _ = state.side.shape
    k_frames = state.stack.shape[2]
    period = capacity // starts
    batch = k.shape[0]
    i = jnp.arange(length, dtype=jnp.int32)[:, None]
    rows = (k[None, :] * period + i) % capacity                                       # [L, B]
    kind = state.kind[rows, envs[None, :]].astype(jnp.int32)
    later = i > 0
    pushed = jnp.where(later, 1 + (kind >= SHIFT), k_frames)                          # stream frames per row
    newest = jnp.cumsum(pushed, axis=0) - 1                                           # stream index, row's newest
    floor = jax.lax.cummax(jnp.where(later & (kind == RESTART), newest, 0), axis=0)
    back = jnp.arange(k_frames - 1, -1, -1, dtype=jnp.int32)                          # stack position j: K-1-j back
    x = jnp.maximum(newest[:, :, None] - back, floor[:, :, None])                     # [L, B, K] stream index
    src = jax.vmap(jnp.searchsorted, in_axes=(1, 1), out_axes=1)(newest, x)           # row pushing stream frame x
    cols = jnp.arange(batch)[None, :, None]
    side_index = (src // period) * m + (kind[src, cols] - SHIFT)
    phys = jnp.where(x < k_frames, x,
                     jnp.where(x == newest[src, cols], k_frames + src, k_frames + length + side_index))
    blocks = (k[:, None] + jnp.arange((length - 1) // period + 1)) % starts
    side = state.side[blocks, envs[:, None]]                                          # [B, nb, M, H, W]
    pool = jnp.concatenate([state.stack[k, envs], jnp.moveaxis(state.data.obs[rows, envs[None, :]], 0, 1),
                            side.reshape(batch, -1, *side.shape[-2:])], axis=1)
    return pool[cols, phys]


class _Slots(NamedTuple):
    """Slot bookkeeping shared by the plain and the frame-deduplicated store."""

    trees: Callable      # (state, num_envs, broken | None) -> (sum_tree, min_tree) after writing row `pos`
    draw: Callable       # (state, key, num_envs) -> (leaves, k, envs, weights)
    update_priorities: Callable
    can_sample: Callable


def _slots(capacity: int, batch_size: int, length: int, period: int, prioritized: bool, alpha: float,
           beta0: float, beta_steps: float, eps: float) -> _Slots:
    starts = capacity // period

    def trees(state, num_envs: int, broken: jax.Array | None):
        """Invalidate the slots starting at row `pos` and validate those ending at it (unless `broken`)."""
        pos = state.pos
        k_new = pos // period
        is_start = pos % period == 0
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
        if broken is not None:
            keep = jnp.logical_and(keep, ~broken.reshape(-1)[leaves])

        def values(tree, empty):
            current = tree_leaf_values(tree, leaves)
            return jnp.where(keep, fresh, jnp.where(drop, empty, current))

        return (tree_set(state.sum_tree, leaves, values(state.sum_tree, 0.0), jnp.add),
                tree_set(state.min_tree, leaves, values(state.min_tree, jnp.inf), jnp.minimum))

    def draw(state, key: jax.Array, num_envs: int):
        """`batch_size` valid slots, stratified over the sum tree, with their importance weights."""
        targets = stratified_targets(key, tree_total(state.sum_tree), batch_size)
        leaves = jnp.minimum(sumtree_find(state.sum_tree, targets), starts * num_envs - 1)
        if prioritized:
            beta = beta_schedule(state.added * num_envs, beta0, beta_steps)
            weights = importance_weights(tree_leaf_values(state.sum_tree, leaves), tree_total(state.min_tree), beta)
        else:
            weights = jnp.ones((batch_size,), jnp.float32)
        return leaves, leaves // num_envs, leaves % num_envs, weights.astype(jnp.float32)

    def update_priorities(state, batch: SequenceBatch, priorities: jax.Array):
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

    def can_sample(state) -> jax.Array:
        return tree_total(state.sum_tree) > 0

    return _Slots(trees, draw, update_priorities, can_sample)


def sequence_replay(capacity: int, batch_size: int, sequence_length: int, period: int, *,
                    prioritized: bool = False, alpha: float = 0.9, beta0: float = 0.6,
                    beta_steps: float = 100_000, eps: float = 1e-6, frames: bool = False,
                    shift_frames: int | None = None) -> ReplayBuffer:
    """Replay of `SequenceStep`s sampling `SequenceBatch`es of `sequence_length` consecutive steps.

    capacity: rows per env (a multiple of `period`); sequences start every `period` rows and
    wrap around the circular store. `prioritized=False`: uniform over the valid slots, weights
    1, `update_priorities` returns the state unchanged. `prioritized=True`: proportional
    sampling with p = (|priority| + eps)^α, new slots get the largest priority seen, stratified
    draws and importance weights with β annealed from `beta0` to 1 over `beta_steps` env steps
    (rows written x num_envs), as in `prioritized_replay`.

    frames: obs are stacked frames `[K, H, W]`, stored once each (see the module docstring);
    `shift_frames` side frames per block of `period` rows hold the frames skipped after lost
    lives (default `ceil(period / 20)`: one lost life per 20 steps).
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
    check_priority_settings(alpha, beta0, eps)
    if shift_frames is None:
        shift_frames = -(-period // 20)
    if not 0 <= shift_frames <= 250:
        raise ValueError(f"shift_frames must be in [0, 250], got {shift_frames}")
    starts = capacity // period
    slots = _slots(capacity, batch_size, length, period, prioritized, alpha, beta0, beta_steps, eps)
    if frames:
        return _frame_replay(capacity, batch_size, length, period, shift_frames, slots)

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
        pos = state.pos
        data = jax.tree.map(lambda d, x: jax.lax.dynamic_update_index_in_dim(d, x, pos, 0), state.data, step)
        sum_tree, min_tree = slots.trees(state, num_envs_of(state), None)
        return state.replace(
            data=data, core=_store_at_start(state.core, item.core, pos, period), pos=(pos + 1) % capacity,
            size=jnp.minimum(state.size + 1, capacity), added=state.added + 1, sum_tree=sum_tree, min_tree=min_tree)

    def sample(state: SequenceState, key: jax.Array) -> SequenceBatch:
        """`batch_size` valid slots (stratified over the sum tree), read as `[L, B, ...]` sequences."""
        leaves, k, envs, weights = slots.draw(state, key, num_envs_of(state))
        rows = (k[None, :] * period + jnp.arange(length, dtype=jnp.int32)[:, None]) % capacity
        seq = jax.tree.map(lambda d: d[rows, envs[None, :]], state.data)
        return SequenceBatch(
            obs=seq.obs, action=seq.action, reward=seq.reward, terminated=seq.terminated,
            truncated=seq.truncated, reset=seq.reset, core=jax.tree.map(lambda c: c[k, envs], state.core),
            index=leaves.astype(jnp.int32), weights=weights,
        )

    return ReplayBuffer(init, add, sample, slots.can_sample, capacity, batch_size, slots.update_priorities)


def _store_at_start(store: Any, value: Any, pos: jax.Array, period: int) -> Any:
    """`store` (leaves `[capacity // period, ...]`) with `value` written at slot `pos // period` if `pos`
    starts a sequence (a dynamic-update-slice either way)."""
    k = pos // period
    is_start = pos % period == 0
    return jax.tree.map(
        lambda c, x: jax.lax.dynamic_update_index_in_dim(c, jnp.where(is_start, x, c[k]), k, 0), store, value)


def _frame_replay(capacity: int, batch_size: int, length: int, period: int, shift_frames: int,
                  slots: _Slots) -> ReplayBuffer:
    """`sequence_replay(..., frames=True)`: the same slots, obs stored one frame per row."""
    starts = capacity // period
    m = shift_frames
    # the slots holding a row at offset o = pos % period + j * period (one per j)
    spans = (length - 1) // period + 1

    def init(example: SequenceStep) -> SequenceFrameState:
        """`example`: one vectorised step, leaves `[num_envs, ...]`, obs `[num_envs, K, H, W]`."""
        obs = jnp.asarray(example.obs)
        if obs.ndim != 4:
            raise ValueError(f"frame-deduplicated sequence replay needs obs stacks [num_envs, K, H, W], "
                             f"got shape {obs.shape}")
        n, k_frames, h, w = obs.shape

        def zeros(rows):
            return lambda x: jnp.zeros((rows, *jnp.shape(x)), jnp.asarray(x).dtype)

        data = jax.tree.map(zeros(capacity), example.replace(core=None, obs=obs[:, -1]))
        i32 = jnp.zeros((), jnp.int32)
        return SequenceFrameState(
            data=data, kind=jnp.zeros((capacity, n), jnp.uint8),
            stack=jnp.zeros((starts, n, k_frames, h, w), obs.dtype),
            side=jnp.zeros((starts, n, m, h, w), obs.dtype),
            side_used=jnp.zeros((starts, n), jnp.int32), broken=jnp.zeros((starts, n), jnp.bool_),
            last=jnp.zeros_like(obs), dropped=i32, core=jax.tree.map(zeros(starts), example.core),
            pos=i32, size=i32, added=i32,
            sum_tree=tree_init(starts * n, 0.0), min_tree=tree_init(starts * n, jnp.inf),
            max_priority=jnp.ones((), jnp.float32),
        )

    def add(state: SequenceFrameState, item: SequenceStep) -> SequenceFrameState:
        """Write one row: the obs's newest frame and kind, its whole stack at a start row, a side frame
        for a shift; invalidate the slots starting at it and validate the unbroken ones ending at it."""
        obs = item.obs
        chex.assert_trees_all_equal_shapes_and_dtypes(obs, state.last, custom_message="obs do not match the buffer")
        step = item.replace(core=None, obs=obs[:, -1])
        chex.assert_trees_all_equal_shapes_and_dtypes(
            step, jax.tree.map(lambda d: d[0], state.data), custom_message="sequence step does not match the buffer")
        chex.assert_trees_all_equal_shapes_and_dtypes(
            item.core, jax.tree.map(lambda c: c[0], state.core), custom_message="core state does not match the buffer")
        num_envs, k_frames = obs.shape[:2]
        pos, prev = state.pos, state.last
        block = pos // period
        is_start = pos % period == 0
        later = state.added > 0

        def equal(a, b):
            return jnp.all(a == b, axis=(1, 2, 3))

        cont = later & equal(obs[:, :k_frames - 1], prev[:, 1:])
        restart = equal(obs, obs[:, -1:])
        used = jnp.where(is_start, 0, state.side_used[block])
        if k_frames >= 2 and m > 0:
            take = ~cont & ~restart & later & equal(obs[:, :k_frames - 2], prev[:, 2:]) & (used < m)
            slot = jnp.logical_and(jnp.arange(m)[None, :] == used[:, None], take[:, None])
            side_block = jnp.where(slot[..., None, None], obs[:, -2, None], state.side[block])
            side = jax.lax.dynamic_update_index_in_dim(state.side, side_block, block, 0)
        else:
            take, side = jnp.zeros((num_envs,), jnp.bool_), state.side
        drop = later & ~cont & ~restart & ~take
        kind = jnp.where(cont, CONTINUE, jnp.where(take, SHIFT + used, RESTART)).astype(jnp.uint8)

        # a dropped row breaks the slots that hold it after their start row (their stacks need it)
        broken = jax.lax.dynamic_update_index_in_dim(
            state.broken, jnp.logical_and(~is_start, state.broken[block]), block, 0)
        j = jnp.arange(spans, dtype=jnp.int32)
        offset = pos % period + j * period
        ks = (block - j) % starts
        hit = jnp.logical_and(offset < length, offset > 0)
        broken = broken.at[ks].set(broken[ks] | (hit[:, None] & drop[None, :]))

        sum_tree, min_tree = slots.trees(state, num_envs, broken)
        put = lambda d, x: jax.lax.dynamic_update_index_in_dim(d, x, pos, 0)  # noqa: E731
        return state.replace(
            data=jax.tree.map(put, state.data, step), kind=put(state.kind, kind),
            stack=_store_at_start(state.stack, obs, pos, period), side=side,
            side_used=jax.lax.dynamic_update_index_in_dim(state.side_used, used + take, block, 0),
            broken=broken, last=obs, dropped=state.dropped + jnp.sum(drop, dtype=jnp.int32),
            core=_store_at_start(state.core, item.core, pos, period), pos=(pos + 1) % capacity,
            size=jnp.minimum(state.size + 1, capacity), added=state.added + 1, sum_tree=sum_tree, min_tree=min_tree)

    def sample(state: SequenceFrameState, key: jax.Array) -> SequenceBatch:
        """`batch_size` valid slots (stratified over the sum tree), read as `[L, B, ...]` sequences with
        their stacks rebuilt."""
        leaves, k, envs, weights = slots.draw(state, key, state.data.reward.shape[1])
        rows = (k[None, :] * period + jnp.arange(length, dtype=jnp.int32)[:, None]) % capacity
        seq = jax.tree.map(lambda d: d[rows, envs[None, :]], state.data.replace(obs=None))
        return SequenceBatch(
            obs=sequence_stacks(state, k, envs, length), action=seq.action, reward=seq.reward,
            terminated=seq.terminated, truncated=seq.truncated, reset=seq.reset,
            core=jax.tree.map(lambda c: c[k, envs], state.core), index=leaves.astype(jnp.int32), weights=weights,
        )

    return ReplayBuffer(init, add, sample, slots.can_sample, capacity, batch_size, slots.update_priorities)
