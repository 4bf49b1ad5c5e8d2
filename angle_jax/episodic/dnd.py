"""NEC's differentiable neural dictionary (Pritzel et al. 2017) in fixed-size arrays.

One dictionary per action `a`: `C` slots of keys `[D]` and values, filled in slot order and
then overwritten least-recently-used first. A lookup of embeddings `h [B, D]` finds, per action,
the `k` nearest keys (`knn.knn`), weighs them by the kernel `1 / (d² + δ)` on squared distances,
normalised over the valid neighbours, and returns `Q [B, A] = Σ w_i v_i` (0 for an action with
no entries yet). Neighbour selection is not differentiable; the kernel and the weighted sum are,
in `h` and in the gathered keys and values, so the learner's gradient reaches all three.

Gradients of the gathered keys / values `[B, A, k, ...]` go back to their slots with
`gradient_step`: a slot that several items of the batch looked up gets the *mean* of their
gradients (scatter-add, divided by how often the slot was used). Differentiating `lookup` with
respect to `state.keys` directly gives the *sum* instead (JAX's gradient of a gather) and a
dense `[A, C, D]` array; `gradient_step` touches only the `B·A·k` looked-up slots. It is plain
SGD with its own learning rate: no optimizer state is kept per slot.

Time stamps: `time` counts events; every item of a `write` and every `touch` call stamps the
slots it uses with the current `time` and then advances it by one, so a slot stamped later was
used later. Free slots hold -1 and are never evicted (free slots are filled first).

The neighbours passed to `touch` and `gradient_step` name slots, so they must come from the
same dictionary contents: a `write` in between may have put another entry in a slot.
Actions given to `write` must lie in `[0, A)` (not checked inside compiled code).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.episodic.knn import knn


@struct.dataclass
class DNDState:
    keys: jax.Array        # [A, C, D] float32
    values: jax.Array      # [A, C] float32
    last_used: jax.Array   # [A, C] int32: time of the last write / touch, -1 for a free slot
    size: jax.Array        # [A] int32: slots filled, at most C (slots [0, size) hold entries)
    time: jax.Array        # int32 scalar: events so far (write items and touch calls)


class Neighbours(NamedTuple):
    indices: jax.Array     # [B, A, k] int32: slot of each neighbour in its action's dictionary
    valid: jax.Array       # [B, A, k] bool: a real entry (an action with < k entries has invalid places)


def check(k: int, capacity: int, key_size: int, alpha: float, delta: float, num_actions: int = 1) -> None:
    """Raise ValueError (one line, naming the setting) for settings no dictionary can run with."""
    if num_actions < 1:
        raise ValueError(f"num_actions must be at least 1, got {num_actions}")
    if capacity < 1:
        raise ValueError(f"capacity (entries per action) must be at least 1, got {capacity}")
    if key_size < 1:
        raise ValueError(f"key_size must be at least 1, got {key_size}")
    if not 1 <= k <= capacity:
        raise ValueError(f"k (neighbours) must be in [1, capacity={capacity}], got {k}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha (tabular learning rate) must be in (0, 1], got {alpha}")
    if not 0.0 < delta < math.inf:
        raise ValueError(f"delta (kernel constant) must be positive and finite, got {delta}")


def init(num_actions: int, capacity: int, key_size: int) -> DNDState:
    """An empty dictionary: `capacity` slots of `key_size` per action."""
    if num_actions < 1 or capacity < 1 or key_size < 1:
        raise ValueError(f"DND sizes must be at least 1, got num_actions={num_actions}, capacity={capacity}, "
                         f"key_size={key_size}")
    return DNDState(
        keys=jnp.zeros((num_actions, capacity, key_size), jnp.float32),
        values=jnp.zeros((num_actions, capacity), jnp.float32),
        last_used=jnp.full((num_actions, capacity), -1, jnp.int32),
        size=jnp.zeros((num_actions,), jnp.int32),
        time=jnp.zeros((), jnp.int32),
    )


def nbytes(num_actions: int, capacity: int, key_size: int) -> int:
    """Bytes of a dictionary of these sizes, from the array dtypes (nothing is allocated)."""
    shapes = jax.eval_shape(lambda: init(num_actions, capacity, key_size))
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))


def neighbours(state: DNDState, h: jax.Array, k: int) -> Neighbours:
    """The `k` nearest entries of each action's dictionary to each `h [B, D]` (not differentiable)."""
    chex.assert_rank(h, 2)
    chex.assert_axis_dimension(h, 1, state.keys.shape[2])
    keys = jax.lax.stop_gradient(state.keys)
    _, idx, valid = jax.vmap(lambda c, s: knn(jax.lax.stop_gradient(h), c, k, size=s))(keys, state.size)
    return Neighbours(jnp.swapaxes(idx, 0, 1), jnp.swapaxes(valid, 0, 1))  # [A, B, k] -> [B, A, k]


