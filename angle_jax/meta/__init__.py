"""Meta-learning beside the agent: meta-gradient hyperparameters (`meta_gradient`), auxiliary
models (`auxiliary`), the typed `meta` config section (`config`) and the learner a run config
asks for (`build`)."""
from angle_jax.meta.auxiliary import AUXILIARY_NAMES, AuxState, brier_score, forecast, make_auxiliary, risk, roc_auc
from angle_jax.meta.build import MetaState, build_meta_learner, combine, default_bounds, learned_hparam_names
from angle_jax.meta.config import META_KINDS, AuxiliaryConfig, MetaConfig
from angle_jax.meta.meta_gradient import (MetaGradientState, inner_objective, make_meta_gradient, meta_gradient,
                                          split_batch, to_bounded, to_raw)

__all__ = [
    "AUXILIARY_NAMES", "AuxState", "AuxiliaryConfig", "META_KINDS", "MetaConfig", "MetaGradientState", "MetaState",
    "brier_score", "build_meta_learner", "combine", "default_bounds", "forecast", "inner_objective",
    "learned_hparam_names", "make_auxiliary", "make_meta_gradient", "meta_gradient", "risk", "roc_auc",
    "split_batch", "to_bounded", "to_raw",
]
