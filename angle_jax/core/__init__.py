"""The bottom layer: the types every other layer shares and the pure helpers they all use.

Nothing here imports another part of angle_jax: `types` (transitions, batches, rollouts, the
algorithm / exploration / meta-learner / loop-module protocols and the algorithm description),
`returns` (targets and returns as array functions), `optim` (optimizer steps and the traced
hyperparameters), `kernels` (the backend-chosen kernel bundle), `axes` (vmap axes over runs).
"""
from angle_jax.core.axes import seed_axes
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.types import (AlgoSpec, Algorithm, Exploration, MetaLearner, Module, ModuleOutput, ModuleSpec,
                                  NStepBatch, Rollout, Transition, Validation, as_nstep_batch)

__all__ = ["AlgoSpec", "Algorithm", "Exploration", "Kernels", "MetaLearner", "Module", "ModuleOutput", "ModuleSpec",
           "NStepBatch", "Rollout", "Transition", "Validation", "XLA", "as_nstep_batch", "seed_axes"]