def gather(state: DNDState, nb: Neighbours) -> tuple[jax.Array, jax.Array]:
    """Keys `[B, A, k, D]` and values `[B, A, k]` of the neighbours (a differentiable gather)."""
    actions = jnp.arange(state.keys.shape[0])[None, :, None]
    return state.keys[actions, nb.indices], state.values[actions, nb.indices]


def kernel_weights(h: jax.Array, keys: jax.Array, valid: jax.Array, delta: float | jax.Array) -> jax.Array:
    """`w [B, A, k]`: `1 / (‖h − key‖² + δ)` normalised over the valid neighbours, 0 elsewhere.

    Distances are recomputed from the gathered keys in their difference form (exact for near
    neighbours, unlike the matmul form used to find them). All zeros for an action without entries.
    """
    d2 = jnp.sum(jnp.square(h[:, None, None, :] - keys), axis=-1)
    kern = jnp.where(valid, 1.0 / (jnp.where(valid, d2, 0.0) + delta), 0.0)
    total = jnp.sum(kern, axis=-1, keepdims=True)
    return kern / jnp.where(total > 0, total, 1.0)


def q_from_neighbours(h: jax.Array, keys: jax.Array, values: jax.Array, valid: jax.Array,
                      delta: float | jax.Array) -> jax.Array:
    """`Q [B, A] = Σ_i w_i v_i` from gathered neighbours; differentiable in `h`, `keys` and `values`."""
    return jnp.sum(kernel_weights(h, keys, valid, delta) * values, axis=-1)


def lookup(state: DNDState, h: jax.Array, k: int, delta: float | jax.Array) -> tuple[jax.Array, Neighbours]:
    """`(Q [B, A], neighbours)` for embeddings `h [B, D]`.

    Q of an action with no entries is 0; with fewer than `k` entries, the weights are normalised
    over those there are. Differentiable in `h`, `state.keys` and `state.values` (gradients of
    a slot used by several queries are summed; see `gradient_step` for the averaged update).
    Pass the neighbours to `touch` to refresh their time stamps.
    """
    nb = neighbours(state, h, k)
    keys, values = gather(state, nb)
    return q_from_neighbours(h, keys, values, nb.valid, delta), nb


def touch(state: DNDState, indices: jax.Array, valid: jax.Array) -> DNDState:
    """Stamp the valid neighbours `[B, A, k]` (as `lookup` returns them) as used now; `time` + 1."""
    chex.assert_equal_shape([indices, valid])
    capacity = state.keys.shape[1]
    actions = jnp.broadcast_to(jnp.arange(state.keys.shape[0])[None, :, None], indices.shape)
    slots = jnp.where(valid, indices, capacity)  # out of range: dropped
    last_used = state.last_used.at[actions, slots].set(state.time, mode="drop")
    return state.replace(last_used=last_used, time=state.time + 1)


def slot_use_counts(nb: Neighbours) -> jax.Array:
    """`[B, A, k]` int32: how many queries of the batch have each neighbour's slot among their valid
    neighbours of that action (0 where not valid). A slot appears at most once per query."""
    num_b, num_a, k = nb.indices.shape
    flat = jnp.where(nb.valid, nb.indices, -1).transpose(1, 0, 2).reshape(num_a, num_b * k)
    srt = jnp.sort(flat, axis=1)
    left = jax.vmap(lambda s, x: jnp.searchsorted(s, x, side="left"))(srt, flat)
    right = jax.vmap(lambda s, x: jnp.searchsorted(s, x, side="right"))(srt, flat)
    counts = (right - left).reshape(num_a, num_b, k).transpose(1, 0, 2)
    return jnp.where(nb.valid, counts, 0).astype(jnp.int32)


