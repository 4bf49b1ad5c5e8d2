"""The compiled off-policy collect-learn loop.

`make_train(algo, env, config)` returns pure functions: `init(key) -> carry`,
`run(carry, num_iters) -> (carry, logs)` (one `lax.scan` over vectorised env
steps: explore, env step, replay add, and every `train_frequency` steps
`gradient_steps` x (sample, update)), `evaluate(agent, key)` and
`train(key)` for the whole budget in one call (the PureJaxRL shape).
An algorithm with stateful exploration (`Algorithm.exploration`) has its
state carried along and reset per env when that env's episode ends.
Everything is written for one seed; `seed_axes` says how to `vmap` a carry
over seeds while the step counters stay shared.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.base import Algorithm, Transition
from angle_jax.envs.base import Env, random_actions
from angle_jax.replay.buffer import BufferState, uniform_replay
from angle_jax.training.axes import seed_axes
from angle_jax.xla_cpu import split_keys


@dataclasses.dataclass(frozen=True)
class OffPolicyLoop:
    """Static loop sizes, all in vectorised env steps ("iterations") except where named."""

    num_envs: int
    capacity_per_env: int
    batch_size: int
    learning_starts_iters: int
    train_frequency: int
    gradient_steps: int


def loop_from_config(cfg) -> OffPolicyLoop:
    """Translate a run config (budget in env steps) into loop sizes in iterations."""
    return OffPolicyLoop(
        num_envs=cfg.num_envs,
        capacity_per_env=max(1, cfg.buffer_size // cfg.num_envs),
        batch_size=cfg.batch_size,
        learning_starts_iters=math.ceil(cfg.learning_starts / cfg.num_envs),
        train_frequency=cfg.train_frequency,
        gradient_steps=cfg.gradient_steps,
    )


class MetaLearner(NamedTuple):
    """A learner that runs beside the algorithm every `interval` learning iterations.

    init(key, agent_state, spec) -> meta_state
    update(meta_state, agent_state, batch, key) -> (meta_state, agent_state, metrics)
    `update` may change the agent state (e.g. meta-learned hyperparameters). In the
    off-policy loop it sees a replay batch drawn for it alone; in the on-policy loop
    (training/on_policy.py), the fresh rollout, before the agent learns from it.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, Any, dict]]
    interval: int


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

    shared_fields = ("iteration",)


@struct.dataclass
class EpisodeAccumulator:
    """Running sums over the episodes that end within one chunk."""

    count: jax.Array
    return_sum: jax.Array
    return_min: jax.Array
    return_max: jax.Array
    length_sum: jax.Array

    @classmethod
    def zeros(cls):
        f = jnp.zeros((), jnp.float32)
        return cls(f, f, jnp.full((), jnp.inf), jnp.full((), -jnp.inf), f)

    def add(self, info: dict) -> "EpisodeAccumulator":
        done = info["episode_done"]
        ret = info["episode_return"]
        return EpisodeAccumulator(
            self.count + jnp.sum(done),
            self.return_sum + jnp.sum(jnp.where(done, ret, 0.0)),
            jnp.minimum(self.return_min, jnp.min(jnp.where(done, ret, jnp.inf))),
            jnp.maximum(self.return_max, jnp.max(jnp.where(done, ret, -jnp.inf))),
            self.length_sum + jnp.sum(jnp.where(done, info["episode_length"], 0)),
        )

    @staticmethod
    def per_env(num_envs: int) -> jax.Array:
        """Running statistics kept per env, `[5, num_envs]` with rows in field order: updated by
        `add_per_env` in one fused kernel per step (instead of `add`'s five reductions), folded
        into an accumulator by `merge` when a rollout ends."""
        zero = jnp.zeros((num_envs,), jnp.float32)
        return jnp.stack([zero, zero, zero + jnp.inf, zero - jnp.inf, zero])

    @staticmethod
    def add_per_env(stats: jax.Array, info: dict) -> jax.Array:
        done = info["episode_done"]
        ret = info["episode_return"].astype(jnp.float32)
        return jnp.stack([
            stats[0] + done.astype(jnp.float32),
            stats[1] + jnp.where(done, ret, 0.0),
            jnp.minimum(stats[2], jnp.where(done, ret, jnp.inf)),
            jnp.maximum(stats[3], jnp.where(done, ret, -jnp.inf)),
            stats[4] + jnp.where(done, info["episode_length"], 0).astype(jnp.float32),
        ])

    def merge(self, stats: jax.Array) -> "EpisodeAccumulator":
        """Add the episodes of per-env statistics (`per_env`, `add_per_env`)."""
        return EpisodeAccumulator(
            self.count + jnp.sum(stats[0]),
            self.return_sum + jnp.sum(stats[1]),
            jnp.minimum(self.return_min, jnp.min(stats[2])),
            jnp.maximum(self.return_max, jnp.max(stats[3])),
            self.length_sum + jnp.sum(stats[4]),
        )

    def summary(self) -> dict:
        n = jnp.maximum(self.count, 1.0)
        nan = jnp.full((), jnp.nan)
        has = self.count > 0
        return {
            "episodes": self.count,
            "episode_return_mean": jnp.where(has, self.return_sum / n, nan),
            "episode_return_min": jnp.where(has, self.return_min, nan),
            "episode_return_max": jnp.where(has, self.return_max, nan),
            "episode_length_mean": jnp.where(has, self.length_sum / n, nan),
        }


