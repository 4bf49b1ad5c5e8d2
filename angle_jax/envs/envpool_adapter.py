"""envpool envs (batched Atari, MuJoCo) under the batched protocol, stepped inside `jit`.

The envs live in envpool's C++ pool; JAX reaches them through envpool's XLA
interface (`send`/`recv` as FFI calls), so `env.step` runs inside `jit` and
`lax.scan` with no Python in the loop. The protocol state is envpool's XLA
handle: threading it through every call orders the side effects.

Auto-reset: envpool resets an env on the step *after* its episode ended (that
step ignores the action, returns reward 0 and the reset observation). The
protocol wants the reset observation on the ending step itself, so after every
step the envs that just ended are sent their reset step at once, through a
host callback run only when some env ended (`lax.cond`). Hence `obs` is what to
act on next and `next_obs` is envpool's true final observation, and no
transition straddles two episodes.

Atari: `reward` is the training reward (clipped when `reward_clip`);
`info["raw_reward"]` is the unclipped game reward and `info["episode_end"]` the
real game end (all lives lost, or the time limit), so `EpisodeStatistics`
logs whole-game returns while `terminated` marks every lost life when
`episodic_life` is on.

envpool is an optional dependency (`pip install 'angle_jax[atari]'`): names are
registered from static lists at import; envpool is imported when an env is built.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from angle_jax.core.types import UnknownNameError
from angle_jax.envs.base import EnvSpec
from angle_jax.envs.host import HostEnv, HostState, obs_dtype_for, space_from_gym

INSTALL_HINT = "pip install 'angle_jax[atari]'"

# envpool 1.2.5's Atari games (each registered as `<Game>-v5`).
ATARI_GAMES: tuple[str, ...] = tuple("""
Adventure AirRaid Alien Amidar Assault Asterix Asteroids Atlantis Atlantis2 Backgammon BankHeist
BasicMath BattleZone BeamRider Berzerk Blackjack Bowling Boxing Breakout Carnival Casino Centipede
ChopperCommand CrazyClimber Crossbow Darkchambers Defender DemonAttack DonkeyKong DoubleDunk
Earthworld ElevatorAction Enduro Entombed Et FishingDerby FlagCapture Freeway Frogger Frostbite
Galaxian Gopher Gravitar Hangman HauntedHouse Hero HumanCannonball IceHockey Jamesbond
JourneyEscape Kaboom Kangaroo KeystoneKapers KingKong Klax Koolaid Krull KungFuMaster LaserGates
LostLuggage MarioBros MiniatureGolf MontezumaRevenge MrDo MsPacman NameThisGame Othello Pacman
Phoenix Pitfall Pitfall2 Pong Pooyan PrivateEye Qbert Riverraid RoadRunner Robotank Seaquest
SirLancelot Skiing Solaris SpaceInvaders SpaceWar StarGunner Superman Surround Tennis Tetris
TicTacToe3d TimePilot Trondead Turmoil Tutankham UpNDown Venture VideoCheckers VideoChess VideoCube
VideoPinball WizardOfWor WordZapper YarsRevenge Zaxxon
""".split())

# envpool 1.2.5's gym-MuJoCo tasks (flat float observations, Box actions).
MUJOCO_IDS: tuple[str, ...] = (
    "Ant-v3", "Ant-v4", "Ant-v5", "HalfCheetah-v3", "HalfCheetah-v4", "HalfCheetah-v5",
    "Hopper-v3", "Hopper-v4", "Hopper-v5", "Humanoid-v3", "Humanoid-v4", "Humanoid-v5",
    "HumanoidStandup-v2", "HumanoidStandup-v4", "HumanoidStandup-v5",
    "InvertedDoublePendulum-v2", "InvertedDoublePendulum-v4", "InvertedDoublePendulum-v5",
    "InvertedPendulum-v2", "InvertedPendulum-v4", "InvertedPendulum-v5",
    "Pusher-v2", "Pusher-v4", "Pusher-v5", "Reacher-v2", "Reacher-v4", "Reacher-v5",
    "Swimmer-v3", "Swimmer-v4", "Swimmer-v5", "Walker2d-v3", "Walker2d-v4", "Walker2d-v5",
)

# Gym-style `<Game>NoFrameskip-v4` -> envpool `<Game>-v5` with the standard DQN preprocessing
# (Mnih et al. 2015; Machado et al. 2018 for the 108k-frame limit). envpool always max-pools
# the last two of the skipped frames.
NOFRAMESKIP_V4_KWARGS: dict[str, Any] = dict(
    noop_max=30, frame_skip=4, img_height=84, img_width=84, gray_scale=True, stack_num=4,
    episodic_life=True, reward_clip=True, max_episode_steps=27_000,  # 27k agent steps = 108k frames
    repeat_action_probability=0.0, full_action_space=False, use_fire_reset=True,
)


def _live_envpool_ids() -> list[str] | None:
    """envpool's own registry when envpool is already imported (importing it takes seconds)."""
    if "envpool" not in sys.modules:
        return None
    try:
        return list(sys.modules["envpool"].list_all_envs())
    except Exception:
        return None


