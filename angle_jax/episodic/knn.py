"""Exact k-nearest neighbours over a fixed-size key array: the one routine both episodic memories use.

Squared Euclidean distances of all queries to all keys come from one matmul,
`‖q‖² − 2 q Kᵀ + ‖K‖²` (clamped at 0: the expansion can round slightly below it), so the cost
is a `[B, D] x [D, C]` product plus one `lax.top_k` over `C`. Slots that hold no entry (index
≥ `size`, or False in an explicit `mask`) get distance +inf and are chosen only when fewer than
`k` real entries exist; they come back with `valid` False.

Ties: `lax.top_k` puts the lower index first among equal values, so among keys at the same
distance the lowest slot index is the nearer neighbour, and unused slots (all at +inf) fill the
remaining places in increasing index order.

The search is brute force: every lookup reads all `C` keys, so its cost grows linearly with `C`
(benchmarks/bench_dnd.py). `lax.top_k` over all `C` is not the bottleneck (the distance
product is); a two-stage top-k over blocks of keys measured slower on XLA:CPU, so there is none.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def squared_distances(queries: jax.Array, keys: jax.Array) -> jax.Array:
    """`[B, C]` squared distances of `queries [B, D]` to `keys [C, D]` by one matmul, clamped at 0.

    The expansion loses relative precision for points much closer to each other than to the
    origin (cancellation); callers that need exact small distances recompute them from the
    gathered keys (the DND does, for its kernel and gradients).
    """
    chex.assert_rank([queries, keys], 2)
    chex.assert_equal_shape_suffix([queries, keys], 1)
    q = queries.astype(jnp.float32)
    c = keys.astype(jnp.float32)
    # keys-major product [C, B], then one transpose: under vmap (one key set per action) XLA:CPU
    # runs this form 4x faster than the batched [B, D] x [D, C] product (benchmarks/bench_dnd.py)
    cross = c @ q.T
    d2 = jnp.sum(c * c, axis=1)[:, None] - 2.0 * cross + jnp.sum(q * q, axis=1)[None, :]
    return jnp.maximum(d2, 0.0).T


def knn(queries: jax.Array, keys: jax.Array, k: int, size: jax.Array | int | None = None,
        mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The `k` nearest stored keys of each query, exactly.

    queries `[B, D]`, keys `[C, D]`; the stored entries are slots `[0, size)` (`size` may be
    traced) and, with `mask [C]`, only those where it is True (both may be given: an entry must
    pass both; neither: every slot is an entry). `k` is static, `1 <= k <= C`.

    Returns `(d2 [B, k] float32, indices [B, k] int32, valid [B, k] bool)`, nearest first:
    squared distances (+inf where not valid), slot indices, and whether the neighbour is a real
    entry (with fewer than `k` entries the last places are not). Ties go to the lower index.
    """
    chex.assert_rank([queries, keys], 2)
    chex.assert_equal_shape_suffix([queries, keys], 1)
    capacity = keys.shape[0]
    if not 1 <= k <= capacity:
        raise ValueError(f"k must be in [1, {capacity}] (the number of key slots), got {k}")
    entry = jnp.ones((capacity,), jnp.bool_)
    if size is not None:
        entry = entry & (jnp.arange(capacity) < size)
    if mask is not None:
        chex.assert_shape(mask, (capacity,))
        entry = entry & mask.astype(jnp.bool_)
    d2 = jnp.where(entry[None, :], squared_distances(queries, keys), jnp.inf)
    neg, indices = jax.lax.top_k(-d2, k)
    return -neg, indices.astype(jnp.int32), entry[indices]
