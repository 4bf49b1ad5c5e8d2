"""The compiled on-policy loop (PPO, A2C, and modules such as RND beside them).

`make_train(algo, env, loop, eval_env, modules)` returns the same interface as
`off_policy.make_train`: `init(key) -> carry`, `run(carry, num_iters) ->
(carry, logs)`, `evaluate(agent, key)`, `train(key, num_iters)`, `loop`,
`steps_per_iteration`. One iteration collects `T` vectorised env steps with
`algo.explore` inside `lax.scan`, lets each module score the rollout and learn,
then calls `algo.update(agent, rollout, key)` (the algorithm's own
`epochs x minibatches` steps). With a `MetaLearner` (e.g. meta-gradients on
γ and λ, angle_jax/meta/), every `meta.interval` iterations it first sees the
fresh rollout and the agent that collected it, and may rewrite the agent's
hyperparameters before `algo.update` learns from the same rollout. Everything
is written for one seed; the carry's `iteration` counter is shared when
vmapping over seeds (`angle_jax.core.seed_axes`), so the meta step is a real `lax.cond`
branch under vmap.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from angle_jax.core.types import Algorithm, MetaLearner, Module, ModuleOutput, Rollout
from angle_jax.envs.base import Box, Env
from angle_jax.training.evaluate import make_evaluate
from angle_jax.training.reporting import EpisodeAccumulator, nan_like


@dataclasses.dataclass(frozen=True)
class OnPolicyLoop:
    """Static loop sizes: one iteration is `rollout_length` vectorised env steps."""

    num_envs: int
    rollout_length: int
    num_iterations: int  # iterations in the whole budget


@struct.dataclass
class OnPolicyCarry:
    agent: Any
    modules: tuple
    env_state: Any
    obs: jax.Array
    key: jax.Array
    iteration: jax.Array  # learning iterations done; shared by all seeds
    meta: Any = None  # the meta learner's state, if there is one
    core: Any = None  # a recurrent policy's core state per env (Algorithm.memory)
    reset: jax.Array | None = None  # bool [num_envs]: obs starts an episode (recurrent policies)

    shared_fields = ("iteration",)


class OnPolicyTrain(NamedTuple):
    init: Callable[[jax.Array], OnPolicyCarry]
    run: Callable[[OnPolicyCarry, int], tuple[OnPolicyCarry, dict]]
    evaluate: Callable[[Any, jax.Array], jax.Array] | None
    train: Callable[[jax.Array, int], tuple[OnPolicyCarry, dict]]
    loop: OnPolicyLoop
    steps_per_iteration: int  # env steps (summed over envs) per loop iteration


def env_action_fn(env: Env) -> Callable[[jax.Array], jax.Array]:
    """Map a sampled action to what the env receives: Box actions clipped to the bounds."""
    space = env.spec.action_space
    if isinstance(space, Box):
        low, high = jnp.asarray(space.low_array()), jnp.asarray(space.high_array())
        return lambda a: jnp.clip(a, low, high)
    return lambda a: a.astype(space.dtype)


def strong_types(tree: Any) -> Any:
    """Drop weak types (e.g. from python floats in an env's reset state) so `run`'s
    output carry has exactly its input's types and chunks never recompile."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), tree)


def _pack_per_env(tree: Any, n: int):
    """`(packed, unpack)`: the leaves of `tree` that are 32-bit and batched over `n` envs,
    bit-cast to float32 and laid side by side in one `[n, K]` array, and the function that
    rebuilds `tree` from `(packed, rest)`. Carrying one array through the rollout's `scan`
    instead of many small ones spares XLA:CPU a copy kernel per leaf and step."""
    leaves, treedef = jax.tree.flatten(tree)
    packable = [jnp.ndim(x) >= 1 and x.shape[0] == n and jnp.dtype(x.dtype).itemsize == 4
                and jnp.dtype(x.dtype).kind in "fiu" for x in leaves]
    shapes = [(x.shape, x.dtype) for x in leaves]
    sizes = [int(np.prod(s[1:])) for s, _ in shapes]

    def pack(tree):
        leaves = jax.tree.leaves(tree)
        cols = [jax.lax.bitcast_convert_type(x.reshape(n, -1), jnp.float32) if x.dtype != jnp.float32
                else x.reshape(n, -1) for x, p in zip(leaves, packable) if p]
        rest = [x for x, p in zip(leaves, packable) if not p]
        packed = jnp.concatenate(cols, axis=1) if cols else jnp.zeros((n, 0), jnp.float32)
        return packed, rest

    def unpack(packed, rest):
        out, rest, i = [], list(rest), 0
        for (shape, dtype), size, p in zip(shapes, sizes, packable):
            if p:
                col = packed[:, i:i + size]
                i += size
                if dtype != jnp.float32:
                    col = jax.lax.bitcast_convert_type(col, dtype)
                out.append(col.reshape(shape))
            else:
                out.append(rest.pop(0))
        return jax.tree.unflatten(treedef, out)

    return pack, unpack


def apply_outputs(rollout: Rollout, outputs: list[ModuleOutput]) -> Rollout:
    """Add the modules' reward and advantage contributions to the rollout the algorithm sees."""
    reward, bonus = rollout.reward, rollout.advantage_bonus
    for out in outputs:
        if out.reward is not None:
            reward = reward + out.reward
        if out.advantage is not None:
            bonus = bonus + out.advantage
    return rollout.replace(reward=reward, advantage_bonus=bonus)


def collect(algo: Algorithm, env: Env, agent: Any, env_state: Any, obs: jax.Array, key: jax.Array,
            length: int, episodes: EpisodeAccumulator, step0: jax.Array, core: Any = None,
            reset: jax.Array | None = None):
    """`length` vectorised env steps with `algo.explore`; returns the rollout and the env carry.

    A recurrent policy (`algo.memory`) carries `core` and `reset` through the steps; the rollout
    keeps the reset flags and the core state at its first step, and the next core and reset
    flags are returned with the env carry."""
    to_env = env_action_fn(env)
    n = env.spec.num_envs
    memory = algo.memory
    pack, unpack = _pack_per_env((env_state, obs, core), n)

    def body(c, k):
        packed, rest, reset, stats, t = c
        env_state, obs, core = unpack(packed, rest)
        k_act, k_env = jax.random.split(k)
        if memory is None:
            action = algo.explore(agent, obs, k_act, step0 + t * n)
        else:
            action, core = algo.explore(agent, obs, core, reset, k_act, step0 + t * n)
        env_state, ts = env.step(env_state, to_env(action), k_env)
        out = (obs, action, ts.reward, ts.terminated, ts.truncated, ts.next_obs, reset)
        next_reset = None if memory is None else ts.done
        return (*pack((env_state, ts.obs, core)), next_reset, EpisodeAccumulator.add_per_env(stats, ts.info),
                t + 1), out

    (packed, rest, next_reset, stats, _), (o, a, r, term, trunc, nxt, resets) = jax.lax.scan(
        body, (*pack((env_state, obs, core)), reset, EpisodeAccumulator.per_env(n), jnp.zeros((), jnp.int32)),
        jax.random.split(key, length))
    env_state, obs, next_core = unpack(packed, rest)
    episodes = episodes.merge(stats)
    rollout = Rollout(o, a, r.astype(jnp.float32), term, trunc, nxt, jnp.zeros_like(r, jnp.float32),
                      reset=resets, core=core)
    return rollout, env_state, obs, episodes, next_core, next_reset


def make_train(algo: Algorithm, env: Env, loop: OnPolicyLoop, eval_env: Env | None = None,
               modules: tuple[Module, ...] = (), meta: MetaLearner | None = None,
               eval_sample: bool = False) -> OnPolicyTrain:
    """Build the pure functions of one on-policy run (one seed); evaluation is greedy, or samples
    the policy (`explore`) when `eval_sample`.

    `meta.update(meta_state, agent, rollout, key)` runs at iterations 0, interval,
    2·interval, ..., before the agent's update on that rollout."""
    spec = env.spec
    if spec.num_envs != loop.num_envs:
        raise ValueError(f"env has {spec.num_envs} envs, loop expects {loop.num_envs}")
    if algo.exploration is not None:
        raise ValueError("stateful exploration (Algorithm.exploration) runs only in the off-policy loop")
    if algo.observe is not None:
        raise ValueError("Algorithm.observe (a hook on every env step) runs only in the off-policy loop")
    if meta is not None and algo.memory is not None:
        raise ValueError("meta-learners and auxiliary models do not support a recurrent policy (agent.core) yet")
    steps_per_iteration = loop.rollout_length * loop.num_envs
    modules = tuple(modules)

    def init(key: jax.Array) -> OnPolicyCarry:
        k_agent, k_env, k_mod, k_carry = jax.random.split(key, 4)
        agent = algo.init(k_agent, spec)
        obs, env_state = env.reset(k_env)
        core = reset = None
        if algo.memory is not None:
            core, reset = algo.memory.initial(spec.num_envs), jnp.ones(spec.num_envs, jnp.bool_)
        mod_keys = jax.random.split(k_mod, max(1, len(modules)))
        mod_states = tuple(m.init(k, spec) for m, k in zip(modules, mod_keys))
        meta_state = None
        if meta is not None:
            k_carry, k_meta = jax.random.split(k_carry)
            meta_state = meta.init(k_meta, agent, spec)
        carry = OnPolicyCarry(agent, mod_states, env_state, obs, k_carry, jnp.zeros((), jnp.int32), meta_state,
                              core, reset)
        return strong_types(carry)

    def meta_step(carry: OnPolicyCarry, agent: Any, rollout: Rollout, key: jax.Array):
        """(meta_state, agent, metrics): the meta update every `meta.interval` iterations, else NaN metrics."""
        def run_meta():
            return meta.update(carry.meta, agent, rollout, key)

        shapes = jax.eval_shape(run_meta)[2]
        return jax.lax.cond(carry.iteration % meta.interval == 0, run_meta,
                            lambda: (carry.meta, agent, nan_like(shapes)))

    def iteration(carry: OnPolicyCarry, episodes: EpisodeAccumulator):
        key, k_roll, k_mod, k_update = jax.random.split(carry.key, 4)
        rollout, env_state, obs, episodes, core, reset = collect(
            algo, env, carry.agent, carry.env_state, carry.obs, k_roll, loop.rollout_length, episodes,
            carry.iteration * steps_per_iteration, carry.core, carry.reset)
        metrics = {}
        mod_states, outputs = [], []
        for module, state, k in zip(modules, carry.modules, jax.random.split(k_mod, max(1, len(modules)))):
            state, out = module.process(state, rollout)
            state, m_metrics = module.update(state, rollout, out, k)
            mod_states.append(state)
            outputs.append(out)
            metrics.update({f"{module.name}/{name}": v for name, v in {**out.metrics, **m_metrics}.items()})
        rollout = apply_outputs(rollout, outputs)
        agent, meta_state = carry.agent, carry.meta
        if meta is not None:
            meta_state, agent, meta_metrics = meta_step(carry, agent, rollout, jax.random.fold_in(k_update, 1))
            metrics.update(meta_metrics)
        agent, algo_metrics = algo.update(agent, rollout, k_update)
        metrics.update(algo_metrics)
        carry = OnPolicyCarry(agent, tuple(mod_states), env_state, obs, key, carry.iteration + 1, meta_state,
                              core, reset)
        return carry, episodes, metrics

    def run(carry: OnPolicyCarry, num_iters: int) -> tuple[OnPolicyCarry, dict]:
        """Advance `num_iters` learning iterations; return the chunk's summary."""
        def body(c, _):
            carry, episodes = c
            carry, episodes, metrics = iteration(carry, episodes)
            return (carry, episodes), metrics

        (carry, episodes), metrics = jax.lax.scan(body, (carry, EpisodeAccumulator.zeros()), None,
                                                  length=num_iters)
        logs = dict(episodes.summary())
        # meta metrics are NaN on iterations without a meta step
        logs.update({k: (jnp.nanmean if k.startswith("meta/") else jnp.mean)(v) for k, v in metrics.items()})
        return carry, logs

    evaluate = make_evaluate(algo, eval_env, eval_sample) if eval_env is not None else None

    def train(key: jax.Array, num_iters: int = loop.num_iterations):
        return run(init(key), num_iters)

    return OnPolicyTrain(init, run, evaluate, train, loop, steps_per_iteration)