def atari_ids() -> list[str]:
    live = _live_envpool_ids()
    if live is not None:
        from envpool.registration import registry

        return sorted(i for i in live if registry.specs[i][0] == "envpool.atari")
    return [f"{g}-v5" for g in ATARI_GAMES]


def envpool_names() -> dict[str, tuple[str, dict]]:
    """Every name this module registers -> (envpool task id, preset kwargs)."""
    names: dict[str, tuple[str, dict]] = {}
    for task in atari_ids():
        names[task] = (task, {})
        names[task[:-3] + "NoFrameskip-v4"] = (task, dict(NOFRAMESKIP_V4_KWARGS))
    for task in MUJOCO_IDS:
        names[task] = (task, {})
    return names


def resolve_name(name: str) -> tuple[str, dict]:
    """`name` -> (envpool task id, preset kwargs); unknown names raise with suggestions."""
    names = envpool_names()
    if name in names:
        return names[name]
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(f"unknown envpool env {name!r}{hint} (see docs/envpool.md for the names)")


def _import_envpool():
    if importlib.util.find_spec("envpool") is None:
        raise ImportError(f"envpool is not installed; the envpool envs need it: {INSTALL_HINT}")
    import envpool

    return envpool


def xla_supported() -> tuple[bool, str]:
    """Whether envpool's XLA interface can run with this platform and jaxlib, and why not."""
    if sys.platform != "linux":
        return False, f"envpool's XLA interface is Linux-only (this is {sys.platform})"
    version = tuple(int(p) for p in jaxlib.__version__.split(".")[:3] if p.isdigit())
    if version < (0, 9, 1):
        return False, f"jaxlib {jaxlib.__version__} is older than 0.9.1 (XLA FFI API mismatch); pip install -U jax jaxlib"
    return True, ""


# envpool's XLA handle is the host-env token (uint8[8]) of `angle_jax.envs.host`
EnvpoolState = HostState