def gradient_step(state: DNDState, nb: Neighbours, grad_keys: jax.Array, grad_values: jax.Array,
                  lr: float | jax.Array) -> DNDState:
    """One SGD step on the looked-up slots: `slot −= lr · mean of its gradients over the batch`.

    `grad_keys [B, A, k, D]` and `grad_values [B, A, k]` are gradients with respect to the
    gathered neighbours (`gather`'s outputs). A slot used by `n` queries gets the sum of their
    gradients divided by `n` (scatter-add, duplicates averaged); invalid neighbours are ignored.
    """
    chex.assert_shape(grad_values, nb.indices.shape)
    chex.assert_shape(grad_keys, (*nb.indices.shape, state.keys.shape[2]))
    capacity = state.keys.shape[1]
    counts = jnp.maximum(slot_use_counts(nb), 1).astype(grad_values.dtype)
    actions = jnp.broadcast_to(jnp.arange(state.keys.shape[0])[None, :, None], nb.indices.shape)
    slots = jnp.where(nb.valid, nb.indices, capacity)
    step_k = jnp.where(nb.valid[..., None], -lr * grad_keys / counts[..., None], 0.0)
    step_v = jnp.where(nb.valid, -lr * grad_values / counts, 0.0)
    keys = state.keys.at[actions, slots].add(step_k.astype(state.keys.dtype), mode="drop")
    values = state.values.at[actions, slots].add(step_v.astype(state.values.dtype), mode="drop")
    return state.replace(keys=keys, values=values)


def write(state: DNDState, h: jax.Array, actions: jax.Array, returns: jax.Array,
          alpha: float | jax.Array, match_radius: float | jax.Array,
          valid: jax.Array | None = None) -> DNDState:
    """Write `(h [B, D], actions [B], returns [B])`, item 0 first and item B−1 last (one `lax.scan`).

    For each item, in action `a`'s dictionary: if its nearest entry lies within `match_radius`
    (squared distance, `<=`; a negative radius never matches), that entry's value moves towards
    the return, `v ← v + α (G − v)`, and is stamped; otherwise the item is stored in the next
    free slot, or, when all `C` are filled, over the least recently used one (lowest
    `last_used`, ties to the lowest slot). Items see the writes of earlier items of the batch.
    `time` advances by one per item.

    `valid [B]` (bool, optional): an item where it is False is skipped, as if it were not in the
    batch (no slot changes, `time` does not advance), so a fixed-size batch can carry fewer items.
    """
    chex.assert_rank([h, actions, returns], [2, 1, 1])
    chex.assert_axis_dimension(h, 1, state.keys.shape[2])
    chex.assert_equal_shape_prefix([h, actions, returns], 1)
    capacity = state.keys.shape[1]

    if valid is None:
        valid = jnp.ones(actions.shape, jnp.bool_)
    chex.assert_shape(valid, actions.shape)

    def one(st: DNDState, item):
        x, a, g, ok = item
        keys_a = st.keys[a]
        size_a = st.size[a]
        _, idx, found = knn(x[None, :], keys_a, 1, size=size_a)
        near = idx[0, 0]
        d2 = jnp.sum(jnp.square(keys_a[near] - x))
        match = found[0, 0] & (d2 <= match_radius)
        full = size_a >= capacity
        lru = jnp.argmin(st.last_used[a]).astype(jnp.int32)
        slot = jnp.where(match, near, jnp.where(full, lru, size_a))
        old_v = st.values[a, slot]
        value = jnp.where(match, old_v + alpha * (g - old_v), g).astype(st.values.dtype)
        key = jnp.where(match, keys_a[slot], x).astype(st.keys.dtype)
        target = jnp.where(ok, slot, capacity)  # out of range for a skipped item: its sets are dropped
        st = st.replace(
            keys=st.keys.at[a, target].set(key, mode="drop"),
            values=st.values.at[a, target].set(value, mode="drop"),
            last_used=st.last_used.at[a, target].set(st.time, mode="drop"),
            size=st.size.at[a].set(jnp.where(match | full | ~ok, size_a, size_a + 1)),
            time=st.time + ok.astype(st.time.dtype),
        )
        return st, None

    state, _ = jax.lax.scan(one, state, (h.astype(state.keys.dtype), actions.astype(jnp.int32),
                                         returns.astype(state.values.dtype), valid.astype(jnp.bool_)))
    return state
