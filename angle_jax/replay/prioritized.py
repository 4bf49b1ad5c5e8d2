"""Proportional prioritised replay (Schaul et al. 2016) on the time-major store.

Priorities live in two complete binary trees stored as flat device arrays in
heap order (node 1 is the root, node i has children 2i and 2i+1, the leaves are
nodes L..2L-1 with L a power of two): a sum tree for sampling and a min tree for
the importance-weight normaliser. Leaf `row * num_envs + env` is the slot of
that transition; unwritten slots hold 0 (sum) and +inf (min).

Numerical stability: an update never adds a delta to a running sum. It writes
the new leaves and then recomputes every internal node on the updated paths
from its two children. Each node is therefore always the float32 sum of its
current children, whatever happened before, so error does not accumulate over
millions of updates (it stays at the rounding of one log2(L)-deep pairwise sum).
"""
from __future__ import annotations

import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.types import NStepBatch, Transition
from angle_jax.replay.buffer import BufferState, ReplayBuffer, uniform_replay
from angle_jax.replay.nstep import gather_nstep


# ---- trees ----------------------------------------------------------------------

def tree_leaves_for(num_leaves: int) -> int:
    """The power-of-two leaf count L >= num_leaves."""
    return 1 << max(0, math.ceil(math.log2(max(1, num_leaves))))


def tree_init(num_leaves: int, fill: float) -> jax.Array:
    """A flat heap `[2L]` whose every node is `fill` (0 for sums, +inf for minima)."""
    return jnp.full((2 * tree_leaves_for(num_leaves),), fill, jnp.float32)