class EnvpoolEnv(HostEnv):
    """`num_envs` envpool envs of task `task_id`, one protocol step per call.

    One C++ env pool per instance, a `HostEnv`: the env cannot be vmapped over seeds
    (`vmappable = False`), and its state is a handle, not data a checkpoint can restore.

    backend: "xla" (envpool's FFI calls inside the compiled program), "callback"
    (the whole step as one `io_callback`: works anywhere, slower for cheap envs) or
    "auto" (xla, except float64 envs without `JAX_ENABLE_X64`, which use the callback).
    Observations are cast to float32 (uint8 frames stay uint8) and float32 actions
    to envpool's float64 at the boundary, so networks stay float32.
    The pool is seeded once by `seed`; `reset`'s key is not used (envpool draws its own
    randomness), and one instance cannot be `vmap`ped over seeds.
    """

    def __init__(self, name: str, num_envs: int, *, seed: int = 0, num_threads: int | None = None,
                 backend: str = "auto", **kwargs):
        if backend not in ("auto", "xla", "callback"):
            raise ValueError(f"backend must be 'auto', 'xla' or 'callback', got {backend!r}")
        task_id, preset = resolve_name(name)
        envpool = _import_envpool()
        options = {**preset, **kwargs}
        if num_threads is None:
            num_threads = min(int(num_envs), os.cpu_count() or 1)
        try:
            self.pool = envpool.make(task_id, env_type="gymnasium", num_envs=int(num_envs), batch_size=int(num_envs),
                                     num_threads=int(num_threads), seed=int(seed), **options)
        except TypeError as err:  # an option envpool's config does not have
            valid = ", ".join(k for k in envpool.make_spec(task_id)._config_keys
                              if k not in ("num_envs", "batch_size", "num_threads", "seed"))
            raise ValueError(f"{name}: {err} (env_kwargs valid for it: {valid})") from None
        self.task_id = task_id
        self.is_atari = task_id[:-3] in ATARI_GAMES or "stack_num" in self.pool.config
        obs_space = self.pool.observation_space
        act_space = self.pool.action_space
        self._raw_obs_dtype = np.dtype(obs_space.dtype)
        self._raw_act_dtype = np.dtype(self.pool.spec.action_array_spec["action"].dtype)
        obs_dtype = obs_dtype_for(self._raw_obs_dtype)
        self._obs_dtype = obs_dtype
        self.spec = EnvSpec(
            name=name,
            obs_shape=tuple(int(s) for s in obs_space.shape),
            obs_dtype=np.dtype(obs_dtype).name,
            action_space=space_from_gym(act_space),
            num_envs=int(num_envs),
            max_episode_steps=int(self.pool.config["max_episode_steps"]),
        )
        self.backend = self._pick_backend(backend)
        self._handle = None
        self._xla_step = None
        if self.backend == "xla":
            try:
                handle, _recv, _send, step = self.pool.xla()
            except Exception as err:  # platform or FFI registration failure
                raise RuntimeError(
                    f"envpool's XLA interface is unavailable ({err}); pip install -U jax jaxlib "
                    "(jaxlib >= 0.9.1 on Linux), or pass backend='callback'") from err
            self._handle = np.asarray(handle)
            self._xla_step = step
        else:
            self._handle = np.zeros(8, np.uint8)

    def _pick_backend(self, backend: str) -> str:
        needs_x64 = np.float64 in (self._raw_obs_dtype, self._raw_act_dtype)
        x64 = bool(jax.config.jax_enable_x64)
        if backend == "callback":
            return "callback"
        if backend == "xla":
            ok, why = xla_supported()
            if not ok:
                raise RuntimeError(f"{why}; or pass backend='callback'")
            if needs_x64 and not x64:
                raise RuntimeError(
                    f"{self.task_id} exchanges float64 arrays with envpool: its XLA route needs "
                    "JAX_ENABLE_X64=1 (set before importing jax), or pass backend='callback'")
            return "xla"
        ok, why = xla_supported()
        if not ok:
            raise RuntimeError(f"{why}; or pass backend='callback'")
        return "callback" if (needs_x64 and not x64) else "xla"

    # ---- host side -----------------------------------------------------------------

    def _host_info(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        n = self.spec.num_envs
        raw = np.asarray(info.get("reward", np.zeros(n)), np.float32)
        game_over = np.asarray(info.get("terminated", np.zeros(n)), bool)
        return raw, game_over

    def _host_reset(self, handle):
        obs, _ = self.pool.reset()
        return np.asarray(handle), self._host_obs(obs)

    def _host_reset_done(self, handle, done):
        """Send envpool's reset step to the envs in `done`; returns their reset observations."""
        ids = np.nonzero(np.asarray(done))[0].astype(np.int32)
        out = np.zeros((self.spec.num_envs, *self.spec.obs_shape), self._obs_dtype)
        if ids.size:
            action = np.zeros((ids.size, *self.spec.action_space.shape), self._raw_act_dtype)
            obs, *_ = self.pool.step({"action": action, "env_id": ids, "players.env_id": ids})
            out[ids] = self._host_obs(obs)
        return np.asarray(handle), out

    def _host_step(self, handle, action):
        action = np.asarray(action).astype(self._raw_act_dtype)
        obs, reward, term, trunc, info = self.pool.step(action)
        raw, game_over = self._host_info(info)
        return (np.asarray(handle), self._host_obs(obs), np.asarray(reward, np.float32),
                np.asarray(term, bool), np.asarray(trunc, bool), raw, game_over)

    # ---- protocol ------------------------------------------------------------------

    def reset(self, key: jax.Array):
        """Blocking envpool reset of every env (through a host callback, so it works under jit)."""
        del key
        handle, obs = self.host_call(self._host_reset, (self._handle_struct(), self._obs_struct()),
                                     jnp.asarray(self._handle))
        return obs, EnvpoolState(handle)

    def _raw_step(self, handle, action):
        """One envpool step of every env: (handle, obs, reward, term, trunc, raw_reward, game_over)."""
        n = self.spec.num_envs
        if self.backend == "xla":
            action = action.astype(self._raw_act_dtype)
            handle, (obs, reward, term, trunc, info) = self._xla_step(handle, action)
            raw = info["reward"].astype(jnp.float32) if "reward" in info else reward.astype(jnp.float32)
            game_over = info["terminated"].astype(jnp.bool_) if "terminated" in info else jnp.zeros(n, jnp.bool_)
            return (handle, obs.astype(self._obs_dtype), reward.astype(jnp.float32), term.astype(jnp.bool_),
                    trunc.astype(jnp.bool_), raw, game_over)
        f32 = jax.ShapeDtypeStruct((n,), jnp.float32)
        b = jax.ShapeDtypeStruct((n,), jnp.bool_)
        return self.host_call(self._host_step, (self._handle_struct(), self._obs_struct(), f32, b, b, f32, b),
                              handle, action)

    def step(self, state: EnvpoolState, action: jax.Array, key: jax.Array):
        del key
        handle, next_obs, reward, term, trunc, raw, game_over = self._raw_step(state.handle, action)
        done = jnp.logical_or(term, trunc)

        def reset_done():
            return self.host_call(self._host_reset_done, (self._handle_struct(), self._obs_struct()), handle, done)

        handle, reset_obs = jax.lax.cond(jnp.any(done), reset_done, lambda: (handle, jnp.zeros_like(next_obs)))
        if not self.is_atari:
            raw = game_over = None
        return self.finish_step(handle, next_obs, reset_obs, done, reward, term, trunc, raw, game_over)

    def close(self) -> None:
        self.pool.close()


def make_envpool_env(name: str, num_envs: int, **kwargs) -> EnvpoolEnv:
    return EnvpoolEnv(name, num_envs, **kwargs)


def _factory(name: str):
    def factory(num_envs: int, **kwargs) -> EnvpoolEnv:
        return EnvpoolEnv(name, num_envs, **kwargs)

    factory.__name__ = f"envpool_{name}"
    return factory


def env_factories() -> dict[str, Any]:
    """Every envpool name and its factory, for the registry (static lists; envpool itself is not imported)."""
    return {name: _factory(name) for name in envpool_names()}
