"""What every env that runs outside JAX shares: a handle-ordered host callback and the merge of a
host step into the protocol's `TimeStep`.

envpool's C++ pool (`envpool_adapter`) and Gymnasium / stable-retro vector envs (`gym_adapter`)
keep their envs in another runtime. The compiled loop reaches them through
`jax.experimental.io_callback`; the protocol state is a small token (`HostState.handle`) that
every callback takes and returns, so the calls run in program order (each depends on the one
before), inside `jit`, `lax.scan` and `lax.cond`, with no Python loop around the program.

Such an env holds live state outside the carry: one instance cannot be `vmap`ped over seeds
(`vmappable = False`, the trainer refuses `seeds > 1` for it), and a checkpoint cannot restore
its episodes (on resume the env is made again and reset; the trainer does this for every env
with `vmappable = False`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import io_callback

from angle_jax.envs.base import Box, Discrete, Env, TimeStep


@struct.dataclass
class HostState:
    """A uint8[8] token (envpool's XLA handle, or zeros); passing it from call to call orders the
    side effects."""

    handle: jax.Array


def space_from_gym(space) -> Discrete | Box:
    """A Gymnasium-style `Discrete` or `Box` space as the protocol's action space."""
    if hasattr(space, "n"):
        return Discrete(int(space.n))
    if not hasattr(space, "low"):
        raise ValueError(f"action space {space} is neither Discrete nor Box")
    shape = tuple(int(s) for s in space.shape)
    low = np.broadcast_to(np.asarray(space.low, np.float64), shape).reshape(-1)
    high = np.broadcast_to(np.asarray(space.high, np.float64), shape).reshape(-1)
    return Box(tuple(float(x) for x in low), tuple(float(x) for x in high), shape)


def obs_dtype_for(raw_dtype) -> type:
    """uint8 frames stay uint8 (4x smaller replay); everything else becomes float32."""
    return np.uint8 if np.dtype(raw_dtype) == np.uint8 else np.float32


class HostEnv(Env):
    """Base of the envs stepped through host callbacks. Subclasses set `spec` and `_obs_dtype`."""

    vmappable = False
    _obs_dtype: Any = np.float32

    # ---- shapes of what the callbacks return ---------------------------------------
    def _handle_struct(self):
        return jax.ShapeDtypeStruct((8,), jnp.uint8)

    def _obs_struct(self):
        return jax.ShapeDtypeStruct((self.spec.num_envs, *self.spec.obs_shape), self._obs_dtype)

    def _per_env_struct(self, dtype):
        return jax.ShapeDtypeStruct((self.spec.num_envs,), dtype)

    def _host_obs(self, obs) -> np.ndarray:
        return np.asarray(obs).astype(self._obs_dtype, copy=False)

    @staticmethod
    def host_call(fn, result_shapes, *args):
        """Run `fn(*args)` on the host; `args` should include the handle, so calls stay in order."""
        return io_callback(fn, result_shapes, *args)

    # ---- the protocol's TimeStep from a host step ------------------------------------
    def finish_step(self, handle, next_obs, reset_obs, done, reward, term, trunc, raw_reward=None,
                    game_over=None) -> tuple[HostState, TimeStep]:
        """`obs` is the reset observation where an episode ended and `next_obs` elsewhere;
        `next_obs` stays the true final observation. With `raw_reward` / `game_over` (Atari-
        and Retro-style envs whose training reward is clipped or whose lives end episodes)
        `info` carries the unclipped reward and the real game end, as `EpisodeStatistics` and
        evaluation read them."""
        shape = (-1,) + (1,) * len(self.spec.obs_shape)
        obs = jnp.where(done.reshape(shape), reset_obs, next_obs)
        info = {}
        if raw_reward is not None:
            info = {"raw_reward": raw_reward, "episode_end": jnp.logical_or(game_over, trunc)}
        ts = TimeStep(obs=obs, reward=reward, terminated=term, truncated=trunc, next_obs=next_obs, info=info)
        return HostState(handle), ts

    def close(self) -> None:
        """Stop the envs' runtime (worker processes, thread pool)."""
