"""Names of algorithms and envs, so the CLI can list them and reject typos.

An algorithm is a module exposing `Config` (a frozen dataclass), `make(config, spec)
-> Algorithm`, `ACTION_KIND` ("continuous", "discrete" or "both") and optionally
`LOOP` ("off_policy", the default, or "on_policy"). Envs are factories
`factory(num_envs, **kwargs) -> Env`; gymnax names are built in.
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Callable

from angle_jax.envs.base import Box, Env

ALGOS: dict[str, str] = {
    "td3": "angle_jax.algos.td3",
    "sac": "angle_jax.algos.sac",
    "ddpg": "angle_jax.algos.ddpg",
    "dqn": "angle_jax.algos.dqn",
    "rainbow": "angle_jax.algos.rainbow",
    "ppo": "angle_jax.algos.ppo",
    "a2c": "angle_jax.algos.a2c",
}

_ENV_FACTORIES: dict[str, Callable[..., Env]] = {}

# Modules that call `register_env` for the envs this package ships beyond gymnax.
BUILTIN_ENV_MODULES: list[str] = ["angle_jax.envs.datafeed", "angle_jax.envs.envpool_adapter"]
_builtins_loaded = False


def _load_builtin_envs() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_ENV_MODULES:
            importlib.import_module(module)


class UnknownNameError(ValueError):
    """An algo or env name that is not registered; the message lists the valid ones."""


def _unknown(kind: str, name: str, valid: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (valid: {', '.join(valid)})")


def algo_names() -> list[str]:
    return sorted(ALGOS)


def load_algo(name: str) -> ModuleType:
    if name not in ALGOS:
        raise _unknown("algo", name, algo_names())
    return importlib.import_module(ALGOS[name])


def register_env(name: str, factory: Callable[..., Env], *, overwrite: bool = False) -> None:
    """Make `factory(num_envs, **kwargs) -> Env` available by `name` (CLI, configs, play.py)."""
    if name in _ENV_FACTORIES and not overwrite:
        raise ValueError(f"env {name!r} is already registered")
    _ENV_FACTORIES[name] = factory


def _gymnax_names() -> list[str]:
    from angle_jax.envs.gymnax_adapter import gymnax_names

    return gymnax_names()


def env_names() -> list[str]:
    _load_builtin_envs()
    return sorted(set(_gymnax_names()) | set(_ENV_FACTORIES))


def check_env_name(name: str) -> None:
    _load_builtin_envs()
    if name not in _ENV_FACTORIES and name not in _gymnax_names():
        raise _unknown("env", name, env_names())


def make_raw_env(name: str, num_envs: int, **kwargs) -> Env:
    """The env as its source defines it, batched, with no wrappers added."""
    check_env_name(name)
    if name in _ENV_FACTORIES:
        return _ENV_FACTORIES[name](num_envs, **kwargs)
    from angle_jax.envs.gymnax_adapter import GymnaxEnv

    return GymnaxEnv(name, num_envs, **kwargs)


def make_env(name: str, num_envs: int, **kwargs) -> Env:
    """The env as algorithms see it: Box actions rescaled to [-1, 1], episode statistics kept."""
    from angle_jax.envs.wrappers import EpisodeStatistics, RescaleAction

    env = make_raw_env(name, num_envs, **kwargs)
    if isinstance(env.spec.action_space, Box):
        env = RescaleAction(env)
    return EpisodeStatistics(env)
