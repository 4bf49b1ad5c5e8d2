"""Partially observed variants of envs: a wrapper that hides observation entries, and the
no-velocity classic-control envs built with it (`CartPoleNoVel-v1`, RL Zoo's name, and the like),
which an agent can only solve by remembering past observations."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from angle_jax.envs.base import Env
from angle_jax.envs.gymnax_adapter import GymnaxEnv
from angle_jax.envs.wrappers import Wrapper

# name -> (the full gymnax env, the indices of its observation that stay visible)
NO_VELOCITY_ENVS: dict[str, tuple[str, tuple[int, ...]]] = {
    "CartPoleNoVel-v1": ("CartPole-v1", (0, 2)),  # [x, x_dot, theta, theta_dot] -> cart position, pole angle
    "PendulumNoVel-v1": ("Pendulum-v1", (0, 1)),  # [cos theta, sin theta, theta_dot] -> cos, sin
    "MountainCarNoVel-v0": ("MountainCar-v0", (0,)),  # [position, velocity] -> position
}


def checked_keep(keep, obs_shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """`keep` as a tuple of ints: non-empty, each an index of the last obs axis, no duplicates;
    ValueError saying which rule it breaks."""
    if not obs_shape:
        raise ValueError(f"{name}: scalar observations have no entries to select")
    size = obs_shape[-1]
    try:
        items = list(keep)
    except TypeError:
        items = None
    if items is None or isinstance(keep, (str, bytes)) or \
            not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
        raise ValueError(f"{name}: keep must be a sequence of integer indices, got {keep!r}")
    indices = tuple(int(i) for i in items)
    if not indices:
        raise ValueError(f"{name}: keep must name at least one observation entry")
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise ValueError(f"{name}: keep index {bad[0]} out of range for observations of size {size} "
                         f"(valid: 0 to {size - 1})")
    if len(set(indices)) != len(indices):
        dup = next(i for i in indices if indices.count(i) > 1)
        raise ValueError(f"{name}: keep lists index {dup} more than once")
    return indices


class ObservationSubset(Wrapper):
    """Keeps only entries `keep` of the last axis of the observations (`obs` and `TimeStep.next_obs`)
    and calls the env `name`; state, rewards and episode ends are the inner env's, and frames are
    rendered by the inner env from the full state."""

    def __init__(self, env: Env, keep: tuple[int, ...], name: str):
        super().__init__(env)
        self.keep = checked_keep(keep, env.spec.obs_shape, name)
        self._index = np.asarray(self.keep, np.int32)
        obs_shape = (*env.spec.obs_shape[:-1], len(self.keep))
        self.spec = dataclasses.replace(env.spec, name=name, obs_shape=obs_shape)

    def observe(self, obs: jax.Array) -> jax.Array:
        """The visible entries of a batch of full observations."""
        return obs[..., self._index]

    def reset(self, key):
        obs, state = self.env.reset(key)
        return self.observe(obs), state

    def step(self, state, action, key):
        state, ts = self.env.step(state, action, key)
        return state, ts.replace(obs=self.observe(ts.obs), next_obs=self.observe(ts.next_obs))


def _no_velocity_factory(name: str, base: str, keep: tuple[int, ...]) -> Callable[..., Env]:
    def factory(num_envs: int, **env_kwargs: Any) -> Env:
        try:
            inner = GymnaxEnv(base, num_envs, **env_kwargs)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return ObservationSubset(inner, keep, name)

    factory.__doc__ = f"{name}: {base} showing only observation entries {list(keep)} (env_kwargs go to {base})."
    return factory


def env_factories() -> dict[str, Callable[..., Env]]:
    """The partially observed env names and their factories `factory(num_envs, **env_kwargs)` (for the registry)."""
    return {name: _no_velocity_factory(name, base, keep) for name, (base, keep) in NO_VELOCITY_ENVS.items()}


__all__ = ["NO_VELOCITY_ENVS", "ObservationSubset", "checked_keep", "env_factories"]
