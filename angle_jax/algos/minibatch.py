"""On-policy minibatching: a rollout `[T, N, ...]` flattened into samples, shuffled into
minibatches, and `epochs x minibatches` update steps in one `lax.scan`."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp


def flatten_steps(tree: Any) -> Any:
    """Merge the leading `[T, N]` axes of every leaf into one."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def permutations(key: jax.Array, num: int, size: int) -> jax.Array:
    """`num` independent uniformly random permutations of `range(size)`, int32 `[num, size]`.

    Like `jax.random.permutation` (sort by random keys), but each sort has one operand:
    the random bits with the index packed into the low bits. XLA:CPU sorts a single
    operand with a plain comparison, about 5x faster than the key-value sort behind
    `jax.random.permutation`. Keys are unique by construction; ties of the random part
    would leave those indices in order, so as many rounds are composed as JAX's own
    shuffle uses for the same tie risk (2 for a few hundred samples).
    """
    idx_bits = max(1, (size - 1).bit_length())
    rnd_bits = 32 - idx_bits
    if rnd_bits < 12:  # huge batches: too few random bits left; fall back to the key-value sort
        return jax.vmap(lambda k: jax.random.permutation(k, size))(jax.random.split(key, num)).astype(jnp.int32)
    rounds = max(1, math.ceil(3 * math.log2(size) / rnd_bits))
    iota = jnp.arange(size, dtype=jnp.uint32)
    low = jnp.uint32((1 << idx_bits) - 1)
    perm = None
    for k in jax.random.split(key, rounds):
        bits = jax.random.bits(k, (num, size), jnp.uint32)
        order = (jnp.sort((bits & ~low) | iota, axis=-1) & low).astype(jnp.int32)
        perm = order if perm is None else jnp.take_along_axis(perm, order, axis=-1)
    return perm


def minibatch_updates(step_fn: Callable, state: Any, data: Any, key: jax.Array,
                      epochs: int, minibatches: int) -> tuple[Any, dict]:
    """`epochs` passes over `data` (leaves `[B, ...]`) in `minibatches` shuffled slices.

    One random permutation per epoch (`permutations`, drawn for all epochs at once);
    `step_fn(state, minibatch, key) -> (state, metrics)`. Returns metrics averaged over
    all updates.
    """
    size = jax.tree.leaves(data)[0].shape[0]
    if size % minibatches:
        raise ValueError(f"batch of {size} samples does not split into {minibatches} minibatches")
    mb = size // minibatches
    k_perm, k_steps = jax.random.split(key)
    perms = permutations(k_perm, epochs, size)

    def epoch(state, xs):
        perm, k = xs
        shuffled = jax.tree.map(lambda x: jnp.take(x, perm, axis=0).reshape(minibatches, mb, *x.shape[1:]), data)
        return jax.lax.scan(lambda s, xs: step_fn(s, xs[0], xs[1]), state,
                            (shuffled, jax.random.split(k, minibatches)))

    state, metrics = jax.lax.scan(epoch, state, (perms, jax.random.split(k_steps, epochs)))
    return state, jax.tree.map(jnp.mean, metrics)
