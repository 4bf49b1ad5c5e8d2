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
paper, it is measured with fixed reference hyperparameters:

- TD3, DDPG, SAC (`td_validation_loss`): the TD error of the updated critic
  on the validation half of a replay batch under a reference discount γ'
  (the configured initial γ), the target held constant (stop-gradient).
- PPO (`ppo_validation`): the policy loss (clipped surrogate, or plain
  policy gradient) of the updated policy on the second half (in time) of the
  rollout, with GAE advantages under reference γ', λ' (the configured
  initial values); the inner update is PPO's whole learning step on the
  first half, with the agent's own γ, λ in its GAE.

η then only reaches J through the parameters it produced.

Works for any algorithm whose `update(state, batch, key)` reads its
hyperparameters from `state.hparams` (a struct dataclass or a dict) and that
provides a `Validation`; `VALIDATION_OBJECTIVES` maps algorithm names to
their factories.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

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
    inner = algo.update if inner_update is None else inner_update

    def eta_of(raw: dict) -> dict:
        return {n: to_bounded(raw[n], *bounds[n]) for n in params}

    def init(key: jax.Array, agent_state: Any, spec_: EnvSpec | None = None) -> MetaGradientState:
        del key, spec_
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


# ---- validation objectives ----------------------------------------------------------

class Validation(NamedTuple):
    """An algorithm's meta-objective: `objective(updated_state, val_data, key) -> J`, and
    `prepare(agent_state, val_batch) -> val_data`, run on the validation half with the
    pre-update state (None: the half is used as it is). What `prepare` computes does not
    depend on η, e.g. PPO's behaviour log-probs and reference advantages."""

    objective: Objective
    prepare: Callable[[Any, Any], Any] | None = None
    update: Callable | None = None  # the inner step to differentiate through (None: the algorithm's update)


def td_validation_loss(critic: Any, next_value: Callable, gamma: float, actor_term: Callable | None = None,
                       actor_weight: float = 0.0) -> Objective:
    """The shared actor-critic meta-objective: TD error of the updated critic on held-out
    transitions, `sum_i mean (Q_i(s, a) - y)²` with `y = r + γ' (1 - terminated) next_value`.

    `next_value(state, next_obs, key) -> [batch]` reads the updated state's target networks;
    the target is held constant (stop-gradient), so η reaches J only through the critic
    parameters its update produced. With `actor_weight > 0`, adds that multiple of
    `actor_term(state, frozen_critic_params, obs, key)`, the updated actor's loss under the
    frozen updated critic, which gives actor hyperparameters a meta-gradient too.
    """
    from angle_jax.algos import actor_critic as ac

    def objective(agent_state: Any, batch: Any, key: jax.Array) -> jax.Array:
        v = next_value(agent_state, batch.next_obs, key)
        target = jax.lax.stop_gradient(
            ac.bellman_target(v, batch.reward, batch.terminated, jnp.asarray(gamma, v.dtype)))
        q = critic.apply(agent_state.critic_params, batch.obs, batch.action)
        value = ac.ensemble_td_loss(q, target)
        if actor_weight:
            frozen = jax.lax.stop_gradient(agent_state.critic_params)
            value = value + actor_weight * actor_term(agent_state, frozen, batch.obs, jax.random.fold_in(key, 1))
        return value

    return objective


def _reference(value: float | None, default: float) -> float:
    return float(default if value is None else value)


def td3_validation_loss(algo_config: Any, spec: EnvSpec, reference_gamma: float | None = None,
                        actor_weight: float = 0.0) -> Objective:
    """TD3's meta-objective (`td_validation_loss`): the target is
    r + γ' (1 - terminated) min_i Q_i'(s', π'(s') + ε) with the updated target networks, a
    fixed reference γ' (default: the configured γ) and the configured target smoothing
    noise; the actor term is the deterministic policy-gradient loss."""
    from angle_jax.algos import td3

    actor, critic = td3.networks(algo_config, spec)
    noise, noise_clip = float(algo_config.target_noise), float(algo_config.target_noise_clip)

    def next_value(state, next_obs, key):
        next_action = td3.target_policy_smoothing(
            actor.apply(state.actor_target, next_obs), key, jnp.float32(noise), jnp.float32(noise_clip))
        return jnp.min(critic.apply(state.critic_target, next_obs, next_action), axis=0)

    def actor_term(state, frozen, obs, key):
        del key
        return td3.actor_loss(td3.first_member_q(critic, frozen, obs, actor.apply(state.actor_params, obs)))

    return td_validation_loss(critic, next_value, _reference(reference_gamma, algo_config.gamma), actor_term,
                              actor_weight)


