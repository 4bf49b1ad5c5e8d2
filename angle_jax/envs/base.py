"""The batched env protocol every env source implements.

An env is an object holding only static facts (its spec); `reset` and `step`
are pure functions of explicit state and keys, so they run under `jit`,
`vmap` and `lax.scan`. Every array has a leading `num_envs` axis.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@dataclasses.dataclass(frozen=True)
class Discrete:
    """`n` actions, encoded as int32 scalars."""

    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    @property
    def dtype(self):
        return jnp.int32


@dataclasses.dataclass(frozen=True)
class Box:
    """A bounded float32 box; `low`/`high` are flat tuples of length prod(shape)."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    shape: tuple[int, ...]

    @property
    def dtype(self):
        return jnp.float32

    def low_array(self) -> np.ndarray:
        return np.asarray(self.low, np.float32).reshape(self.shape)

    def high_array(self) -> np.ndarray:
        return np.asarray(self.high, np.float32).reshape(self.shape)

    @classmethod
    def symmetric(cls, shape: tuple[int, ...], bound: float = 1.0) -> "Box":
        size = int(np.prod(shape))
        return cls((-bound,) * size, (bound,) * size, tuple(shape))


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static description of a batched env: what an algorithm needs to build itself."""

    name: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    action_space: Discrete | Box
    num_envs: int
    max_episode_steps: int

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, Discrete)

    @property
    def action_dim(self) -> int:
        """Number of discrete actions, or the flat size of a continuous action."""
        if self.discrete:
            return self.action_space.n
        return int(np.prod(self.action_space.shape))


@struct.dataclass
class TimeStep:
    """What one batched env step returns.

    `obs` is what the agent acts on next (already reset where an episode ended);
    `next_obs` is the true successor of the previous observation (pre-reset),
    the one to store in a transition. `terminated` ends bootstrapping,
    `truncated` (a time limit) does not.
    """

    obs: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    info: dict[str, Any]

    @property
    def done(self) -> jax.Array:
        return jnp.logical_or(self.terminated, self.truncated)


class Env:
    """Base class of batched envs; subclasses set `spec` and implement reset/step."""

    spec: EnvSpec

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        """Return `(obs, state)` for `spec.num_envs` fresh episodes."""
        raise NotImplementedError

    def step(self, state: Any, action: jax.Array, key: jax.Array) -> tuple[Any, TimeStep]:
        """Advance every env one step, resetting those whose episode ended."""
        raise NotImplementedError

    def render(self, state: Any, index: int = 0) -> np.ndarray:
        """An RGB frame (H, W, 3) uint8 of env `index`, where the source can draw one."""
        raise NotImplementedError(f"{self.spec.name} cannot render frames")


def random_actions(spec: EnvSpec, key: jax.Array) -> jax.Array:
    """Uniform random actions for every env, in the env's action encoding."""
    space = spec.action_space
    if isinstance(space, Discrete):
        return jax.random.randint(key, (spec.num_envs,), 0, space.n, dtype=jnp.int32)
    return jax.random.uniform(
        key,
        (spec.num_envs, *space.shape),
        minval=jnp.asarray(space.low_array()),
        maxval=jnp.asarray(space.high_array()),
    )
