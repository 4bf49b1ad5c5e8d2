"""Wrappers that add a capability to any env that follows the batched protocol."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from angle_jax.envs.base import Box, Env, EnvSpec, TimeStep
import dataclasses


class Wrapper(Env):
    """Forwards everything to `env`; subclasses override what they change."""

    def __init__(self, env: Env):
        self.env = env
        self.spec = env.spec

    def reset(self, key):
        return self.env.reset(key)

    def step(self, state, action, key):
        return self.env.step(state, action, key)

    def render(self, state, index: int = 0):
        return self.env.render(self.inner_state(state), index)

    def inner_state(self, state):
        return state

    @property
    def unwrapped(self) -> Env:
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env


class RescaleAction(Wrapper):
    """Exposes a [-1, 1] Box and maps actions affinely onto the inner Box bounds.

    Algorithms then always work in [-1, 1] (tanh actors, clipped noise) and the
    bounds of the real env live in one place.
    """

    def __init__(self, env: Env):
        super().__init__(env)
        space = env.spec.action_space
        if not isinstance(space, Box):
            raise TypeError("RescaleAction needs a Box action space")
        self._low = space.low_array()
        self._high = space.high_array()
        if not (np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high))):
            raise ValueError(f"{env.spec.name}: action bounds must be finite to rescale")
        self.spec = dataclasses.replace(env.spec, action_space=Box.symmetric(space.shape))

    def to_env_action(self, action: jax.Array) -> jax.Array:
        action = jnp.clip(action, -1.0, 1.0)
        return self._low + (action + 1.0) * 0.5 * (self._high - self._low)

    def step(self, state, action, key):
        return self.env.step(state, self.to_env_action(action), key)


@struct.dataclass
class EpisodeStatsState:
    inner: Any
    episode_return: jax.Array
    episode_length: jax.Array


class EpisodeStatistics(Wrapper):
    """Tracks each env's running return and length.

    `info["episode_done"]` marks steps that ended an episode; there
    `info["episode_return"]` / `info["episode_length"]` hold the finished
    episode's totals (elsewhere, the running totals).
    """

    def reset(self, key):
        obs, inner = self.env.reset(key)
        n = self.spec.num_envs
        return obs, EpisodeStatsState(inner, jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.int32))

    def step(self, state, action, key):
        inner, ts = self.env.step(state.inner, action, key)
        ep_return = state.episode_return + ts.info.get("raw_reward", ts.reward).astype(jnp.float32)
        ep_length = state.episode_length + 1
        done = ts.info.get("episode_end", ts.done)
        info = dict(ts.info)
        info.update(episode_done=done, episode_return=ep_return, episode_length=ep_length)
        new_state = EpisodeStatsState(
            inner,
            jnp.where(done, 0.0, ep_return),
            jnp.where(done, 0, ep_length),
        )
        return new_state, ts.replace(info=info)

    def inner_state(self, state):
        return state.inner