def td3_validation(algo_config: Any, spec: EnvSpec, reference_gamma: float | None = None,
                   actor_weight: float = 0.0) -> Validation:
    """`td3_validation_loss`, differentiated through TD3's critic half alone when J has no actor
    term. The delayed actor step reaches J only through the target networks, which J holds
    constant, so it adds nothing to ∂J/∂η; skipping it changes only the (constant) target by
    one polyak step, and takes the meta step from 61 to 33 matrix products (TD3, 64x64)."""
    from angle_jax.algos import td3

    objective = td3_validation_loss(algo_config, spec, reference_gamma, actor_weight)
    return Validation(objective, update=None if actor_weight else td3.make_critic_update(algo_config, spec))


def ddpg_validation_loss(algo_config: Any, spec: EnvSpec, reference_gamma: float | None = None,
                         actor_weight: float = 0.0) -> Objective:
    """DDPG's meta-objective (`td_validation_loss`): target r + γ' (1 - terminated) Q'(s', μ'(s'))
    with the updated target networks; the actor term is the deterministic policy-gradient loss."""
    from angle_jax.algos import actor_critic as ac
    from angle_jax.algos import ddpg

    actor, critic = ddpg.networks(algo_config, spec)

    def next_value(state, next_obs, key):
        del key
        return critic.apply(state.critic_target, next_obs, actor.apply(state.actor_target, next_obs))[0]

    def actor_term(state, frozen, obs, key):
        del key
        q_pi = ac.first_member_q(critic, frozen, obs, actor.apply(state.actor_params, obs))
        return ac.deterministic_policy_loss(q_pi)

    return td_validation_loss(critic, next_value, _reference(reference_gamma, algo_config.gamma), actor_term,
                              actor_weight)


def sac_validation_loss(algo_config: Any, spec: EnvSpec, reference_gamma: float | None = None,
                        actor_weight: float = 0.0) -> Objective:
    """SAC's meta-objective (`td_validation_loss`): the soft target
    r + γ' (1 - terminated) (min_i Q_i'(s', a') - α log π'(a'|s')), a' ~ π'(·|s'), with the updated
    actor, target critic and temperature; the actor term is SAC's actor loss (α held constant)."""
    from angle_jax.algos import sac

    actor, critic = sac.networks(algo_config, spec)

    def policy(state, obs):
        return sac.squashed_gaussian(*actor.apply(state.actor_params, obs))

    def next_value(state, next_obs, key):
        action, log_prob = policy(state, next_obs).sample_and_log_prob(seed=key)
        next_q = jnp.min(critic.apply(state.critic_target, next_obs, action), axis=0)
        return next_q - jnp.exp(state.log_alpha) * log_prob

    def actor_term(state, frozen, obs, key):
        action, log_prob = policy(state, obs).sample_and_log_prob(seed=key)
        alpha = jax.lax.stop_gradient(jnp.exp(state.log_alpha))
        return sac.sac_actor_loss(critic.apply(frozen, obs, action), log_prob, alpha)

    return td_validation_loss(critic, next_value, _reference(reference_gamma, algo_config.gamma), actor_term,
                              actor_weight)


PPO_POLICY_LOSSES = ("clipped", "pg")


