"""Names, checks and single-env construction for Gymnasium (`gym:<id>`) and stable-retro
(`retro:<game>`) envs. No JAX here: the vector env's worker processes import this module to
build their env, and stay small.

`check(name)` refuses, with one line saying what to install or import, a name whose package is
missing, whose id is unknown, or (Retro) whose ROM has not been imported; it runs when a config
is loaded, before anything is built or compiled. `Recipe` is the picklable description of one
env that `make_one` builds, in the parent (sync vector env) or in a worker (async).

Retro preprocessing (the standard Atari/Retro pipeline, Mnih et al. 2015; Nichol et al. 2018 for
the button-combination action set): the emulator's frames, `frame_skip` steps per agent step with
the rewards summed and the last two frames max-pooled; an action set of button combinations
(`actions`: a list such as `[[], [B], [LEFT], [RIGHT, B]]`, or "discrete" for Retro's own
`Discrete` set of every valid combination); optional episodic life (a lost life terminates,
the game goes on) and reward clipping (the sign); a time limit in agent steps; grayscale
84x84 frames (`gray`, `size`) and a stack of the last `stack` frames, `[stack, 84, 84]`
uint8, the first frame of an episode repeated (what the frame-deduplicated replay and
envpool's Atari stacks do). `info["raw_reward"]` keeps the unclipped game reward and
`info["game_over"]` the real game end.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
from typing import Any

import numpy as np

GYM_PREFIX = "gym:"
RETRO_PREFIX = "retro:"
GYM_HINT = "pip install 'angle_jax[gym]'"
RETRO_HINT = "pip install 'angle_jax[retro]'"
RETRO_IMPORT_HINT = "python -m stable_retro.import DIR (DIR holding your ROM files)"

# Namespaces whose envs register on import of another package (gymnasium >= 1.0 no longer
# imports them itself): namespace -> (module, pip package).
NAMESPACE_MODULES = {"ALE": ("ale_py", "ale-py")}

RETRO_DEFAULTS: dict[str, Any] = dict(
    state=None, actions="discrete", frame_skip=4, episodic_life=False, reward_clip=False,
    max_episode_steps=4500, gray=True, size=84, stack=4,
)


class HostEnvNameError(ValueError):
    """A `gym:` / `retro:` name that cannot be made here; the message says what to install or import."""


def is_host_env(name: str) -> bool:
    return isinstance(name, str) and name.startswith((GYM_PREFIX, RETRO_PREFIX))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One env: `kind` ("gym" or "retro"), its id, and the keyword arguments it is made with."""

    kind: str
    env_id: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def options(self) -> dict:
        return dict(self.kwargs)


# ---- names and checks --------------------------------------------------------------

def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _import_gymnasium():
    if not _have("gymnasium"):
        raise HostEnvNameError(f"gymnasium is not installed; gym: envs need it: {GYM_HINT}")
    import gymnasium

    return gymnasium


def _gym_spec(env_id: str):
    """gymnasium's spec of `env_id`, importing the module that registers its namespace first."""
    gym = _import_gymnasium()
    module = None
    if ":" in env_id:  # gymnasium's own `module:Id` form
        module, env_id = env_id.split(":", 1)
    elif "/" in env_id and env_id.split("/", 1)[0] in NAMESPACE_MODULES:
        module = NAMESPACE_MODULES[env_id.split("/", 1)[0]][0]
    if module is not None:
        package = {m: p for m, p in NAMESPACE_MODULES.values()}.get(module, module)
        if not _have(module):
            raise HostEnvNameError(f"gym:{env_id} needs the {module!r} module, which is not installed: "
                                   f"pip install {package}")
        mod = importlib.import_module(module)
        if hasattr(gym, "register_envs"):
            gym.register_envs(mod)
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        ids = list(gym.registry)
        close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(GYM_PREFIX + c) for c in close)}?" if close else ""
        raise HostEnvNameError(f"unknown Gymnasium env {GYM_PREFIX + env_id!r}{hint} (gymnasium "
                               f"{gym.__version__} registers {len(ids)} ids; a namespaced id needs its package "
                               f"imported, e.g. ale-py for ALE/)") from None


def _check_gym(env_id: str) -> None:
    spec = _gym_spec(env_id)
    gym = _import_gymnasium()
    if isinstance(spec.entry_point, str):  # import it now: a missing extra (Box2D, MuJoCo) says so here
        try:
            gym.envs.registration.load_env_creator(spec.entry_point)
        except gym.error.DependencyNotInstalled as e:
            raise HostEnvNameError(f"gym:{env_id}: {str(e).splitlines()[0]}") from None
        except ImportError as e:
            raise HostEnvNameError(f"gym:{env_id} cannot be imported ({e}); install the package that "
                                   f"provides it") from None


def _import_retro():
    if not _have("stable_retro"):
        raise HostEnvNameError(f"stable-retro is not installed; retro: envs need it: {RETRO_HINT}")
    import stable_retro

    return stable_retro


def retro_game(game: str) -> str:
    """The integration's game id for `game` (`-v0` added when left off); unknown games and
    games whose ROM has not been imported raise `HostEnvNameError`."""
    retro = _import_retro()
    games = retro.data.list_games()
    if game not in games and f"{game}-v0" in games:
        game = f"{game}-v0"
    if game not in games:
        close = difflib.get_close_matches(game, games, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(RETRO_PREFIX + c) for c in close)}?" if close else ""
        raise HostEnvNameError(f"unknown Retro game {RETRO_PREFIX + game!r}{hint} (stable-retro knows "
                               f"{len(games)} games, e.g. retro:Airstriker-Genesis-v0)")
    try:
        retro.data.get_romfile_path(game)
    except FileNotFoundError:
        raise HostEnvNameError(f"the ROM of {game} has not been imported into stable-retro: "
                               f"{RETRO_IMPORT_HINT}") from None
    return game


