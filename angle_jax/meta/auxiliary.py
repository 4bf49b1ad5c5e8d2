"""Auxiliary "substrate" models trained beside the agent from its replay batches.

- forecast: an MLP predicting the next observation (as a change from the
  current one) and the reward from (observation, action); MSE loss.
- risk: a logistic MLP predicting the probability of an adverse event after
  (observation, action): termination on this step (k = 1), or, with
  `risk_reward_below` set, a reward below that threshold; BCE loss.

Each model has its own params and optax state. Predictions are pure
functions of the state: `forecast(aux_state, obs, action)` and
`risk(aux_state, obs, action)`; the network shapes are read from the
parameters, so these functions need nothing else. Quality is measured on each
fresh batch before the model learns from it: forecast MSE, risk Brier
score and ROC AUC (NaN when the batch holds only one class).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from angle_jax.core.types import MetaLearner
from angle_jax.envs.base import EnvSpec

AUXILIARY_NAMES = ("forecast", "risk")


@struct.dataclass
class ModelState:
    """One auxiliary model: MLP params and its optimizer state. The architecture is
    read from the parameter shapes, so the state carries no static fields and
    vmaps over seeds like any other pytree."""

    params: Any
    opt_state: Any


@struct.dataclass
class AuxState:
    forecast: ModelState | None
    risk: ModelState | None
    count: jax.Array  # auxiliary updates done


# ---- a plain MLP over a list of layers ----------------------------------------------

def mlp_init(key: jax.Array, sizes: Sequence[int]) -> dict:
    """Layers `sizes[0] -> ... -> sizes[-1]`, He-uniform weights, zero biases."""
    layers = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        limit = jnp.sqrt(6.0 / n_in)
        layers.append({"w": jax.random.uniform(k, (n_in, n_out), jnp.float32, -limit, limit),
                       "b": jnp.zeros((n_out,), jnp.float32)})
    return {"layers": layers}


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    layers = params["layers"]
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


# ---- pure prediction functions ------------------------------------------------------

def _inputs(params: dict, obs: jax.Array, action: jax.Array) -> jax.Array:
    """[batch, obs..., ] and [batch, action...] (int actions: one-hot) -> [batch, features]."""
    n = obs.shape[0]
    x = obs.reshape(n, -1).astype(jnp.float32)
    if jnp.issubdtype(action.dtype, jnp.integer):
        num_actions = params["layers"][0]["w"].shape[0] - x.shape[-1]
        a = jax.nn.one_hot(action.reshape(n), num_actions, dtype=jnp.float32)
    else:
        a = action.reshape(n, -1).astype(jnp.float32)
    return jnp.concatenate([x, a], axis=-1)


def _apply(model: ModelState, obs: jax.Array, action: jax.Array) -> jax.Array:
    return mlp_apply(model.params, _inputs(model.params, obs, action))


def _aux(state: Any) -> AuxState:
    """Accept the auxiliary state itself or a container holding it as `.aux`."""
    return state if isinstance(state, AuxState) else state.aux


def forecast(aux_state: Any, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Predicted (next observation, reward) for a batch (one leading axis) of (obs, action)."""
    model = _aux(aux_state).forecast
    if model is None:
        raise ValueError("no forecast model in this state: add 'forecast' to auxiliary")
    out = _apply(model, obs, action)
    delta = out[:, :-1].reshape(obs.shape)
    return obs.astype(jnp.float32) + delta, out[:, -1]


