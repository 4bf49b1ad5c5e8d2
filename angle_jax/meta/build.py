"""One `MetaLearner` from a typed meta config: meta-gradients on an algorithm's traced
hyperparameters and auxiliary models, run on the same batches every `interval` iterations."""
from __future__ import annotations

from typing import Any

import jax
from flax import struct

from angle_jax.core.optim import get_hparams, hparam_names
from angle_jax.core.types import AlgoSpec, Algorithm, MetaLearner
from angle_jax.meta.auxiliary import AuxState, make_auxiliary
from angle_jax.meta.config import AuxiliaryConfig, MetaConfig
from angle_jax.meta.meta_gradient import MetaGradientState, make_meta_gradient


@struct.dataclass
class MetaState:
    """The state of a combined meta learner: meta-gradient part and auxiliary models (either may be None)."""

    gradient: MetaGradientState | None
    aux: AuxState | None


def combine(gradient: MetaLearner | None, aux: MetaLearner | None, interval: int) -> MetaLearner:
    """One `MetaLearner` running the auxiliary models and the meta-gradient step on the same batch.

    The auxiliary models learn from the whole batch; the meta-gradient step
    splits it into train and validation halves.
    """
    if gradient is None and aux is None:
        raise ValueError("combine needs a meta-gradient learner, an auxiliary learner, or both")

    def init(key: jax.Array, agent_state: Any, spec: Any) -> MetaState:
        k_g, k_a = jax.random.split(key)
        return MetaState(
            gradient=gradient.init(k_g, agent_state, spec) if gradient is not None else None,
            aux=aux.init(k_a, agent_state, spec) if aux is not None else None,
        )

    def update(meta_state: MetaState, agent_state: Any, batch: Any, key: jax.Array):
        k_g, k_a = jax.random.split(key)
        metrics: dict = {}
        aux_state, grad_state = meta_state.aux, meta_state.gradient
        if aux is not None:
            aux_state, agent_state, m = aux.update(aux_state, agent_state, batch, k_a)
            metrics.update(m)
        if gradient is not None:
            grad_state, agent_state, m = gradient.update(grad_state, agent_state, batch, k_g)
            metrics.update(m)
        return MetaState(grad_state, aux_state), agent_state, metrics

    return MetaLearner(init=init, update=update, interval=int(interval))


def learned_hparam_names(meta: MetaConfig, algo_spec: AlgoSpec) -> tuple[str, ...]:
    """The hyperparameters `meta` asks meta-gradients to learn (() when it asks for none)."""
    if not meta.wants_gradient:
        return ()
    return tuple(algo_spec.meta_params if meta.params is None else meta.params)


def default_bounds(name: str, initial: float) -> tuple[float, float]:
    """Bounds used for a meta-learned hyperparameter when the config gives none."""
    if name == "gamma":
        return (0.9, 0.9999)
    if name == "gae_lambda":
        return (0.0, 1.0)
    if initial > 0:
        return (initial / 10.0, initial * 10.0)
    raise ValueError(f"meta.bounds.{name} is required (no default range around initial value {initial})")


def build_meta_learner(meta: MetaConfig, auxiliary: tuple[str, ...], algo: Algorithm, algo_spec: AlgoSpec,
                       env_spec: Any) -> MetaLearner | None:
    """The meta learner `meta` and `auxiliary` ask for, or None; every problem is a ValueError here."""
    auxiliary = tuple(auxiliary)
    meta.validate(auxiliary)
    if not meta.is_set and not auxiliary:
        return None
    if auxiliary and algo_spec.loop == "on_policy":
        raise ValueError(f"auxiliary models ({', '.join(auxiliary)}) learn from replay batches and run only "
                         f"with off-policy algorithms; {algo_spec.name} is on-policy "
                         f"(remove `auxiliary`, keep `meta` for meta-gradients)")
    interval = meta.resolved_interval()
    gradient = _meta_gradient(meta, algo, algo_spec, env_spec, interval) if meta.wants_gradient else None
    aux = None
    if auxiliary:
        options = meta.auxiliary or AuxiliaryConfig()
        aux = make_auxiliary(env_spec, auxiliary, hidden=tuple(options.hidden), learning_rate=options.learning_rate,
                             risk_reward_below=options.risk_reward_below, interval=interval)
    return combine(gradient, aux, interval)


def _meta_gradient(meta: MetaConfig, algo: Algorithm, algo_spec: AlgoSpec, env_spec: Any,
                   interval: int) -> MetaLearner:
    name = algo_spec.name
    if algo_spec.meta_options is None or algo.validation is None:
        raise ValueError(f"meta-gradients need a validation objective; algorithm {name!r} has none")
    params = learned_hparam_names(meta, algo_spec)
    state = jax.eval_shape(lambda k: algo.init(k, env_spec), jax.random.PRNGKey(0))
    available = hparam_names(state)
    if not available:
        raise ValueError(f"algorithm {name!r} keeps no hparams in its state; nothing to meta-learn")
    for p in params:
        if p not in available:
            raise ValueError(f"unknown meta.params entry {p!r}: {name} hyperparameters are {', '.join(available)}")
    for p in meta.bounds:
        if p not in params:
            raise ValueError(f"meta.bounds.{p} is given but {p!r} is not in meta.params {list(params)}")
    initial = _initial_hparams(algo, env_spec, params)
    bounds = {}
    for p in params:
        low, high = (float(v) for v in meta.bounds[p]) if p in meta.bounds else default_bounds(p, initial[p])
        if not low < initial[p] < high:
            raise ValueError(f"meta.bounds.{p} [{low}, {high}] does not contain the initial value "
                             f"{initial[p]} (agent.{p}); widen the bounds or change agent.{p}")
        bounds[p] = (low, high)
    options = meta.objective_options()
    for option in options:
        if option not in algo_spec.meta_options:
            raise ValueError(f"meta.{option} does not apply to {name} (its objective options: "
                             f"{', '.join(algo_spec.meta_options)})")
    validation = algo.validation(**options)
    return make_meta_gradient(algo, validation.objective, params=params, meta_lr=meta.resolved_meta_lr(),
                              bounds=bounds, interval=interval, prepare=validation.prepare,
                              inner_update=validation.update)


def _initial_hparams(algo: Algorithm, spec: Any, names: tuple[str, ...]) -> dict[str, float]:
    """Initial values of hparams `names`: from same-named config fields, else from an `init`."""
    values, missing = {}, []
    for n in names:
        v = getattr(algo.config, n, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[n] = float(v)
        else:
            missing.append(n)
    if missing:
        state = jax.jit(lambda k: algo.init(k, spec))(jax.random.PRNGKey(0))
        values.update({n: float(v) for n, v in get_hparams(state, missing).items()})
    return values
