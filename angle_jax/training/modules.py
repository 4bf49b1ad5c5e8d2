"""The rollout an on-policy iteration collects, and the protocol of modules that ride along.

A module (e.g. RND curiosity) is a learner with its own state that the
on-policy loop runs beside the algorithm, chosen by configuration
(`RunConfig.modules`, settings in `RunConfig.module_kwargs[name]`). Per
iteration the loop calls

    state, out = module.process(state, rollout)        # what it reads: `module.needs`
    state, metrics = module.update(state, rollout, out, key)   # the losses it adds

`out.reward` (if not None) is added to the rewards the algorithm learns from;
`out.advantage` (if not None) is added to the algorithm's advantages through
`Rollout.advantage_bonus`. The algorithm sees only a `Rollout`; the module sees
only the `Rollout` and its own state. Neither imports the other.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.base import Transition


@struct.dataclass
class Rollout(Transition):
    """`T` vectorised env steps, leaves `[T, num_envs, ...]`: the `Transition` fields
    plus `advantage_bonus`.

    `action` is the action as sampled by the policy (before any clipping to the
    env bounds); `next_obs` is the true successor (pre-reset), so truncated
    steps can bootstrap from it. `advantage_bonus` is added to the
    algorithm's own advantages (zero unless a module contributes).
    """

    advantage_bonus: jax.Array


@struct.dataclass
class ModuleOutput:
    """What a module contributes for one rollout; `data` (leaves `[T, N, ...]`) is its own."""

    reward: jax.Array | None = None
    advantage: jax.Array | None = None
    data: Any = None
    metrics: dict = struct.field(default_factory=dict)


class Module(NamedTuple):
    """A learner run beside an on-policy algorithm.

    init(key, spec) -> state
    process(state, rollout) -> (state, ModuleOutput)   reward / advantage it contributes
    update(state, rollout, output, key) -> (state, metrics)   trains on its own losses
    needs: the Rollout fields `process` and `update` read.
    """

    name: str
    init: Callable[..., Any]
    process: Callable[..., tuple[Any, ModuleOutput]]
    update: Callable[..., tuple[Any, dict]]
    needs: tuple[str, ...] = ()
    config: Any = None


# name -> python module exposing `Config` and `make_module(config, spec) -> Module`
MODULES: dict[str, str] = {
    "rnd": "angle_jax.algos.rnd",
}


def module_names() -> list[str]:
    return sorted(MODULES)


def make_module(name: str, spec, kwargs: dict | None = None) -> Module:
    """Build module `name` from a dict of its settings; unknown names or keys raise ValueError."""
    if name not in MODULES:
        raise ValueError(f"unknown module {name!r} (valid: {', '.join(module_names())})")
    source = importlib.import_module(MODULES[name])
    kwargs = dict(kwargs or {})
    valid = [f.name for f in dataclasses.fields(source.Config)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for module {name!r} (valid: {', '.join(valid)})")
    config = source.Config(**kwargs)
    config.validate()
    return source.make_module(config, spec)


def make_modules(names, module_kwargs: dict | None, spec) -> tuple[Module, ...]:
    module_kwargs = dict(module_kwargs or {})
    names = tuple(names)
    stray = sorted(set(module_kwargs) - set(names))
    if stray:
        raise ValueError(f"module_kwargs given for module(s) {stray} that are not in modules {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"modules listed twice: {list(names)}")
    return tuple(make_module(n, spec, module_kwargs.get(n)) for n in names)


def apply_outputs(rollout: Rollout, outputs) -> Rollout:
    """Add the modules' reward and advantage contributions to the rollout the algorithm sees."""
    reward, bonus = rollout.reward, rollout.advantage_bonus
    for out in outputs:
        if out.reward is not None:
            reward = reward + out.reward
        if out.advantage is not None:
            bonus = bonus + out.advantage
    return rollout.replace(reward=reward, advantage_bonus=bonus)


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


# ---- estimators shared by algorithms and modules -----------------------------------

def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
        truncated: jax.Array, gamma: jax.Array, gae_lambda: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a time-major trajectory `[T, ...]`.

    `values[t] = V(obs_t)`, `next_values[t] = V(next_obs_t)` of the true
    successor (pre-reset). Termination stops the bootstrap (δ uses 0 for the
    next value); truncation bootstraps from the true final observation's value.
    Either ends the recursion so advantages never leak across episodes.
    Returns `(advantages, returns = advantages + values)`.
    """
    chex.assert_equal_shape([rewards, values, next_values, terminated, truncated])
    chex.assert_rank(rewards, {1, 2})
    not_term = 1.0 - terminated.astype(jnp.float32)
    cont = not_term * (1.0 - truncated.astype(jnp.float32))
    deltas = rewards + gamma * not_term * next_values - values

    def back(next_adv, xs):
        delta, c = xs
        adv = delta + gamma * gae_lambda * c * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(back, jnp.zeros_like(rewards[0]), (deltas, cont), reverse=True)
    return advantages, advantages + values