def ppo_validation(algo_config: Any, spec: EnvSpec, reference_gamma: float | None = None,
                   reference_lambda: float | None = None, policy_loss: str = "clipped") -> Validation:
    """PPO's meta-objective (Xu et al. 2018): the policy loss of the updated policy on the
    validation half of the rollout, with advantages from GAE under fixed reference γ', λ'
    (defaults: the configured γ and λ) and the pre-update value function.

    `prepare` scores the validation half with the pre-update (behaviour) parameters and
    (γ', λ'); none of it depends on η, so η reaches J only through the policy parameters
    its update produced. `policy_loss` is "clipped" (PPO's clipped surrogate with the
    configured ε against the behaviour log-probs) or "pg" (-mean A log π'). Advantages are
    normalised as in the agent's loss when the config normalises them. The meta-learner's
    inner update runs PPO on the first half of the rollout (in time), so `minibatches` must
    divide `num_envs * (rollout_length // 2)`.
    """
    from angle_jax.algos import ppo
    from angle_jax.networks.policies import policy_distribution

    if policy_loss not in PPO_POLICY_LOSSES:
        raise ValueError(f"meta.policy_loss must be one of {', '.join(PPO_POLICY_LOSSES)}, got {policy_loss!r}")
    half = (algo_config.rollout_length // 2) * spec.num_envs
    if algo_config.rollout_length < 2 or half % algo_config.minibatches:
        raise ValueError(
            f"meta-gradients run PPO's update on the first half of each rollout: agent.minibatches "
            f"({algo_config.minibatches}) must divide num_envs * (rollout_length // 2) "
            f"({spec.num_envs} * {algo_config.rollout_length // 2} = {half})")
    net = ppo.network(algo_config, spec)
    gamma = _reference(reference_gamma, algo_config.gamma)
    lam = _reference(reference_lambda, algo_config.gae_lambda)
    clip_eps = float(algo_config.clip_eps)

    def prepare(agent_state: Any, rollout: Any) -> Any:
        return ppo.score_rollout(net, spec, agent_state.params, rollout, jnp.float32(gamma), jnp.float32(lam))

    def objective(agent_state: Any, batch: Any, key: jax.Array) -> jax.Array:
        del key
        outputs = net.apply(agent_state.params, batch.obs, method=net.actor_outputs)
        log_prob = policy_distribution(outputs, spec.discrete).log_prob(batch.action)
        adv = batch.advantage
        if algo_config.normalize_advantages:
            adv = ppo.normalize_advantages(adv)
        adv = jax.lax.stop_gradient(adv)
        if policy_loss == "pg":
            return ppo.policy_gradient_loss(log_prob, adv)
        return ppo.ppo_policy_loss(log_prob, batch.log_prob, adv, jnp.asarray(clip_eps, log_prob.dtype))

    return Validation(objective, prepare)


VALIDATION_OBJECTIVES: dict[str, Callable[..., Validation]] = {
    "td3": td3_validation,
    "ddpg": lambda config, spec, **kw: Validation(ddpg_validation_loss(config, spec, **kw)),
    "sac": lambda config, spec, **kw: Validation(sac_validation_loss(config, spec, **kw)),
    "ppo": ppo_validation,
}

# meta.<option> keys each algorithm's validation objective takes
OBJECTIVE_OPTIONS: dict[str, tuple[str, ...]] = {
    "td3": ("reference_gamma", "actor_weight"),
    "ddpg": ("reference_gamma", "actor_weight"),
    "sac": ("reference_gamma", "actor_weight"),
    "ppo": ("reference_gamma", "reference_lambda", "policy_loss"),
}


def validation_objective(algo_name: str, algo_config: Any, spec: EnvSpec, **kwargs) -> Validation:
    """The registered meta-objective of `algo_name`, or a ValueError naming those that have one
    (or the options this one takes)."""
    if algo_name not in VALIDATION_OBJECTIVES:
        raise ValueError(f"meta-gradients need a validation objective; algorithm {algo_name!r} has none "
                         f"(available for: {', '.join(sorted(VALIDATION_OBJECTIVES))})")
    valid = OBJECTIVE_OPTIONS[algo_name]
    for name in kwargs:
        if name not in valid:
            raise ValueError(f"meta.{name} does not apply to {algo_name} (its objective options: "
                             f"{', '.join(valid)})")
    return VALIDATION_OBJECTIVES[algo_name](algo_config, spec, **kwargs)
