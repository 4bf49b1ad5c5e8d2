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
paper, it is measured with fixed reference hyperparameters: for TD3,
`td3_validation_loss` is the TD error of the updated critic on the validation
half under a reference discount γ' (the configured initial γ) and the
configured target smoothing noise, with the target held constant
(stop-gradient). η then only reaches J through the parameters it produced.

Works for any algorithm whose `update(state, batch, key)` reads its
hyperparameters from `state.hparams` (a struct dataclass or a dict) and that
provides a validation objective `f(agent_state, batch, key) -> scalar`;
`VALIDATION_OBJECTIVES` maps algorithm names to objective factories.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from angle_jax.algos.base import Algorithm
from angle_jax.envs.base import EnvSpec
from angle_jax.training.off_policy import MetaLearner

Objective = Callable[[Any, Any, jax.Array], jax.Array]

# |raw| is kept below this so the sigmoid never saturates to a zero gradient.
RAW_LIMIT = 10.0


@struct.dataclass
class MetaGradientState:
    """Unconstrained η, the meta optimizer's state and the number of meta steps taken."""

    raw: dict
    opt_state: Any
    count: jax.Array


# ---- hyperparameter access ------------------------------------------------------

def hparam_names(hparams: Any) -> tuple[str, ...]:
    """Field names of a hyperparameter pytree (struct dataclass or dict)."""
    if isinstance(hparams, Mapping):
        return tuple(hparams)
    if dataclasses.is_dataclass(hparams):
        return tuple(f.name for f in dataclasses.fields(hparams))
    raise TypeError(f"agent_state.hparams must be a dataclass or a dict, got {type(hparams).__name__}")


def get_hparams(agent_state: Any, names: Sequence[str]) -> dict:
    hp = agent_state.hparams
    if isinstance(hp, Mapping):
        return {n: hp[n] for n in names}
    return {n: getattr(hp, n) for n in names}


def set_hparams(agent_state: Any, values: Mapping[str, jax.Array]) -> Any:
    """A copy of `agent_state` whose hparams have `values` (dtypes kept); other fields untouched."""
    hp = agent_state.hparams
    old = get_hparams(agent_state, tuple(values))
    cast = {n: jnp.asarray(v).astype(jnp.result_type(old[n])) for n, v in values.items()}
    hp = {**hp, **cast} if isinstance(hp, Mapping) else hp.replace(**cast)
    return agent_state.replace(hparams=hp)


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

def make_meta_gradient(algo: Algorithm, spec: EnvSpec, objective: Objective,
                       params: Sequence[str] = ("gamma",), meta_lr: float = 1e-3,
                       bounds: Mapping[str, Sequence[float]] | None = None,
                       interval: int = 10) -> MetaLearner:
    """A `MetaLearner` tuning `params` of `agent_state.hparams` by meta-gradients.

    `bounds[name] = (low, high)` for every name in `params` (low < high). The
    meta optimizer is Adam with step size `meta_lr` on the unconstrained
    parameters. Metrics: `meta/<name>` (η after the step), `meta/objective`
    (J before the step) and `meta/grad_norm` (norm of ∂J/∂η).
    """
    del spec
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

    def eta_of(raw: dict) -> dict:
        return {n: to_bounded(raw[n], *bounds[n]) for n in params}

    def init(key: jax.Array, agent_state: Any, spec_: EnvSpec | None = None) -> MetaGradientState:
        del key, spec_
        current = get_hparams(agent_state, params)
        raw = {n: to_raw(current[n], *bounds[n]) for n in params}
        return MetaGradientState(raw, tx.init(raw), jnp.zeros((), jnp.int32))

    def update(meta_state: MetaGradientState, agent_state: Any, batch: Any, key: jax.Array):
        train_batch, val_batch = split_batch(batch)

        def loss(raw):
            return inner_objective(algo.update, objective, agent_state, eta_of(raw), train_batch, val_batch, key)

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


# ---- validation objectives ----------------------------------------------------------

def td3_validation_loss(algo_config: Any, spec: EnvSpec, reference_gamma: float | None = None,
                        actor_weight: float = 0.0) -> Objective:
    """TD3's meta-objective: TD error of the updated critic on held-out transitions.

    The target r + γ' (1 - terminated) min_i Q_i'(s', π'(s') + ε) uses the
    updated target networks, a fixed reference γ' (default: the configured
    γ) and the configured target smoothing noise, and is held constant, so
    η affects J only through the critic parameters its update produced.
    With `actor_weight > 0`, adds that multiple of the updated actor's
    deterministic policy-gradient loss under the (frozen) updated critic,
    which gives actor hyperparameters a meta-gradient too.
    """
    from angle_jax.algos import td3

    actor, critic = td3.networks(algo_config, spec)
    gamma_ref = float(algo_config.gamma if reference_gamma is None else reference_gamma)
    noise, noise_clip = float(algo_config.target_noise), float(algo_config.target_noise_clip)

    def objective(agent_state: Any, batch: Any, key: jax.Array) -> jax.Array:
        next_action = td3.target_policy_smoothing(
            actor.apply(agent_state.actor_target, batch.next_obs), key, jnp.float32(noise), jnp.float32(noise_clip))
        next_q = critic.apply(agent_state.critic_target, batch.next_obs, next_action)
        target = jax.lax.stop_gradient(
            td3.twin_q_target(next_q, batch.reward, batch.terminated, jnp.asarray(gamma_ref, next_q.dtype)))
        q = critic.apply(agent_state.critic_params, batch.obs, batch.action)
        value = td3.critic_loss(q, target)
        if actor_weight:
            frozen = jax.lax.stop_gradient(agent_state.critic_params)
            q_pi = td3.first_member_q(critic, frozen, batch.obs, actor.apply(agent_state.actor_params, batch.obs))
            value = value + actor_weight * td3.actor_loss(q_pi)
        return value

    return objective


VALIDATION_OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "td3": td3_validation_loss,
}


def validation_objective(algo_name: str, algo_config: Any, spec: EnvSpec, **kwargs) -> Objective:
    """The registered validation objective of `algo_name`, or a ValueError naming those that have one."""
    if algo_name not in VALIDATION_OBJECTIVES:
        raise ValueError(f"meta-gradients need a validation objective; algorithm {algo_name!r} has none "
                         f"(available for: {', '.join(sorted(VALIDATION_OBJECTIVES))})")
    return VALIDATION_OBJECTIVES[algo_name](algo_config, spec, **kwargs)