def risk_logit(aux_state: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
    model = _aux(aux_state).risk
    if model is None:
        raise ValueError("no risk model in this state: add 'risk' to auxiliary")
    return _apply(model, obs, action)[..., 0]


def risk(aux_state: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
    """Predicted probability of the adverse event after (obs, action), for a batch (one leading axis)."""
    return jax.nn.sigmoid(risk_logit(aux_state, obs, action))


# ---- losses and quality ---------------------------------------------------------------

def forecast_errors(aux_state: Any, batch: Any) -> tuple[jax.Array, jax.Array]:
    """Mean squared errors of the predicted next observation and reward on a batch."""
    next_obs, reward = forecast(aux_state, batch.obs, batch.action)
    obs_err = jnp.mean(jnp.square(next_obs - batch.next_obs.astype(jnp.float32)))
    rew_err = jnp.mean(jnp.square(reward - batch.reward))
    return obs_err, rew_err


def risk_labels(batch: Any, reward_below: float | None) -> jax.Array:
    if reward_below is None:
        return batch.terminated.astype(jnp.float32)
    return (batch.reward < reward_below).astype(jnp.float32)


def bce_from_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def brier_score(prob: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(prob - labels))


def roc_auc(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """P(score of a positive > score of a negative), ties counted half; NaN without both classes."""
    pos = labels > 0.5
    neg = jnp.logical_not(pos)
    greater = (scores[:, None] > scores[None, :]).astype(jnp.float32)
    ties = (scores[:, None] == scores[None, :]).astype(jnp.float32)
    pairs = jnp.logical_and(pos[:, None], neg[None, :]).astype(jnp.float32)
    n = jnp.sum(pairs)
    auc = jnp.sum(pairs * (greater + 0.5 * ties)) / jnp.maximum(n, 1.0)
    return jnp.where(n > 0, auc, jnp.nan)


# ---- the MetaLearner ------------------------------------------------------------------

def _obs_size(spec: EnvSpec) -> int:
    size = 1
    for d in spec.obs_shape:
        size *= d
    return size


def make_auxiliary(spec: EnvSpec, names: Sequence[str] = AUXILIARY_NAMES, hidden: Sequence[int] = (64, 64),
                   learning_rate: float = 1e-3, risk_reward_below: float | None = None,
                   interval: int = 10) -> MetaLearner:
    """A `MetaLearner` training the auxiliary models `names` every `interval` learning iterations.

    Metrics: `aux/forecast_obs_mse`, `aux/forecast_reward_mse`, `aux/forecast_loss`,
    `aux/risk_bce`, `aux/risk_brier`, `aux/risk_auc`, `aux/risk_rate` (label mean).
    """
    names = tuple(names)
    unknown = [n for n in names if n not in AUXILIARY_NAMES]
    if unknown:
        raise ValueError(f"unknown auxiliary model {unknown[0]!r} (valid: {', '.join(AUXILIARY_NAMES)})")
    if not names:
        raise ValueError("make_auxiliary needs at least one model name")
    if int(interval) <= 0:
        raise ValueError(f"auxiliary interval must be positive, got {interval}")
    if learning_rate <= 0:
        raise ValueError(f"auxiliary learning_rate must be positive, got {learning_rate}")
    hidden = tuple(int(h) for h in hidden)
    if not hidden or any(h <= 0 for h in hidden):
        raise ValueError(f"auxiliary hidden must be a non-empty list of positive widths, got {list(hidden)}")
    tx = optax.adam(learning_rate)
    num_actions = spec.action_space.n if spec.discrete else 0
    outs = {"forecast": _obs_size(spec) + 1, "risk": 1}

    in_size = _obs_size(spec) + (num_actions if num_actions else spec.action_dim)

    def init_model(name: str, key: jax.Array) -> ModelState:
        params = mlp_init(key, (in_size, *hidden, outs[name]))
        return ModelState(params, tx.init(params))

    def init(key: jax.Array, agent_state: Any = None, spec_: EnvSpec | None = None) -> AuxState:
        del agent_state, spec_
        k_f, k_r = jax.random.split(key)
        return AuxState(
            forecast=init_model("forecast", k_f) if "forecast" in names else None,
            risk=init_model("risk", k_r) if "risk" in names else None,
            count=jnp.zeros((), jnp.int32),
        )

    def step(model: ModelState, loss_fn) -> tuple[ModelState, Any]:
        """One optimizer step; returns the new model and `loss_fn`'s aux output at the old params."""
        (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(model.params)
        updates, opt_state = tx.update(grads, model.opt_state, model.params)
        return ModelState(optax.apply_updates(model.params, updates), opt_state), out

    def update(aux_state: AuxState, agent_state: Any, batch: Any, key: jax.Array):
        del key
        metrics = {}
        new_forecast, new_risk = aux_state.forecast, aux_state.risk
        if aux_state.forecast is not None:
            def f_loss(params):
                obs_err, rew_err = forecast_errors(AuxState(ModelState(params, None), None, aux_state.count), batch)
                return obs_err + rew_err, (obs_err, rew_err)

            new_forecast, (obs_err, rew_err) = step(aux_state.forecast, f_loss)
            metrics.update({"aux/forecast_obs_mse": obs_err, "aux/forecast_reward_mse": rew_err,
                            "aux/forecast_loss": obs_err + rew_err})
        if aux_state.risk is not None:
            labels = risk_labels(batch, risk_reward_below)

            def r_loss(params):
                logits = risk_logit(AuxState(None, ModelState(params, None), aux_state.count), batch.obs, batch.action)
                return bce_from_logits(logits, labels), logits

            new_risk, logits = step(aux_state.risk, r_loss)
            prob = jax.nn.sigmoid(logits)
            metrics.update({"aux/risk_bce": bce_from_logits(logits, labels), "aux/risk_brier": brier_score(prob, labels),
                            "aux/risk_auc": roc_auc(prob, labels), "aux/risk_rate": jnp.mean(labels)})
        return AuxState(new_forecast, new_risk, aux_state.count + 1), agent_state, metrics

    return MetaLearner(init=init, update=update, interval=int(interval))
