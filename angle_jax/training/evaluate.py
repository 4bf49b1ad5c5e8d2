"""Deterministic evaluation of an agent on a batched eval env, as one compiled scan."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from angle_jax.core.types import Algorithm
from angle_jax.envs.base import Env


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
