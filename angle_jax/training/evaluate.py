"""Deterministic evaluation of an agent on a batched eval env, as one compiled scan."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from angle_jax.core.types import Algorithm
from angle_jax.envs.base import Env


def make_evaluate(algo: Algorithm, eval_env: Env) -> Callable[[Any, jax.Array], jax.Array]:
    """Deterministic evaluation: one episode per eval env, returns `[num_envs]` episode returns.

    A recurrent policy (`algo.memory`) starts every env from its initial core state and
    carries it through the episode."""
    horizon = eval_env.spec.max_episode_steps
    memory = algo.memory

    def evaluate(agent: Any, key: jax.Array) -> jax.Array:
        k_reset, k_steps = jax.random.split(key)
        obs, env_state = eval_env.reset(k_reset)
        n = eval_env.spec.num_envs

        def body(c, k):
            env_state, obs, total, alive, core, reset = c
            if memory is None:
                action = algo.act(agent, obs)
            else:
                action, core = algo.act(agent, obs, core, reset)
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
