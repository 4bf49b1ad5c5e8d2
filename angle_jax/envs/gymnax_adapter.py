"""gymnax envs under the batched protocol: vmapped, auto-reset, truncation kept apart."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
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


def _check_value(key: str, value, default) -> None:
    """ValueError unless `value` is of the kind of `default`, where that is a number or a bool: a finite
    number for a number, an integer for an int, true or false for a bool (other defaults: unchecked)."""
    default = np.asarray(default)
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


def _unknown_key(name: str, key: str, params: list[str], constructor: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, constructor + params, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    valid = ", ".join(params)
    if constructor:
        valid = f"constructor arguments: {', '.join(constructor)}; parameters: {valid}"
    return ValueError(f"unknown env_kwargs key {key!r} for {name}{hint} (valid: {valid})")


def checked_overrides(name: str, params, overrides: dict) -> dict:
    """`overrides` of a gymnax env's parameters, each a field of its `EnvParams` with a value of the
    field's kind (a finite number for a number); ValueError naming the key and the valid ones."""
    defaults = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    for key, value in overrides.items():
        if key not in defaults:
            raise _unknown_key(name, key, list(defaults), [])
        _check_value(key, value, defaults[key])
    return overrides


def constructor_defaults(env_class: type) -> dict:
    """The keyword arguments of a gymnax env class's `__init__` and their defaults
    (`inspect.Parameter.empty` where there is none)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = list(inspect.signature(env_class.__init__).parameters.values())[1:]  # after self
    return {p.name: p.default for p in parameters if p.kind in kinds}


def split_env_kwargs(name: str, env_class: type, params, env_kwargs: dict) -> tuple[dict, dict]:
    """`env_kwargs` of gymnax env `name` split into `(constructor_kwargs, param_overrides)`: a parameter
    of the class's `__init__` goes to the constructor (values checked against its default and cast to
    its type), a field of `EnvParams` to the params. ValueError names an unknown key and both kinds of
    valid ones."""
    ctor_defaults = constructor_defaults(env_class)
    fields = [f.name for f in dataclasses.fields(params)]
    ctor, rest = {}, {}
    for key, value in env_kwargs.items():
        if key in ctor_defaults:
            default = ctor_defaults[key]
            if default is not inspect.Parameter.empty:
                _check_value(key, value, default)
                if isinstance(default, (bool, int, float)):
                    value = type(default)(value)
            ctor[key] = value
        elif key in fields:
            rest[key] = value
        else:
            raise _unknown_key(name, key, fields, list(ctor_defaults))
    return ctor, checked_overrides(name, params, rest)


class GymnaxEnv(Env):
    """A gymnax env batched over `num_envs` with automatic reset.

    `env_kwargs` holds constructor arguments of the gymnax env class (`size` of DeepSea-bsuite, ...)
    and fields of its `EnvParams` (`max_speed` of Pendulum-v1, ...); see `split_env_kwargs`.
    Binary grid observations (MinAtar) become uint8 so replay stays small.
    """

    def __init__(self, name: str, num_envs: int, **env_kwargs):
        gymnax_env, params = _gymnax().make(name)
        ctor_kwargs, param_overrides = split_env_kwargs(name, type(gymnax_env), params, env_kwargs)
        if ctor_kwargs:
            try:
                gymnax_env, params = _gymnax().make(name, **ctor_kwargs)
                jax.eval_shape(lambda: gymnax_env.reset_env(jax.random.PRNGKey(0), params))
            except Exception as e:  # the env's own code refusing the arguments (a size of 0, ...)
                given = ", ".join(f"{k}={v!r}" for k, v in ctor_kwargs.items())
                reason = (str(e).strip().splitlines() or [""])[0]
                raise ValueError(f"{name} cannot be built with env_kwargs {given}: "
                                 f"{type(e).__name__}: {reason}") from None
        if param_overrides:
            params = params.replace(**param_overrides)
        self.gymnax_env, self.params = gymnax_env, params
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
