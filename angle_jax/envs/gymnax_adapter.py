"""gymnax envs under the batched protocol: vmapped, auto-reset, truncation kept apart."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.envs.base import Box, Discrete, Env, EnvSpec, TimeStep
from angle_jax.envs.render import render_gymnax


@functools.cache
def _gymnax():
    """gymnax, imported on first use: importing it builds arrays, which starts JAX's backend,
    and that must wait until a multi-process job has joined (`jax.distributed.initialize`)."""
    return importlib.import_module("gymnax")


def gymnax_names() -> list[str]:
    # MNISTBandit downloads a dataset at construction time: not usable offline.
    return [n for n in _gymnax().registered_envs if n != "MNISTBandit-bsuite"]


def _space_from_gymnax(space) -> Discrete | Box:
    spaces = _gymnax().environments.spaces
    if isinstance(space, spaces.Discrete):
        return Discrete(int(space.n))
    if isinstance(space, spaces.Box):
        shape = tuple(int(s) for s in space.shape)
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape).reshape(-1)
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape).reshape(-1)
        return Box(tuple(float(x) for x in low), tuple(float(x) for x in high), shape)
    raise TypeError(f"unsupported gymnax action space {type(space).__name__}")


def checked_overrides(name: str, params, overrides: dict) -> dict:
    """`overrides` of a gymnax env's parameters, each a field of its `EnvParams` with a value of the
    field's kind (a finite number for a number); ValueError naming the key and the valid ones."""
    defaults = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    for key, value in overrides.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown env_kwargs key {key!r} for {name}{hint} (valid: {', '.join(defaults)})")
        default = np.asarray(defaults[key])
        if default.dtype.kind in "biuf" and default.ndim == 0:
            if isinstance(value, bool) != (default.dtype.kind == "b") or not isinstance(value, (int, float)):
                kind = "true or false" if default.dtype.kind == "b" else "a number"
                raise ValueError(f"env_kwargs.{key} must be {kind} "
                                 f"(like its default {default.item()!r}), got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"env_kwargs.{key} must be a finite number, got {value!r}")
            if default.dtype.kind in "iu" and float(value) != int(value):
                raise ValueError(f"env_kwargs.{key} must be an integer (like its default {default.item()!r}), "
                                 f"got {value!r}")
    return overrides


class GymnaxEnv(Env):
    """A gymnax env batched over `num_envs` with automatic reset.

    Binary grid observations (MinAtar) become uint8 so replay stays small.
    """

    def __init__(self, name: str, num_envs: int, **param_overrides):
        self.gymnax_env, params = _gymnax().make(name)
        if param_overrides:
            params = params.replace(**checked_overrides(name, params, param_overrides))
        self.params = params
        obs, _ = jax.eval_shape(lambda: self.gymnax_env.reset_env(jax.random.PRNGKey(0), params))
        binary = obs.dtype == jnp.bool_ or name.endswith("-MinAtar")  # MinAtar grids are 0/1
        obs_dtype = jnp.uint8 if binary else jnp.float32
        self._obs_dtype = obs_dtype
        self.spec = EnvSpec(
            name=name,
            obs_shape=tuple(obs.shape),
            obs_dtype=jnp.dtype(obs_dtype).name,
            action_space=_space_from_gymnax(self.gymnax_env.action_space(params)),
            num_envs=int(num_envs),
            max_episode_steps=int(params.max_steps_in_episode),
        )

    def _cast(self, obs):
        return obs.astype(self._obs_dtype)

    def reset(self, key):
        keys = jax.random.split(key, self.spec.num_envs)
        obs, state = jax.vmap(self.gymnax_env.reset_env, in_axes=(0, None))(keys, self.params)
        # Strong dtypes: a weakly typed leaf would make the next compiled chunk recompile.
        state = jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state)
        return self._cast(obs), state

    def _step_one(self, state, action, key):
        env, params = self.gymnax_env, self.params
        key_step, key_reset = jax.random.split(key)
        next_obs, next_state, reward, terminated, info = env.step_env(key_step, state, action, params)
        truncated = jnp.logical_and(env.is_truncated(next_state, params), jnp.logical_not(terminated))
        done = jnp.logical_or(terminated, truncated)
        reset_obs, reset_state = env.reset_env(key_reset, params)
        state = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state, next_state)
        obs = jnp.where(done, reset_obs, next_obs)
        return state, obs, next_obs, reward, terminated, truncated

    def step(self, state, action, key):
        keys = jax.random.split(key, self.spec.num_envs)
        state, obs, next_obs, reward, term, trunc = jax.vmap(self._step_one)(state, action, keys)
        ts = TimeStep(
            obs=self._cast(obs),
            reward=reward.astype(jnp.float32),
            terminated=term.astype(jnp.bool_),
            truncated=trunc.astype(jnp.bool_),
            next_obs=self._cast(next_obs),
            info={},
        )
        return state, ts

    def render(self, state, index: int = 0) -> np.ndarray:
        one = jax.tree.map(lambda x: np.asarray(x)[index], state)
        return render_gymnax(self.spec.name, self.gymnax_env, one, self.params)
