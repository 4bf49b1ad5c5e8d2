"""The compiled off-policy collect-learn loop.

`make_train(algo, env, config)` returns pure functions: `init(key) -> carry`,
`run(carry, num_iters) -> (carry, logs)` (one `lax.scan` over vectorised env
steps: explore, env step, replay add, and every `train_frequency` steps
`gradient_steps` x (sample, update)), `evaluate(agent, key)` and
`train(key)` for the whole budget in one call (the PureJaxRL shape).
An algorithm with stateful exploration (`Algorithm.exploration`) has its
state carried along and reset per env when that env's episode ends. A recurrent
algorithm (`Algorithm.memory`) has its core state carried per env, reset where an
episode starts, and stored with every step (`SequenceStep`) for its sequence replay.
An algorithm that watches the stream of steps (`Algorithm.observe`, e.g. NEC writing its
dictionary) sees each vectorised step's `Transition` after the env step, before the replay add;
its key is drawn from the step's learning key, so algorithms without it run the same program.
A recurrent algorithm's `observe(state, step, next_obs, key) -> (state, step)` sees the
`SequenceStep` and the true successor and returns the step its replay stores (e.g. Agent57
tagging it with its policy index and intrinsic reward).
Everything is written for one seed; `angle_jax.core.seed_axes` says how to
`vmap` a carry over seeds while the step counters stay shared. Key splits and
replay indices are computed once as the algorithm's kernels say
(`Algorithm.kernels`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.types import Algorithm, MetaLearner, SequenceStep, Transition
from angle_jax.envs.base import Env, random_actions
from angle_jax.replay.buffer import uniform_replay
from angle_jax.training.evaluate import make_evaluate
from angle_jax.training.reporting import EpisodeAccumulator, nan_like


@dataclasses.dataclass(frozen=True)
class OffPolicyLoop:
    """Static loop sizes, all in vectorised env steps ("iterations") except where named."""

    num_envs: int
    capacity_per_env: int
    batch_size: int
    learning_starts_iters: int
    train_frequency: int
    gradient_steps: int


@struct.dataclass
class OffPolicyCarry:
    agent: Any
    buffer: Any  # the replay's state: BufferState, or the state of an algorithm-supplied buffer
    env_state: Any
    obs: jax.Array
    key: jax.Array
    iteration: jax.Array  # vectorised env steps done; shared by all seeds
    meta: Any = None
    explore: Any = None  # the algorithm's exploration state, when it has one (Algorithm.exploration)
    core: Any = None  # a recurrent policy's core state per env (Algorithm.memory)
    reset: jax.Array | None = None  # bool [num_envs]: obs starts an episode (recurrent policies)

    shared_fields = ("iteration",)


class OffPolicyTrain(NamedTuple):
    init: Callable[[jax.Array], OffPolicyCarry]
    run: Callable[[OffPolicyCarry, int], tuple[OffPolicyCarry, dict]]
    evaluate: Callable[[Any, jax.Array], jax.Array]
    train: Callable[[jax.Array, int], tuple[OffPolicyCarry, dict]]
    loop: OffPolicyLoop
    steps_per_iteration: int  # env steps (summed over envs) per loop iteration


def reset_where(reset: jax.Array, initial: Any, core: Any) -> Any:
    """`core` with the envs where `reset` is true set to `initial` (leaves `[num_envs, ...]`)."""
    def one(i, c):
        return jnp.where(reset.reshape(reset.shape + (1,) * (c.ndim - 1)), i, c)

    return jax.tree.map(one, initial, core)


def make_train(algo: Algorithm, env: Env, loop: OffPolicyLoop, eval_env: Env | None = None,
               meta: MetaLearner | None = None, eval_sample: bool = False) -> OffPolicyTrain:
    """Build the pure functions of one off-policy run (one seed); evaluation is greedy, or acts
    with `explore` when `eval_sample`."""
    spec = env.spec
    if spec.num_envs != loop.num_envs:
        raise ValueError(f"env has {spec.num_envs} envs, loop expects {loop.num_envs}")
    if algo.make_buffer is not None:
        buffer = algo.make_buffer(loop)
    else:
        buffer = uniform_replay(loop.capacity_per_env, loop.batch_size, kernels=algo.kernels)
    split_keys = algo.kernels.split
    feeds_priorities = buffer.update_priorities is not None
    exploration = algo.exploration
    memory = algo.memory
    if memory is not None:
        if exploration is not None:
            raise ValueError("a recurrent algorithm cannot also have stateful exploration")
        if meta is not None:
            raise ValueError("meta-learners and auxiliary models take transitions; recurrent algorithms "
                             "(agent.core / r2d2) learn from sequences and do not support them yet")
        if algo.make_buffer is None:
            raise ValueError("a recurrent algorithm must supply its sequence replay (Algorithm.make_buffer)")
    observe = algo.observe

    def init(key: jax.Array) -> OffPolicyCarry:
        k_agent, k_env, k_carry = jax.random.split(key, 3)
        agent = algo.init(k_agent, spec)
        obs, env_state = env.reset(k_env)
        action = random_actions(spec, k_env)
        reward, flag = jnp.zeros(spec.num_envs, jnp.float32), jnp.zeros(spec.num_envs, jnp.bool_)
        core = reset = None
        if memory is None:
            example = Transition(obs, action, reward, flag, flag, obs)
        else:
            core, reset = memory.initial(spec.num_envs), jnp.ones(spec.num_envs, jnp.bool_)
            example = SequenceStep(obs, action, reward, flag, flag, reset, core)
            if observe is not None:  # the replay stores the steps as observe returns them
                shapes = jax.eval_shape(observe, agent, example, obs, k_carry)[1]
                example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        meta_state = None
        if meta is not None:
            k_carry, k_meta = jax.random.split(k_carry)
            meta_state = meta.init(k_meta, agent, spec)
        explore_state = None
        if exploration is not None:
            k_carry, k_explore = jax.random.split(k_carry)
            explore_state = exploration.init(k_explore, spec)
        return OffPolicyCarry(agent, buffer.init(example), env_state, obs, k_carry,
                              jnp.zeros((), jnp.int32), meta_state, explore_state, core, reset)

    def learn(agent, buffer_state, key):
        def one(c, k):
            agent, buffer_state = c
            k_sample, k_update = split_keys(k)
            batch = buffer.sample(buffer_state, k_sample)
            agent, metrics = algo.update(agent, batch, k_update)
            priorities = metrics.pop("priorities", None)
            if feeds_priorities and priorities is not None:
                buffer_state = buffer.update_priorities(buffer_state, batch, priorities)
            return (agent, buffer_state), metrics

        keys = jax.random.split(key, loop.gradient_steps)
        if loop.gradient_steps == 1:
            return one((agent, buffer_state), keys[0])
        (agent, buffer_state), metrics = jax.lax.scan(one, (agent, buffer_state), keys)
        return (agent, buffer_state), jax.tree.map(jnp.mean, metrics)

    def step(carry: OffPolicyCarry, episodes: EpisodeAccumulator, metric_shapes):
        key, k_act, k_env, k_learn = split_keys(carry.key, 4)
        warmup = carry.iteration < loop.learning_starts_iters
        explore_state = carry.explore
        core = carry.core
        if memory is not None:
            # the core advances in warm-up too, so every stored state is the one the network computed
            used = reset_where(carry.reset, memory.initial(spec.num_envs), carry.core)
            net_action, core = algo.explore(carry.agent, carry.obs, used, carry.reset, k_act,
                                            carry.iteration * loop.num_envs)
            action = jnp.where(warmup, random_actions(spec, k_act), net_action.astype(spec.action_space.dtype))
        elif exploration is None:
            action = jax.lax.cond(
                warmup,
                lambda: random_actions(spec, k_act),
                lambda: algo.explore(carry.agent, carry.obs, k_act, carry.iteration * loop.num_envs).astype(
                    spec.action_space.dtype),
            )
        else:
            def explore_with_state():
                action, state = exploration.explore(carry.agent, carry.explore, carry.obs, k_act,
                                                    carry.iteration * loop.num_envs)
                return action.astype(spec.action_space.dtype), state

            # warm-up acts at random and leaves the exploration state as it is
            action, explore_state = jax.lax.cond(
                warmup, lambda: (random_actions(spec, k_act), carry.explore), explore_with_state)
        env_state, ts = env.step(carry.env_state, action, k_env)
        if exploration is not None and exploration.reset is not None:
            explore_state = exploration.reset(explore_state, ts.done)
        agent = carry.agent
        if memory is None:
            item = Transition(carry.obs, action, ts.reward, ts.terminated, ts.truncated, ts.next_obs)
            if observe is not None:
                agent = observe(agent, item, jax.random.fold_in(k_learn, 2))
        else:
            item = SequenceStep(carry.obs, action, ts.reward, ts.terminated, ts.truncated, carry.reset, used)
            if observe is not None:
                agent, item = observe(agent, item, ts.next_obs, jax.random.fold_in(k_learn, 2))
        buffer_state = buffer.add(carry.buffer, item)
        should_learn = jnp.logical_and(
            jnp.logical_not(warmup), carry.iteration % loop.train_frequency == 0)
        (agent, buffer_state), metrics = jax.lax.cond(
            should_learn,
            lambda: learn(agent, buffer_state, k_learn),
            lambda: ((agent, buffer_state), nan_like(metric_shapes)),
        )
        meta_state = carry.meta
        if meta is not None:
            learn_iteration = (carry.iteration - loop.learning_starts_iters) // loop.train_frequency
            do_meta = jnp.logical_and(should_learn, learn_iteration % meta.interval == 0)

            def run_meta():
                k_sample, k_meta = jax.random.split(jax.random.fold_in(k_learn, 1))
                batch = buffer.sample(buffer_state, k_sample)
                return meta.update(carry.meta, agent, batch, k_meta)

            meta_shapes = jax.eval_shape(run_meta)[2]
            meta_state, agent, meta_metrics = jax.lax.cond(
                do_meta, run_meta,
                lambda: (carry.meta, agent, nan_like(meta_shapes)))
            metrics = {**metrics, **meta_metrics}
        carry = OffPolicyCarry(agent, buffer_state, env_state, ts.obs, key, carry.iteration + 1, meta_state,
                               explore_state, core, None if memory is None else ts.done)
        return carry, episodes.add(ts.info), metrics

    def run(carry: OffPolicyCarry, num_iters: int) -> tuple[OffPolicyCarry, dict]:
        """Advance `num_iters` vectorised env steps; return the chunk's summary."""
        batch = jax.eval_shape(lambda: buffer.sample(carry.buffer, carry.key))
        _, metric_shapes = jax.eval_shape(algo.update, carry.agent, batch, carry.key)
        metric_shapes = {k: v for k, v in metric_shapes.items() if k != "priorities"}

        def body(c, _):
            carry, episodes = c
            carry, episodes, metrics = step(carry, episodes, metric_shapes)
            return (carry, episodes), metrics

        (carry, episodes), metrics = jax.lax.scan(body, (carry, EpisodeAccumulator.zeros()), None, length=num_iters)
        logs = dict(episodes.summary())
        logs.update({k: jnp.nanmean(v) for k, v in metrics.items()})
        if hasattr(carry.buffer, "dropped"):  # frame-deduplicated sequence replay: rows it could not rebuild
            logs["replay_dropped"] = carry.buffer.dropped
        return carry, logs

    evaluate = make_evaluate(algo, eval_env, eval_sample) if eval_env is not None else None

    def train(key: jax.Array, num_iters: int):
        return run(init(key), num_iters)

    return OffPolicyTrain(init, run, evaluate, train, loop, loop.num_envs)
