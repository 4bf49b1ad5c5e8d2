"""Evaluation of an agent on a batched eval env, as one compiled scan: one episode per eval env.

Greedy by default (`act`: the deterministic policy); `sample=True` acts with `explore`, the
policy's sampled actions (PPO/A2C/SAC sample their distribution, TD3/DDPG add their action noise,
DQN-family agents act ε-greedily with the ε at the end of their schedule)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from angle_jax.core.types import Algorithm
from angle_jax.envs.base import Env


# the env step given to `explore` in sampled evaluation: past the end of every schedule
_SCHEDULE_END = 2**30


def make_evaluate(algo: Algorithm, eval_env: Env, sample: bool = False) -> Callable[[Any, jax.Array], jax.Array]:
    """Evaluation: one episode per eval env, returns `[num_envs]` episode returns. The same key
    gives the same episodes (env starts and env randomness) whatever the agent.

    A recurrent policy (`algo.memory`) starts every env from its initial core state and
    carries it through the episode."""
    horizon = eval_env.spec.max_episode_steps
    memory = algo.memory

    def policy(agent, obs, core, reset, k_step):
        if not sample:
            return (algo.act(agent, obs), core) if memory is None else algo.act(agent, obs, core, reset)
        key = jax.random.fold_in(k_step, 1)  # the env step keeps `k_step` itself, as in greedy evaluation
        if memory is None:
            return algo.explore(agent, obs, key, _SCHEDULE_END), core
        return algo.explore(agent, obs, core, reset, key, _SCHEDULE_END)

    def evaluate(agent: Any, key: jax.Array) -> jax.Array:
        k_reset, k_steps = jax.random.split(key)
        obs, env_state = eval_env.reset(k_reset)
        n = eval_env.spec.num_envs

        def body(c, k):
            env_state, obs, total, alive, core, reset = c
            action, core = policy(agent, obs, core, reset, k)
            env_state, ts = eval_env.step(env_state, action, k)
            reset = ts.done
            reward = ts.info.get("raw_reward", ts.reward)
            total = total + jnp.where(alive, reward, 0.0)
            alive = jnp.logical_and(alive, jnp.logical_not(ts.info.get("episode_end", ts.done)))
            return (env_state, ts.obs, total, alive, core, reset), None

        core = None if memory is None else memory.initial(n)
        init = (env_state, obs, jnp.zeros(n, jnp.float32), jnp.ones(n, jnp.bool_), core, jnp.ones(n, jnp.bool_))
        (_, _, total, _, _, _), _ = jax.lax.scan(body, init, jax.random.split(k_steps, horizon))
        return total

    return evaluate