def _depth(tree: jax.Array) -> int:
    return int(math.log2(tree.shape[-1] // 2))


def tree_set(tree: jax.Array, leaves: jax.Array, values: jax.Array,
             combine: Callable[[jax.Array, jax.Array], jax.Array] = jnp.add) -> jax.Array:
    """Write `values` at leaf indices `leaves` (`[B]`) and recompute their ancestors.

    Ancestors are rebuilt level by level as `combine(left, right)` of their
    current children, so repeated leaves in one call are harmless and no
    rounding error carries over from earlier updates. O(B log L).
    """
    chex.assert_rank([tree, leaves, values], [1, 1, 1])
    chex.assert_equal_shape([leaves, values])
    num_leaves = tree.shape[0] // 2
    idx = leaves.astype(jnp.int32) + num_leaves
    tree = tree.at[idx].set(values.astype(tree.dtype))

    def level(_, carry):
        tree, idx = carry
        idx = idx // 2
        return tree.at[idx].set(combine(tree[2 * idx], tree[2 * idx + 1])), idx

    tree, _ = jax.lax.fori_loop(0, _depth(tree), level, (tree, idx))
    return tree


def tree_total(tree: jax.Array) -> jax.Array:
    """The root: sum (or min) over all leaves."""
    return tree[1]


def tree_leaf_values(tree: jax.Array, leaves: jax.Array) -> jax.Array:
    return tree[leaves + tree.shape[0] // 2]


def sumtree_find(tree: jax.Array, targets: jax.Array) -> jax.Array:
    """For each target mass u in [0, total), the leaf i with prefix(i) <= u < prefix(i+1).

    Vectorised descent over the batch, log2(L) steps. It never enters a
    zero-mass subtree while its sibling has mass, so float32 rounding of u
    near a boundary cannot select an empty (unwritten) slot.
    """
    chex.assert_rank([tree, targets], [1, 1])
    num_leaves = tree.shape[0] // 2

    def level(_, carry):
        idx, u = carry
        left = tree[2 * idx]
        right = tree[2 * idx + 1]
        go_right = jnp.logical_and(jnp.logical_or(u >= left, left <= 0), right > 0)
        return 2 * idx + go_right.astype(jnp.int32), jnp.where(go_right, u - left, u)

    idx = jnp.ones(targets.shape, jnp.int32)
    idx, _ = jax.lax.fori_loop(0, _depth(tree), level, (idx, targets.astype(jnp.float32)))
    return idx - num_leaves


def stratified_targets(key: jax.Array, total: jax.Array, batch_size: int) -> jax.Array:
    """One uniform draw in each of `batch_size` equal slices of [0, total)."""
    u = (jnp.arange(batch_size, dtype=jnp.float32) + jax.random.uniform(key, (batch_size,))) / batch_size
    return u * total


# ---- schedules and weights ------------------------------------------------------

def beta_schedule(step: jax.Array, beta0: float, anneal_steps: float) -> jax.Array:
    """β rising linearly from `beta0` to 1 over `anneal_steps` env steps, then 1."""
    if anneal_steps <= 0:
        return jnp.ones((), jnp.float32)
    frac = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / anneal_steps)
    return beta0 + (1.0 - beta0) * frac


def importance_weights(leaf_priorities: jax.Array, min_priority: jax.Array, beta: jax.Array) -> jax.Array:
    """w_i / max_j w_j with w_i = (N P(i))^-β, for stored priorities p_i = priority^α.

    P(i) = p_i / Σp, and the largest weight belongs to the smallest stored
    priority, so the ratio is (p_i / p_min)^-β: N and Σp cancel.
    """
    chex.assert_rank(leaf_priorities, 1)
    ratio = leaf_priorities / jnp.maximum(min_priority, jnp.finfo(jnp.float32).tiny)
    return jnp.minimum(1.0, ratio ** (-beta))


# ---- the buffer -----------------------------------------------------------------

@struct.dataclass
class PrioritizedState:
    data: Transition           # leaves [capacity, num_envs, ...]
    pos: jax.Array             # int32: next row to write
    size: jax.Array            # int32: rows written, at most capacity
    added: jax.Array           # int32: rows ever written (drives the β schedule)
    sum_tree: jax.Array        # [2L] float32, leaves p_i = (|δ_i| + eps)^α
    min_tree: jax.Array        # [2L] float32, +inf where unwritten
    max_priority: jax.Array    # float32: largest |δ| + eps seen, given to new transitions

    shared_fields = ("pos", "size", "added")  # same for every seed: see core/axes.py


def check_priority_settings(alpha: float, beta0: float, eps: float) -> None:
    """The prioritisation exponent α, the initial importance exponent β₀ and the priority floor ε."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not 0.0 <= beta0 <= 1.0:
        raise ValueError(f"beta0 must be in [0, 1], got {beta0}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")


def prioritized_replay(capacity: int, batch_size: int, n_step: int = 1, alpha: float = 0.6,
                       beta0: float = 0.4, beta_steps: float = 1_000_000, eps: float = 1e-6) -> ReplayBuffer:
    """Proportional prioritised replay sampling `NStepBatch`es with importance weights.

    New transitions get the largest priority seen so far; `update_priorities(state,
    batch, priorities)` sets p = (|priority| + eps)^α for the sampled slots. β is
    annealed over env steps (rows written x num_envs). A batch is drawn by
    stratified sampling of the sum tree (one draw per 1/B slice of the mass).
    """
    if n_step < 1:
        raise ValueError(f"n_step must be >= 1, got {n_step}")
    if n_step > capacity:
        raise ValueError(f"n_step ({n_step}) cannot exceed the rows per env ({capacity})")
    check_priority_settings(alpha, beta0, eps)
    base = uniform_replay(capacity, batch_size)

    def init(example: Transition) -> PrioritizedState:
        store = base.init(example)
        num_envs = store.data.reward.shape[1]
        return PrioritizedState(
            data=store.data, pos=store.pos, size=store.size, added=jnp.zeros((), jnp.int32),
            sum_tree=tree_init(capacity * num_envs, 0.0),
            min_tree=tree_init(capacity * num_envs, jnp.inf),
            max_priority=jnp.ones((), jnp.float32),
        )

    def add(state: PrioritizedState, item: Transition) -> PrioritizedState:
        store = base.add(BufferState(state.data, state.pos, state.size), item)
        num_envs = state.data.reward.shape[1]
        leaves = state.pos * num_envs + jnp.arange(num_envs, dtype=jnp.int32)
        values = jnp.full((num_envs,), state.max_priority ** alpha, jnp.float32)
        return state.replace(
            data=store.data, pos=store.pos, size=store.size, added=state.added + 1,
            sum_tree=tree_set(state.sum_tree, leaves, values, jnp.add),
            min_tree=tree_set(state.min_tree, leaves, values, jnp.minimum),
        )

    def sample(state: PrioritizedState, key: jax.Array) -> NStepBatch:
        num_envs = state.data.reward.shape[1]
        targets = stratified_targets(key, tree_total(state.sum_tree), batch_size)
        leaves = jnp.minimum(sumtree_find(state.sum_tree, targets), capacity * num_envs - 1)
        beta = beta_schedule(state.added * num_envs, beta0, beta_steps)
        weights = importance_weights(tree_leaf_values(state.sum_tree, leaves), tree_total(state.min_tree), beta)
        return gather_nstep(state.data, state.pos, leaves // num_envs, leaves % num_envs, n_step, weights)

    def update_priorities(state: PrioritizedState, batch: NStepBatch, priorities: jax.Array) -> PrioritizedState:
        chex.assert_shape(priorities, batch.index.shape)
        p = jnp.abs(priorities.astype(jnp.float32)) + eps
        values = p ** alpha
        return state.replace(
            sum_tree=tree_set(state.sum_tree, batch.index, values, jnp.add),
            min_tree=tree_set(state.min_tree, batch.index, values, jnp.minimum),
            max_priority=jnp.maximum(state.max_priority, jnp.max(p)),
        )

    def can_sample(state: PrioritizedState) -> jax.Array:
        return state.size >= 1

    return ReplayBuffer(init, add, sample, can_sample, capacity, batch_size, update_priorities)
