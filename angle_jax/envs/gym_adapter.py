"""Any Gymnasium env (`gym:<id>`) and stable-retro game (`retro:<game>`) under the batched protocol.

`num_envs` copies run in a Gymnasium vector env with same-step auto-reset: the step that ends an
episode returns the reset observation and keeps the true final one (`info["final_obs"]`), which
is what the protocol's `obs` / `next_obs` are. The compiled loop steps the vector env through one
host callback per step (`angle_jax.envs.host`, the route envpool's callback backend takes); the
learner stays compiled, with no Python between steps but the env's own.

`vector`: "sync" (every env in this process: cheapest for classic control, where inter-process
messages would cost more than the env), "async" (one worker process per env, started with
`spawn` so no JAX threads are forked; what Retro needs, one emulator per process, and what pays
off for expensive envs), or "auto" (async for Retro, sync for Gymnasium).

Seeding: `reset(key)` seeds env `i` with `s + i`, `s` drawn from `key` (`reset_seed`); envs that
end an episode reset unseeded, continuing their own generator, as Gymnasium's vector envs do.
Box actions arrive in the env's bounds (`registry.make_env` adds `RescaleAction`, so agents act
in [-1, 1]); a `Discrete` space with `start != 0` is shifted on the host.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.envs import gym_make
from angle_jax.envs.base import EnvSpec
from angle_jax.envs.host import HostEnv, HostState, obs_dtype_for, space_from_gym

VECTOR_MODES = ("auto", "sync", "async")
DEFAULT_HORIZON = 10_000  # evaluation horizon of an env registered without a time limit


def reset_seed(key: jax.Array) -> jax.Array:
    """The int32 seed `reset(key)` gives the vector env (env `i` gets seed + i)."""
    return jax.random.randint(key, (), 0, 2**31 - 1 - 65_536, dtype=jnp.int32)


class GymVectorEnv(HostEnv):
    """`num_envs` copies of a `gym:` / `retro:` env in one Gymnasium vector env."""

    def __init__(self, name: str, num_envs: int, *, vector: str = "auto", **kwargs: Any):
        if vector not in VECTOR_MODES:
            raise ValueError(f"env_kwargs.vector must be one of {', '.join(VECTOR_MODES)}, got {vector!r}")
        self.recipe = gym_make.recipe(name, **kwargs)
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode

        if vector == "auto":
            vector = "async" if self.recipe.kind == "retro" else "sync"
        if self.recipe.kind == "retro" and vector == "sync" and num_envs > 1:
            raise ValueError("stable-retro allows one emulator per process: use env_kwargs.vector=async")
        self.vector = vector
        fns = [functools.partial(gym_make.make_one, self.recipe) for _ in range(int(num_envs))]
        try:
            if vector == "sync":
                self.venv = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
            else:
                self.venv = gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context="spawn")
        except (TypeError, gym.error.Error) as e:  # e.g. an env kwarg the env does not take
            raise ValueError(f"{name}: cannot make the env with env_kwargs {self.recipe.options}: "
                             f"{str(e).splitlines()[0]}") from None
        obs_space = self.venv.single_observation_space
        act_space = self.venv.single_action_space
        if not isinstance(obs_space, gym.spaces.Box):
            self.venv.close()
            raise ValueError(f"{name}: observations are {type(obs_space).__name__}, only Box observations are "
                             f"supported (flatten them with a Gymnasium wrapper in a registered env)")
        if not isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box)):
            self.venv.close()
            raise ValueError(f"{name}: actions are {type(act_space).__name__}; Discrete and Box are supported "
                             f"(Retro games get a Discrete set of button combinations)")
        self._act_start = int(getattr(act_space, "start", 0))
        self._act_dtype = np.dtype(act_space.dtype) if isinstance(act_space, gym.spaces.Box) else np.int64
        self._obs_dtype = obs_dtype_for(obs_space.dtype)
        self.is_retro = self.recipe.kind == "retro"
        self.spec = EnvSpec(
            name=name,
            obs_shape=tuple(int(s) for s in obs_space.shape),
            obs_dtype=np.dtype(self._obs_dtype).name,
            action_space=space_from_gym(act_space),
            num_envs=int(num_envs),
            max_episode_steps=self._horizon(),
        )

    def _horizon(self) -> int:
        options = self.recipe.options
        if self.recipe.kind == "retro":
            return int(options["max_episode_steps"])
        if options.get("max_episode_steps"):
            return int(options["max_episode_steps"])
        spec = gym_make._gym_spec(self.recipe.env_id)
        return int(spec.max_episode_steps or DEFAULT_HORIZON)

    # ---- host side -----------------------------------------------------------------

    def _host_reset(self, handle, seed):
        obs, _ = self.venv.reset(seed=int(seed))
        return np.asarray(handle), self._host_obs(obs)

    def _host_step(self, handle, action):
        action = np.asarray(action)
        if self._act_dtype == np.int64:
            action = action.astype(np.int64) + self._act_start
        else:
            action = action.astype(self._act_dtype)
        obs, reward, term, trunc, info = self.venv.step(action)
        done = np.logical_or(term, trunc)
        obs = self._host_obs(obs)
        next_obs = obs.copy()
        ended = np.nonzero(done)[0]
        for i in ended:
            next_obs[i] = self._host_obs(info["final_obs"][i])
        n = self.spec.num_envs
        raw = np.asarray(reward, np.float32)
        game_over = np.asarray(term, bool)
        if self.is_retro:
            raw = np.asarray(info.get("raw_reward", raw), np.float32).copy()
            game_over = np.asarray(info.get("game_over", np.zeros(n, bool)), bool).copy()
            if ended.size:
                final = info["final_info"]
                raw[ended] = np.asarray(final["raw_reward"], np.float32)[ended]
                game_over[ended] = np.asarray(final["game_over"], bool)[ended]
        # packed into two arrays: each array a callback returns costs a conversion
        scalars = np.stack([np.asarray(reward, np.float32), term, trunc, raw, game_over]).astype(np.float32)
        return np.asarray(handle), np.stack([next_obs, obs]), scalars

    # ---- protocol ------------------------------------------------------------------

    def reset(self, key: jax.Array):
        handle, obs = self.host_call(self._host_reset, (self._handle_struct(), self._obs_struct()),
                                     jnp.zeros(8, jnp.uint8), reset_seed(key))
        return obs, HostState(handle)

    def step(self, state: HostState, action: jax.Array, key: jax.Array):
        del key
        n = self.spec.num_envs
        obs_pair = jax.ShapeDtypeStruct((2, n, *self.spec.obs_shape), self._obs_dtype)
        handle, obs_pair, scalars = self.host_call(
            self._host_step, (self._handle_struct(), obs_pair, jax.ShapeDtypeStruct((5, n), jnp.float32)),
            state.handle, action)
        next_obs, obs = obs_pair[0], obs_pair[1]
        reward, raw = scalars[0], scalars[3]
        term, trunc, game_over = (scalars[i] > 0.5 for i in (1, 2, 4))
        done = jnp.logical_or(term, trunc)
        if not self.is_retro:
            raw = game_over = None
        return self.finish_step(handle, next_obs, obs, done, reward, term, trunc, raw, game_over)

    def render(self, state: Any, index: int = 0) -> np.ndarray:
        """Env `index`'s RGB frame, as the env draws it (Retro: the full emulator screen)."""
        del state
        frames = self.venv.call("render")
        frame = frames[index]
        if frame is None:
            raise NotImplementedError(f"{self.spec.name} draws no rgb_array frames")
        return np.asarray(frame, np.uint8)

    def close(self) -> None:
        self.venv.close()


def make_gym_env(name: str, num_envs: int, **kwargs) -> GymVectorEnv:
    return GymVectorEnv(name, num_envs, **kwargs)
