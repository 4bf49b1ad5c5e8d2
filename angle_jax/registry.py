"""Names of algorithms, loop modules and envs, so the CLI can list them and reject typos.

Algorithms and loop modules are registered by their module's one description (`SPEC`, an
`AlgoSpec` / `ModuleSpec`): adding one touches its own module and one line below. Envs are
factories `factory(num_envs, **kwargs) -> Env`: gymnax names, the data feeds, envpool's names and
the partially observed (no-velocity) variants are built in, and a user's module adds its own with
`register_env` (listed under `imports:` in a config, it is imported before the env is looked up).
Two prefixes reach envs that run on the host: `gym:<id>` any Gymnasium id and `retro:<game>` any
stable-retro game (`envs.gym_adapter`); such a name is checked (package installed, id known, ROM
imported) when it is looked up.
"""
from __future__ import annotations

import difflib
from typing import Callable

from angle_jax.algos import a2c, agent57, ddpg, dqn, nec, ppo, r2d2, rainbow, rnd, sac, td3
from angle_jax.core.types import AlgoSpec, ModuleSpec, UnknownNameError
from angle_jax.envs import datafeed, envpool_adapter, gym_make, partial_obs
from angle_jax.envs.base import Box, Env
from angle_jax.envs.gymnax_adapter import GymnaxEnv, gymnax_names
from angle_jax.envs.wrappers import EpisodeStatistics, RescaleAction

ALGOS: dict[str, AlgoSpec] = {spec.name: spec for spec in (
    td3.SPEC,
    sac.SPEC,
    ddpg.SPEC,
    dqn.SPEC,
    rainbow.SPEC,
    r2d2.SPEC,
    agent57.SPEC,
    agent57.NGU_SPEC,
    nec.SPEC,
    ppo.SPEC,
    a2c.SPEC,
)}

MODULES: dict[str, ModuleSpec] = {spec.name: spec for spec in (
    rnd.SPEC,
)}

# The envs this package ships beyond gymnax (envpool's names are listed without importing envpool,
# the no-velocity variants without importing gymnax);
# `register_env` adds a user's own.
_ENV_FACTORIES: dict[str, Callable[..., Env]] = {
    **datafeed.env_factories(), **envpool_adapter.env_factories(), **partial_obs.env_factories()}


def _unknown(kind: str, name: str, valid: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (valid: {', '.join(valid)})")


def algo_names() -> list[str]:
    return sorted(ALGOS)


def algo_spec(name: str) -> AlgoSpec:
    """The description of algorithm `name`; UnknownNameError lists the valid names."""
    return _lookup("algo", ALGOS, name)


def module_names() -> list[str]:
    return sorted(MODULES)


def module_spec(name: str) -> ModuleSpec:
    """The description of loop module `name`; UnknownNameError lists the valid names."""
    return _lookup("module", MODULES, name)


def _lookup(kind: str, table: dict, name: str):
    if name not in table:
        raise _unknown(kind, name, sorted(table))
    return table[name]


def presets() -> dict[tuple[str, str], str]:
    """(algo, env) -> the preset file (in configs/) every algorithm's spec names."""
    return {(spec.name, env): file for spec in ALGOS.values() for env, file in spec.presets.items()}


def register_env(name: str, factory: Callable[..., Env], *, overwrite: bool = False) -> None:
    """Make `factory(num_envs, **kwargs) -> Env` available by `name` (CLI, configs, play.py)."""
    if name in _ENV_FACTORIES and not overwrite:
        raise ValueError(f"env {name!r} is already registered")
    _ENV_FACTORIES[name] = factory


# the host-env prefixes, as env listings show them
HOST_ENV_PATTERNS = ("gym:<Gymnasium id>", "retro:<stable-retro game>")


def env_names() -> list[str]:
    return sorted(set(gymnax_names()) | set(_ENV_FACTORIES)) + list(HOST_ENV_PATTERNS)


def is_host_env(name: str) -> bool:
    """Whether `name` is a `gym:` / `retro:` env, stepped on the host (one instance per run)."""
    return gym_make.is_host_env(name) and name not in _ENV_FACTORIES


def check_env_name(name: str) -> None:
    if is_host_env(name):
        try:
            gym_make.check(name)
        except gym_make.HostEnvNameError as e:
            raise UnknownNameError(str(e)) from None
        return
    if name not in _ENV_FACTORIES and name not in gymnax_names():
        raise _unknown("env", name, env_names())


def make_raw_env(name: str, num_envs: int, **kwargs) -> Env:
    """The env as its source defines it, batched, with no wrappers added."""
    check_env_name(name)
    if name in _ENV_FACTORIES:
        return _ENV_FACTORIES[name](num_envs, **kwargs)
    if is_host_env(name):
        from angle_jax.envs.gym_adapter import GymVectorEnv

        try:
            return GymVectorEnv(name, num_envs, **kwargs)
        except gym_make.HostEnvNameError as e:
            raise UnknownNameError(str(e)) from None
    return GymnaxEnv(name, num_envs, **kwargs)


def make_env(name: str, num_envs: int, **kwargs) -> Env:
    """The env as algorithms see it: Box actions rescaled to [-1, 1], episode statistics kept."""
    env = make_raw_env(name, num_envs, **kwargs)
    if isinstance(env.spec.action_space, Box):
        env = RescaleAction(env)
    return EpisodeStatistics(env)