def check(name: str) -> None:
    """Raise `HostEnvNameError` unless `name` can be made here (nothing is built)."""
    if name.startswith(GYM_PREFIX):
        env_id = name[len(GYM_PREFIX):]
        if not env_id:
            raise HostEnvNameError("gym: needs an env id, e.g. gym:CartPole-v1")
        _check_gym(env_id)
    elif name.startswith(RETRO_PREFIX):
        game = name[len(RETRO_PREFIX):]
        if not game:
            raise HostEnvNameError("retro: needs a game, e.g. retro:Airstriker-Genesis-v0")
        retro_game(game)
    else:
        raise HostEnvNameError(f"{name!r} is not a gym: or retro: name")


def recipe(name: str, **kwargs) -> Recipe:
    """Check `name` and its env kwargs; the recipe of one of its envs."""
    check(name)
    if name.startswith(RETRO_PREFIX):
        game = retro_game(name[len(RETRO_PREFIX):])
        unknown = sorted(set(kwargs) - set(RETRO_DEFAULTS))
        if unknown:
            raise HostEnvNameError(f"unknown env_kwargs {unknown} for {name} (valid: {', '.join(RETRO_DEFAULTS)})")
        options = {**RETRO_DEFAULTS, **kwargs}
        _check_retro_options(game, options)
        return Recipe("retro", game, tuple(sorted(options.items(), key=lambda kv: kv[0])))
    env_id = name[len(GYM_PREFIX):]
    return Recipe("gym", env_id, tuple(sorted(kwargs.items())))


def _check_retro_options(game: str, o: dict) -> None:
    for key in ("frame_skip", "max_episode_steps", "size", "stack"):
        if not isinstance(o[key], int) or isinstance(o[key], bool) or o[key] < 1:
            raise HostEnvNameError(f"env_kwargs.{key} must be a positive integer, got {o[key]!r}")
    for key in ("episodic_life", "reward_clip", "gray"):
        if not isinstance(o[key], bool):
            raise HostEnvNameError(f"env_kwargs.{key} must be true or false, got {o[key]!r}")
    actions = o["actions"]
    if actions == "discrete":
        return
    if not isinstance(actions, (list, tuple)) or not actions or not all(isinstance(c, (list, tuple)) for c in actions):
        raise HostEnvNameError(f"env_kwargs.actions must be 'discrete' or a list of button combinations "
                               f"such as [[], [B], [LEFT, B]], got {actions!r}")
    buttons = _retro_buttons(game)
    for combo in actions:
        for b in combo:
            if b not in buttons:
                raise HostEnvNameError(f"env_kwargs.actions: {b!r} is not a button of {game} "
                                       f"(buttons: {', '.join(buttons)})")


def _retro_buttons(game: str) -> list[str]:
    """The buttons of the game's platform (from the ROM's extension: `rom.md` -> Genesis)."""
    retro = _import_retro()
    ext = "." + retro.data.get_romfile_path(game).rsplit(".", 1)[-1]
    platform = retro.data.EMU_EXTENSIONS.get(ext, game.split("-")[-2] if game.count("-") >= 2 else "")
    return list(retro.data.EMU_INFO.get(platform, {}).get("buttons", []))


# ---- building one env (parent or worker process) -----------------------------------

def make_one(recipe: Recipe):
    """One Gymnasium env from its recipe (called once per env; in a worker for async vector envs)."""
    if recipe.kind == "retro":
        return _make_retro(recipe.env_id, recipe.options)
    import gymnasium as gym

    env_id = recipe.env_id
    options = recipe.options
    if "/" in env_id and ":" not in env_id and env_id.split("/", 1)[0] in NAMESPACE_MODULES:
        gym.register_envs(importlib.import_module(NAMESPACE_MODULES[env_id.split("/", 1)[0]][0]))
    options.setdefault("render_mode", "rgb_array")
    return gym.make(env_id, **options)


def _make_retro(game: str, o: dict):
    import gymnasium as gym
    import stable_retro as retro

    from angle_jax.envs.retro_wrappers import ButtonCombos, EpisodicLife, Frames, GameInfo

    kwargs = dict(game=game, render_mode="rgb_array")
    if o["state"] is not None:
        kwargs["state"] = o["state"]
    if o["actions"] == "discrete":
        kwargs["use_restricted_actions"] = retro.Actions.DISCRETE
    env = retro.make(**kwargs)
    if o["actions"] != "discrete":
        env = ButtonCombos(env, o["actions"])
    if o["frame_skip"] > 1:
        env = gym.wrappers.MaxAndSkipObservation(env, skip=o["frame_skip"])
    env = GameInfo(env)  # raw reward and real game end, before lives and clipping change them
    if o["episodic_life"]:
        env = EpisodicLife(env)
    if o["reward_clip"]:
        env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))
    env = gym.wrappers.TimeLimit(env, max_episode_steps=o["max_episode_steps"])
    env = Frames(env, o["size"], o["gray"])
    if o["stack"] > 1:
        env = gym.wrappers.FrameStackObservation(env, o["stack"], padding_type="reset")
    return env
