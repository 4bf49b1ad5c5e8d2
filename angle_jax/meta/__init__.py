"""Meta-learning beside the agent: meta-gradient hyperparameters and auxiliary models.

`build_meta_learner(run_config, algo, spec)` turns `run_config.meta` and
`run_config.auxiliary` into one `MetaLearner` for the off-policy or the
on-policy loop (or None when neither is set), checking the whole
configuration first:

    meta:
      kind: meta_gradient          # the only kind so far
      interval: 10                 # learning iterations between meta steps (default 10)
      params: [gamma, critic_lr]   # fields of the agent's hparams (default [gamma]; ppo: [gamma, gae_lambda])
      meta_lr: 1.0e-3
      bounds: {gamma: [0.9, 0.999]}   # others default: see `default_bounds`
      reference_gamma: 0.99        # γ' of the validation objective (default: agent.gamma)
      actor_weight: 0.0            # TD3, DDPG, SAC: weight of the actor term in the objective
      reference_lambda: 0.95       # PPO: λ' of the validation objective (default: agent.gae_lambda)
      policy_loss: clipped         # PPO: the objective's policy loss, clipped or pg
      auxiliary: {hidden: [64, 64], learning_rate: 1.0e-3, risk_reward_below: null}
    auxiliary: [forecast, risk]    # off-policy algorithms only

With `auxiliary` set and no meta-gradient keys, `meta` may hold just
`interval` and `auxiliary` options. Meta-gradients are available for the
algorithms in `VALIDATION_OBJECTIVES` (td3, ddpg, sac, ppo).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
from flax import struct

from angle_jax.meta.auxiliary import (AUXILIARY_NAMES, AuxState, brier_score, forecast, make_auxiliary,
                                      risk, roc_auc)
from angle_jax.meta.meta_gradient import (OBJECTIVE_OPTIONS, VALIDATION_OBJECTIVES, MetaGradientState, Validation,
                                          ddpg_validation_loss, hparam_names, make_meta_gradient, meta_gradient,
                                          ppo_validation, sac_validation_loss, td3_validation_loss,
                                          td_validation_loss, validation_objective)
from angle_jax.training.off_policy import MetaLearner

META_KINDS = ("meta_gradient",)
# meta.params when the config gives none (Xu et al. 2018 adapt PPO-style agents' γ and λ together)
DEFAULT_PARAMS: dict[str, tuple[str, ...]] = {"ppo": ("gamma", "gae_lambda")}
DEFAULT_INTERVAL = 10
DEFAULT_META_LR = 1e-3
_GRADIENT_KEYS = ("kind", "params", "meta_lr", "bounds", "reference_gamma", "actor_weight", "reference_lambda",
                  "policy_loss")
_META_KEYS = _GRADIENT_KEYS + ("interval", "auxiliary")
_AUX_KEYS = ("hidden", "learning_rate", "risk_reward_below")

__all__ = [
    "AUXILIARY_NAMES", "AuxState", "META_KINDS", "MetaGradientState", "MetaState", "OBJECTIVE_OPTIONS",
    "VALIDATION_OBJECTIVES", "Validation", "brier_score", "build_meta_learner", "combine", "ddpg_validation_loss",
    "default_bounds", "forecast", "learned_hparam_names", "make_auxiliary", "make_meta_gradient", "meta_gradient",
    "ppo_validation", "risk", "roc_auc", "sac_validation_loss", "td3_validation_loss", "td_validation_loss",
    "validation_objective",
]


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


def learned_hparam_names(run_config: Any) -> tuple[str, ...]:
    """The hyperparameters `run_config.meta` asks meta-gradients to learn (() when it asks for none)."""
    meta = dict(run_config.meta or {})
    if not any(k in meta for k in _GRADIENT_KEYS):
        return ()
    params = meta.get("params", DEFAULT_PARAMS.get(getattr(run_config, "algo", None), ("gamma",)))
    return (params,) if isinstance(params, str) else tuple(params or ())


def default_bounds(name: str, initial: float) -> tuple[float, float]:
    """Bounds used for a meta-learned hyperparameter when the config gives none."""
    if name == "gamma":
        return (0.9, 0.9999)
    if name == "gae_lambda":
        return (0.0, 1.0)
    if initial > 0:
        return (initial / 10.0, initial * 10.0)
    raise ValueError(f"meta.bounds.{name} is required (no default range around initial value {initial})")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    return float(value)


def _check_keys(where: str, given: Mapping, valid: tuple[str, ...]) -> None:
    for key in given:
        if key not in valid:
            raise ValueError(f"unknown key {where}.{key} (valid: {', '.join(valid)})")


def _initial_hparams(algo: Any, spec: Any, names: tuple[str, ...]) -> dict[str, float]:
    """Initial values of hparams `names`: from same-named config fields, else from an eager `init`."""
    values = {}
    missing = []
    for n in names:
        v = getattr(algo.config, n, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[n] = float(v)
        else:
            missing.append(n)
    if missing:
        from angle_jax.meta.meta_gradient import get_hparams

        state = algo.init(jax.random.PRNGKey(0), spec)
        values.update({n: float(v) for n, v in get_hparams(state, missing).items()})
    return values


def build_meta_learner(run_config: Any, algo: Any, spec: Any) -> MetaLearner | None:
    """The meta learner `run_config` asks for, or None; every config problem is a ValueError here."""
    meta = dict(run_config.meta or {})
    aux_names = tuple(run_config.auxiliary or ())
    if not meta and not aux_names:
        return None
    _check_keys("meta", meta, _META_KEYS)

    if aux_names and getattr(algo, "kind", "off_policy") == "on_policy":
        raise ValueError(f"auxiliary models ({', '.join(aux_names)}) learn from replay batches and run only "
                         f"with off-policy algorithms; {getattr(run_config, 'algo', None)} is on-policy "
                         f"(remove `auxiliary`, keep `meta` for meta-gradients)")
    for name in aux_names:
        if name not in AUXILIARY_NAMES:
            raise ValueError(f"unknown auxiliary model {name!r} (valid: {', '.join(AUXILIARY_NAMES)})")
    if len(set(aux_names)) != len(aux_names):
        raise ValueError(f"auxiliary lists a model twice: {list(aux_names)}")

    interval = meta.get("interval", DEFAULT_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
        raise ValueError(f"meta.interval must be a positive integer, got {interval!r}")

    aux_options = meta.get("auxiliary") or {}
    if not isinstance(aux_options, Mapping):
        raise ValueError(f"meta.auxiliary must be a mapping of options, got {aux_options!r}")
    _check_keys("meta.auxiliary", aux_options, _AUX_KEYS)
    if aux_options and not aux_names:
        raise ValueError("meta.auxiliary options are set but no auxiliary models are listed in `auxiliary`")

    wants_gradient = any(k in meta for k in _GRADIENT_KEYS)
    if not wants_gradient and not aux_names:
        raise ValueError("meta sets only an interval: add meta.kind (e.g. meta_gradient) or list auxiliary models")

    gradient = None
    if wants_gradient:
        gradient = _build_meta_gradient(meta, run_config, algo, spec, interval)

    aux = None
    if aux_names:
        hidden = aux_options.get("hidden", (64, 64))
        if isinstance(hidden, int):
            hidden = (hidden,)
        if not isinstance(hidden, (list, tuple)) or not hidden or any(
                isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in hidden):
            raise ValueError(f"meta.auxiliary.hidden must be a list of positive widths, got {hidden!r}")
        lr = _number("meta.auxiliary.learning_rate", aux_options.get("learning_rate", 1e-3))
        if lr <= 0:
            raise ValueError(f"meta.auxiliary.learning_rate must be positive, got {lr}")
        threshold = aux_options.get("risk_reward_below")
        if threshold is not None:
            threshold = _number("meta.auxiliary.risk_reward_below", threshold)
        aux = make_auxiliary(spec, aux_names, hidden=tuple(hidden), learning_rate=lr,
                             risk_reward_below=threshold, interval=interval)
    return combine(gradient, aux, interval)


def _build_meta_gradient(meta: dict, run_config: Any, algo: Any, spec: Any, interval: int) -> MetaLearner:
    kind = meta.get("kind", "meta_gradient")
    if kind not in META_KINDS:
        raise ValueError(f"unknown meta.kind {kind!r} (valid: {', '.join(META_KINDS)})")
    algo_name = getattr(run_config, "algo", None)
    if algo_name not in VALIDATION_OBJECTIVES:
        raise ValueError(f"meta-gradients need a validation objective; algorithm {algo_name!r} has none "
                         f"(available for: {', '.join(sorted(VALIDATION_OBJECTIVES))})")

    params = meta.get("params", DEFAULT_PARAMS.get(algo_name, ("gamma",)))
    if isinstance(params, str):
        params = (params,)
    if not isinstance(params, (list, tuple)) or not params or not all(isinstance(p, str) for p in params):
        raise ValueError(f"meta.params must be a non-empty list of hyperparameter names, got {params!r}")
    params = tuple(params)
    if len(set(params)) != len(params):
        raise ValueError(f"meta.params lists a hyperparameter twice: {list(params)}")
    shapes = jax.eval_shape(lambda k: algo.init(k, spec), jax.random.PRNGKey(0))
    if not hasattr(shapes, "hparams"):
        raise ValueError(f"algorithm {algo_name!r} keeps no hparams in its state; nothing to meta-learn")
    available = hparam_names(shapes.hparams)
    for p in params:
        if p not in available:
            raise ValueError(f"unknown meta.params entry {p!r}: {algo_name} hyperparameters are "
                             f"{', '.join(available)}")

    meta_lr = _number("meta.meta_lr", meta.get("meta_lr", DEFAULT_META_LR))
    if meta_lr <= 0:
        raise ValueError(f"meta.meta_lr must be positive, got {meta_lr}")

    given = meta.get("bounds") or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"meta.bounds must be a mapping name -> [low, high], got {given!r}")
    for name in given:
        if name not in params:
            raise ValueError(f"meta.bounds.{name} is given but {name!r} is not in meta.params {list(params)}")
    initial = _initial_hparams(algo, spec, params)
    bounds = {}
    for name in params:
        if name in given:
            b = given[name]
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                raise ValueError(f"meta.bounds.{name} must be [low, high], got {b!r}")
            low, high = (_number(f"meta.bounds.{name}", v) for v in b)
        else:
            low, high = default_bounds(name, initial[name])
        if not low < high:
            raise ValueError(f"meta.bounds.{name} must satisfy low < high, got [{low}, {high}]")
        if not low < initial[name] < high:
            raise ValueError(f"meta.bounds.{name} [{low}, {high}] does not contain the initial value "
                             f"{initial[name]} (agent.{name}); widen the bounds or change agent.{name}")
        bounds[name] = (low, high)

    objective_kwargs = {}
    for name in ("reference_gamma", "reference_lambda"):
        if name in meta:
            v = _number(f"meta.{name}", meta[name])
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"meta.{name} must be in [0, 1], got {v}")
            objective_kwargs[name] = v
    if "actor_weight" in meta:
        w = _number("meta.actor_weight", meta["actor_weight"])
        if w < 0:
            raise ValueError(f"meta.actor_weight must be >= 0, got {w}")
        objective_kwargs["actor_weight"] = w
    if "policy_loss" in meta:
        objective_kwargs["policy_loss"] = meta["policy_loss"]
    validation = validation_objective(algo_name, algo.config, spec, **objective_kwargs)
    return make_meta_gradient(algo, spec, validation.objective, params=params, meta_lr=meta_lr, bounds=bounds,
                              interval=interval, prepare=validation.prepare, inner_update=validation.update)

