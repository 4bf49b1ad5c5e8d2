"""Meta-gradient hyperparameter adaptation (Xu, van Hasselt, Silver 2018).

Chosen numeric hyperparameters η (fields of `agent_state.hparams`) are tuned
online by differentiating a validation objective through one inner
`algo.update` step:

    θ'(η) = update(θ, η; train half of the batch)
    η    <- η - meta_lr · ∇_η J(θ'(η); validation half)

η lives in an unconstrained space: `η = low + (high - low) · sigmoid(raw)`,
so it stays inside its bounds whatever the meta step size. Only η is written
back into the agent state; the agent's own learning step stays where the
loop puts it.

The validation objective J must not be something η can minimise directly
(a learned γ would otherwise shrink its own targets to zero). As in the
paper, each algorithm measures it with fixed reference hyperparameters
(`Algorithm.validation`): TD3, DDPG and SAC the TD error of the updated
critic under a reference discount γ' (`algos.actor_critic.td_validation`),
PPO the policy loss of the updated policy with GAE advantages under
reference γ', λ'. η then only reaches J through the parameters it produced.

Works for any algorithm whose `update(state, batch, key)` reads its
hyperparameters from `state.hparams` (a struct dataclass or a dict) and whose
`Algorithm.validation` gives its objective (`angle_jax.core.types.Validation`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from angle_jax.core.optim import get_hparams, set_hparams
from angle_jax.core.types import Algorithm, MetaLearner

Objective = Callable[[Any, Any, jax.Array], jax.Array]

# |raw| is kept below this so the sigmoid never saturates to a zero gradient.
RAW_LIMIT = 10.0


@struct.dataclass
class MetaGradientState:
    """Unconstrained η, the meta optimizer's state and the number of meta steps taken."""

    raw: dict
    opt_state: Any
    count: jax.Array


# ---- the bounded parametrisation --------------------------------------------------

def to_bounded(raw: jax.Array, low: float, high: float) -> jax.Array:
    """raw ∈ ℝ -> η ∈ [low, high]."""
    return jnp.clip(low + (high - low) * jax.nn.sigmoid(raw), low, high)


def to_raw(value: jax.Array, low: float, high: float) -> jax.Array:
    """η ∈ (low, high) -> raw, the inverse of `to_bounded` (clipped to ±RAW_LIMIT)."""
    u = (jnp.asarray(value, jnp.float32) - low) / (high - low)
    u = jnp.clip(u, 1e-6, 1.0 - 1e-6)
    return jnp.clip(jnp.log(u) - jnp.log1p(-u), -RAW_LIMIT, RAW_LIMIT)


# ---- the meta-objective and its gradient ----------------------------------------

def split_batch(batch: Any) -> tuple[Any, Any]:
    """Train and validation halves along the leading (batch) axis."""
    n = jax.tree.leaves(batch)[0].shape[0]
    if n < 2:
        raise ValueError(f"a meta-gradient batch needs at least 2 samples, got {n}")
    half = n // 2
    return jax.tree.map(lambda x: x[:half], batch), jax.tree.map(lambda x: x[half:2 * half], batch)


def inner_objective(update: Callable, objective: Objective, agent_state: Any, eta: Mapping[str, jax.Array],
                    train_batch: Any, val_batch: Any, key: jax.Array) -> jax.Array:
    """J(θ'(η)): the validation objective after one inner update run with hyperparameters η."""
    k_update, k_val = jax.random.split(key)
    state = set_hparams(agent_state, eta)
    new_state, _ = update(state, train_batch, k_update)
    return objective(new_state, val_batch, k_val)


def meta_gradient(update: Callable, objective: Objective, agent_state: Any, eta: Mapping[str, jax.Array],
                  train_batch: Any, val_batch: Any, key: jax.Array) -> tuple[jax.Array, dict]:
    """(J, ∂J/∂η) through one inner update, η given as a dict of scalars."""
    return jax.value_and_grad(
        lambda e: inner_objective(update, objective, agent_state, e, train_batch, val_batch, key))(dict(eta))


