"""From a run config to the pure parts of one run: envs, the algorithm (made once, with its
kernels), loop modules, the meta learner and the loop's functions. Nothing compiles here;
every problem is a `ConfigError` with one line naming the setting."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from angle_jax import parallel, registry, xla_cpu
from angle_jax.config import ConfigError, RunConfig, build_section
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.types import AlgoSpec, Algorithm, MetaLearner, Module
from angle_jax.envs.base import Env, EnvSpec
from angle_jax.meta.build import build_meta_learner
from angle_jax.training import off_policy, on_policy


class RunParts(NamedTuple):
    """The parts of one run (of one data-parallel shard when `data_parallel > 1`)."""

    env: Env
    eval_env: Env
    spec: AlgoSpec
    algo: Algorithm
    train: Any  # off_policy.OffPolicyTrain or on_policy.OnPolicyTrain
    kernels: Kernels


def loop_from_config(cfg: RunConfig) -> off_policy.OffPolicyLoop:
    """Translate a run config (budget in env steps) into off-policy loop sizes in iterations."""
    return off_policy.OffPolicyLoop(
        num_envs=cfg.num_envs,
        capacity_per_env=max(1, cfg.buffer_size // cfg.num_envs),
        batch_size=cfg.batch_size,
        learning_starts_iters=math.ceil(cfg.learning_starts / cfg.num_envs),
        train_frequency=cfg.train_frequency,
        gradient_steps=cfg.gradient_steps,
    )


def make_modules(names, module_kwargs: dict | None, spec: EnvSpec, kernels: Kernels = XLA) -> tuple[Module, ...]:
    """The loop modules `names` with their settings `module_kwargs[name]`; unknown names or
    settings raise ValueError."""
    module_kwargs = dict(module_kwargs or {})
    names = tuple(names)
    stray = sorted(set(module_kwargs) - set(names))
    if stray:
        raise ValueError(f"module_kwargs given for module(s) {stray} that are not in modules {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"modules listed twice: {list(names)}")
    built = []
    for name in names:
        if name not in registry.MODULES:
            raise ValueError(f"unknown module {name!r} (valid: {', '.join(registry.module_names())})")
        source = registry.MODULES[name]
        kwargs = dict(module_kwargs.get(name) or {})
        valid = [f.name for f in dataclasses.fields(source.Config)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for module {name!r} (valid: {', '.join(valid)})")
        # the settings go through the config's coercion: types, finite numbers, int32 sizes
        built.append(source.make(build_section(source.Config, kwargs, f"module_kwargs.{name}."), spec,
                                 kernels=kernels))
    return tuple(built)


def build_meta(config: RunConfig, algo: Algorithm, spec: AlgoSpec, env_spec: EnvSpec) -> MetaLearner | None:
    """The run's meta learner (None without `meta` / `auxiliary`), its networks applied with the
    algorithm's kernels."""
    if config.meta.wants_gradient and spec.meta_options is None:
        available = sorted(name for name, s in registry.ALGOS.items() if s.meta_options is not None)
        raise ValueError(f"meta-gradients need a validation objective; algorithm {spec.name!r} has none "
                         f"(available for: {', '.join(available)})")
    meta = build_meta_learner(config.meta, config.auxiliary, algo, spec, env_spec)
    return None if meta is None else meta._replace(update=algo.kernels.bind(meta.update))


def build_train(config: RunConfig, spec: AlgoSpec, env: Env, eval_env: Env | None = None,
                kernels: Kernels = XLA) -> tuple[Algorithm, Any]:
    """The algorithm (made once, with the run's budget and kernels) and the loop functions of a
    run config; ValueError for what the config asks that cannot run."""
    agent_config = config.agent if config.agent is not None else spec.Config()
    if not isinstance(agent_config, spec.Config):
        raise ValueError(f"agent settings are a {type(agent_config).__name__}, expected {spec.name}'s Config")
    if env.spec.num_envs != config.num_envs:
        raise ValueError(f"env has {env.spec.num_envs} envs, run config asks for {config.num_envs}")
    agent_config.validate(config.num_envs)
    if spec.loop == "on_policy":
        steps = agent_config.rollout_length * config.num_envs
        if config.total_steps < steps:
            raise ValueError(f"total_steps ({config.total_steps}) is smaller than one iteration "
                             f"(rollout_length * num_envs = {steps})")
        modules = make_modules(config.modules, config.module_kwargs, env.spec, kernels)
    elif config.modules:
        raise ValueError(f"loop modules ({', '.join(config.modules)}) run beside on-policy algorithms; "
                         f"{spec.name} is off-policy")
    algo = spec.make(agent_config, env.spec, total_steps=config.total_steps, kernels=kernels)
    meta = build_meta(config, algo, spec, env.spec)
    sample = config.eval_mode == "sample"
    if spec.loop == "on_policy":
        loop = on_policy.OnPolicyLoop(config.num_envs, agent_config.rollout_length, config.total_steps // steps)
        return algo, on_policy.make_train(algo, env, loop, eval_env, modules, meta, eval_sample=sample)
    return algo, off_policy.make_train(algo, env, loop_from_config(config), eval_env, meta, eval_sample=sample)


def build_parts(config: RunConfig, backend: str = "cpu") -> RunParts:
    """Envs, eval env, algorithm and loop functions for a run config (no compile), with the
    kernels `config.kernels` selects for `backend`.

    With `config.data_parallel = D > 1` they are those of one shard: num_envs, batch, replay
    and warm-up divided by D, gradients averaged over "data"."""
    try:
        spec = registry.algo_spec(config.algo)
        shards = config.data_parallel
        parallel.check_data_parallel(config, shards, spec.loop == "on_policy")
        kernels = xla_cpu.select(config.kernels, backend)
        eval_episodes = config.eval_episodes
        config = parallel.shard_config(config, shards)
        env = registry.make_env(config.env, config.num_envs, **config.env_kwargs)
        eval_env = registry.make_env(config.env, eval_episodes, **config.env_kwargs)
        if spec.action_kind == "continuous" and env.spec.discrete:
            raise ConfigError(f"{config.algo} needs continuous actions, but {config.env} has "
                              f"{env.spec.action_space.n} discrete actions")
        if spec.action_kind == "discrete" and not env.spec.discrete:
            raise ConfigError(f"{config.algo} needs discrete actions, but {config.env} has continuous actions")
        algo, train = build_train(config, spec, env, eval_env, kernels)
    except (ValueError, parallel.SweepError) as e:
        raise e if isinstance(e, ConfigError) else ConfigError(str(e)) from None
    return RunParts(env, eval_env, spec, algo, train, kernels)