class OffPolicyTrain(NamedTuple):
    init: Callable[[jax.Array], OffPolicyCarry]
    run: Callable[[OffPolicyCarry, int], tuple[OffPolicyCarry, dict]]
    evaluate: Callable[[Any, jax.Array], jax.Array]
    train: Callable[[jax.Array, int], tuple[OffPolicyCarry, dict]]
    loop: OffPolicyLoop
    steps_per_iteration: int  # env steps (summed over envs) per loop iteration


def make_evaluate(algo: Algorithm, eval_env: Env) -> Callable[[Any, jax.Array], jax.Array]:
    """Deterministic evaluation: one episode per eval env, returns `[num_envs]` episode returns."""
    horizon = eval_env.spec.max_episode_steps

    def evaluate(agent: Any, key: jax.Array) -> jax.Array:
        k_reset, k_steps = jax.random.split(key)
        obs, env_state = eval_env.reset(k_reset)
        n = eval_env.spec.num_envs

        def body(c, k):
            env_state, obs, total, alive = c
            env_state, ts = eval_env.step(env_state, algo.act(agent, obs), k)
            reward = ts.info.get("raw_reward", ts.reward)
            total = total + jnp.where(alive, reward, 0.0)
            alive = jnp.logical_and(alive, jnp.logical_not(ts.info.get("episode_end", ts.done)))
            return (env_state, ts.obs, total, alive), None

        init = (env_state, obs, jnp.zeros(n, jnp.float32), jnp.ones(n, jnp.bool_))
        (_, _, total, _), _ = jax.lax.scan(body, init, jax.random.split(k_steps, horizon))
        return total

    return evaluate


def make_train(algo: Algorithm, env: Env, loop: OffPolicyLoop, eval_env: Env | None = None,
               meta: MetaLearner | None = None) -> OffPolicyTrain:
    """Build the pure functions of one off-policy run (one seed)."""
    spec = env.spec
    if spec.num_envs != loop.num_envs:
        raise ValueError(f"env has {spec.num_envs} envs, loop expects {loop.num_envs}")
    if algo.make_buffer is not None:
        buffer = algo.make_buffer(loop)
    else:
        buffer = uniform_replay(loop.capacity_per_env, loop.batch_size)
    feeds_priorities = buffer.update_priorities is not None
    exploration = algo.exploration

    def init(key: jax.Array) -> OffPolicyCarry:
        k_agent, k_env, k_carry = jax.random.split(key, 3)
        agent = algo.init(k_agent, spec)
        obs, env_state = env.reset(k_env)
        action = random_actions(spec, k_env)
        example = Transition(obs, action, jnp.zeros(spec.num_envs, jnp.float32),
                             jnp.zeros(spec.num_envs, jnp.bool_), jnp.zeros(spec.num_envs, jnp.bool_), obs)
        meta_state = None
        if meta is not None:
            k_carry, k_meta = jax.random.split(k_carry)
            meta_state = meta.init(k_meta, agent, spec)
        explore_state = None
        if exploration is not None:
            k_carry, k_explore = jax.random.split(k_carry)
            explore_state = exploration.init(k_explore, spec)
        return OffPolicyCarry(agent, buffer.init(example), env_state, obs, k_carry,
                              jnp.zeros((), jnp.int32), meta_state, explore_state)

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
        if exploration is None:
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
        buffer_state = buffer.add(
            carry.buffer, Transition(carry.obs, action, ts.reward, ts.terminated, ts.truncated, ts.next_obs))
        should_learn = jnp.logical_and(
            jnp.logical_not(warmup), carry.iteration % loop.train_frequency == 0)
        (agent, buffer_state), metrics = jax.lax.cond(
            should_learn,
            lambda: learn(carry.agent, buffer_state, k_learn),
            lambda: ((carry.agent, buffer_state),
                     jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), metric_shapes)),
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
                lambda: (carry.meta, agent, jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), meta_shapes)))
            metrics = {**metrics, **meta_metrics}
        carry = OffPolicyCarry(agent, buffer_state, env_state, ts.obs, key, carry.iteration + 1, meta_state,
                               explore_state)
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
        return carry, logs

    evaluate = make_evaluate(algo, eval_env) if eval_env is not None else None

    def train(key: jax.Array, num_iters: int):
        return run(init(key), num_iters)

    return OffPolicyTrain(init, run, evaluate, train, loop, loop.num_envs)
