"""angle_jax: functional reinforcement learning in JAX.

The public names below are loaded on first use (PEP 562), so `import angle_jax` stays cheap
and imports no JAX until a name needs it (train.py sets XLA flags before JAX starts).

    from angle_jax import td3, make_env, OffPolicyLoop, off_policy, gae, uniform_replay
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {}  # public name -> the module it lives in
_MODULES: dict[str, str] = {}  # public module name -> its import path


def _export(module: str, *names: str) -> None:
    for name in names:
        _EXPORTS[name] = module


# modules
for _name in ("td3", "sac", "ddpg", "dqn", "rainbow", "r2d2", "agent57", "ppo", "a2c", "rnd"):
    _MODULES[_name] = f"angle_jax.algos.{_name}"
for _name in ("off_policy", "on_policy"):
    _MODULES[_name] = f"angle_jax.training.{_name}"
for _name in ("registry", "config", "xla_cpu", "core", "networks", "replay", "episodic", "bandits", "meta", "envs",
              "training", "algos"):
    _MODULES[_name] = f"angle_jax.{_name}"
# the bottom layer: types, returns, optimizer steps, kernels, vmap axes
_export("angle_jax.core.types", "AlgoSpec", "Algorithm", "Exploration", "MetaLearner", "Module", "ModuleOutput",
        "ModuleSpec", "NStepBatch", "Rollout", "Transition", "UnknownNameError", "Validation", "as_nstep_batch",
        "bind_kernels", "Memory", "SequenceStep", "SequenceBatch")
_export("angle_jax.core.returns", "bellman_target", "gae", "lambda_returns", "n_step_returns", "nstep_return",
        "td_errors", "value_rescale", "inverse_value_rescale", "sequence_nstep_returns")
_export("angle_jax.core.optim", "apply_gradients", "direction_optimizer", "get_hparams", "gradient_step",
        "hparam_names", "hparams_from_config", "maybe_pmean", "polyak_update", "set_hparams")
_export("angle_jax.core.kernels", "Kernels", "XLA")
_export("angle_jax.core.running_stats", "RunningStats", "normalize_obs", "scale_by_std", "discounted_filter")
_export("angle_jax.core.axes", "seed_axes")
_export("angle_jax.xla_cpu", "CPU")
# networks
_export("angle_jax.networks", "MLP", "DeterministicActor", "QEnsemble", "ActorCritic", "Critic",
        "SquashedGaussianActor", "QNetwork", "NoisyDense", "NatureCNN", "MinAtarTorso", "policy_distribution",
        "orthogonal", "RecurrentNetwork", "MemoryCore", "unroll", "burn_in")
# envs
_export("angle_jax.envs.base", "Env", "EnvSpec", "TimeStep", "Box", "Discrete")
_export("angle_jax.registry", "make_env", "register_env", "algo_names", "env_names", "algo_spec")
# replay
_export("angle_jax.replay", "BufferState", "ReplayBuffer", "uniform_replay", "nstep_replay", "prioritized_replay",
        "frame_replay", "sequence_replay", "sequence_priority")
_export("angle_jax.envs.partial_obs", "ObservationSubset")
# loops, meta-learning, runs
_export("angle_jax.training.off_policy", "OffPolicyLoop")
_export("angle_jax.training.on_policy", "OnPolicyLoop")
_export("angle_jax.training.evaluate", "make_evaluate")
_export("angle_jax.meta", "MetaConfig", "AuxiliaryConfig", "make_meta_gradient", "meta_gradient", "make_auxiliary",
        "build_meta_learner")
_export("angle_jax.config", "RunConfig", "load_config", "ConfigError")
_export("angle_jax.training.trainer", "Trainer")

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'angle_jax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