# ---- the MetaLearner --------------------------------------------------------------

def make_meta_gradient(algo: Algorithm, objective: Objective,
                       params: Sequence[str] = ("gamma",), meta_lr: float = 1e-3,
                       bounds: Mapping[str, Sequence[float]] | None = None,
                       interval: int = 10, prepare: Callable[[Any, Any], Any] | None = None,
                       inner_update: Callable | None = None) -> MetaLearner:
    """A `MetaLearner` tuning `params` of `agent_state.hparams` by meta-gradients.

    The batch it is given (a replay batch, or an on-policy rollout `[T, N, ...]`) is
    split along its leading axis: the inner update learns from the first half, the
    objective is measured on the second, after `prepare(agent_state, half)` when given
    (see `Validation`). `inner_update` replaces `algo.update` as the inner step, e.g. the
    critic half of an actor-critic update when J reads only the critic.
    `bounds[name] = (low, high)` for every name in `params` (low < high). The meta
    optimizer is Adam with step size `meta_lr` on the unconstrained parameters. Metrics:
    `meta/<name>` (η after the step), `meta/objective` (J before the step) and
    `meta/grad_norm` (norm of ∂J/∂η).
    """
    params = tuple(params)
    if not params:
        raise ValueError("make_meta_gradient needs at least one hyperparameter name")
    if len(set(params)) != len(params):
        raise ValueError(f"duplicate hyperparameter names in {list(params)}")
    bounds = dict(bounds or {})
    for name in params:
        if name not in bounds:
            raise ValueError(f"no bounds given for meta-learned hyperparameter {name!r}")
        low, high = (float(b) for b in bounds[name])
        if not low < high:
            raise ValueError(f"bounds for {name!r} must satisfy low < high, got [{low}, {high}]")
        bounds[name] = (low, high)
    if int(interval) <= 0:
        raise ValueError(f"meta interval must be positive, got {interval}")
    if meta_lr <= 0:
        raise ValueError(f"meta_lr must be positive, got {meta_lr}")
    tx = optax.adam(meta_lr)
    inner = algo.update if inner_update is None else inner_update

    def eta_of(raw: dict) -> dict:
        return {n: to_bounded(raw[n], *bounds[n]) for n in params}

    def init(key: jax.Array, agent_state: Any, spec: Any = None) -> MetaGradientState:
        del key, spec
        current = get_hparams(agent_state, params)
        raw = {n: to_raw(current[n], *bounds[n]) for n in params}
        return MetaGradientState(raw, tx.init(raw), jnp.zeros((), jnp.int32))

    def update(meta_state: MetaGradientState, agent_state: Any, batch: Any, key: jax.Array):
        train_batch, val_batch = split_batch(batch)
        if prepare is not None:
            val_batch = jax.lax.stop_gradient(prepare(agent_state, val_batch))

        def loss(raw):
            return inner_objective(inner, objective, agent_state, eta_of(raw), train_batch, val_batch, key)

        value, grads = jax.value_and_grad(loss)(meta_state.raw)
        # A non-finite meta-gradient (e.g. a diverging inner step) is skipped, never applied:
        # η and the meta-optimizer state stay as they were.
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        safe = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
        step, new_opt = tx.update(safe, meta_state.opt_state, meta_state.raw)
        opt_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_opt, meta_state.opt_state)
        raw = jax.tree.map(lambda r, s: jnp.clip(jnp.where(finite, r + s, r), -RAW_LIMIT, RAW_LIMIT),
                           meta_state.raw, step)
        eta = eta_of(raw)
        agent_state = set_hparams(agent_state, eta)
        metrics = {f"meta/{n}": eta[n] for n in params}
        metrics["meta/objective"] = value
        metrics["meta/grad_norm"] = optax.tree.norm(safe)
        metrics["meta/skipped"] = 1.0 - finite.astype(jnp.float32)
        return MetaGradientState(raw, opt_state, meta_state.count + 1), agent_state, metrics

    return MetaLearner(init=init, update=update, interval=int(interval))
