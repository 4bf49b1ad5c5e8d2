"""PPO (Schulman et al. 2017) with clipped surrogate, GAE and optional value clipping.

The named pieces (`gae`, re-exported from training/modules.py where loop
modules share it, `normalize_advantages`, `ppo_policy_loss`,
`policy_gradient_loss`, `value_loss`, `entropy_bonus`, `approx_kl`,
`clip_fraction`, `score_rollout`) are small functions research code can call
alone. `make` composes them into an `Algorithm` whose `update(state, rollout,
key)` is one whole PPO learning step: score the rollout and compute
advantages, then `epochs x minibatches` gradient steps. γ and λ are read from
the traced `state.hparams` and the advantages stay differentiable in them, so
meta-gradients can tune both (angle_jax/meta/meta_gradient.py). The rollout
comes from `angle_jax.training.on_policy`.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.base import (Algorithm, apply_gradients, direction_optimizer, hparams_from_config,
                                  maybe_pmean)
from angle_jax.algos.on_policy_config import OnPolicyConfig
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.policies import ActorCritic, policy_distribution
from angle_jax.training.modules import Rollout, flatten_steps, gae, minibatch_updates  # noqa: F401 (gae re-exported)

ACTION_KIND = "both"
LOOP = "on_policy"


# ---- named pieces -------------------------------------------------------------

def normalize_advantages(advantages: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Zero mean, unit standard deviation over the (mini)batch."""
    return (advantages - jnp.mean(advantages)) / (jnp.std(advantages) + eps)


def ppo_policy_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                    clip_eps: jax.Array) -> jax.Array:
    """Clipped surrogate: -mean min(ρ A, clip(ρ, 1-ε, 1+ε) A), ρ = π/π_old."""
    chex.assert_equal_shape([log_prob, old_log_prob, advantages])
    ratio = jnp.exp(log_prob - old_log_prob)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -jnp.mean(jnp.minimum(unclipped, clipped))


def policy_gradient_loss(log_prob: jax.Array, advantages: jax.Array) -> jax.Array:
    """Plain policy gradient: -mean A log π, the advantages held constant."""
    chex.assert_equal_shape([log_prob, advantages])
    return -jnp.mean(log_prob * jax.lax.stop_gradient(advantages))


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
               clip_eps: jax.Array | None = None) -> jax.Array:
    """0.5 mean squared error to the returns; with `clip_eps`, the pessimistic max of
    the plain and the clipped (old ± ε) prediction's error."""
    chex.assert_equal_shape([values, old_values, returns])
    err = jnp.square(values - returns)
    if clip_eps is not None:
        clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
        err = jnp.maximum(err, jnp.square(clipped - returns))
    return 0.5 * jnp.mean(err)


def entropy_bonus(entropy: jax.Array) -> jax.Array:
    """Mean policy entropy; the loss subtracts `ent_coef` times this."""
    return jnp.mean(entropy)


def approx_kl(log_prob: jax.Array, old_log_prob: jax.Array) -> jax.Array:
    """Low-variance estimator of KL(π_old || π): mean (ρ - 1) - log ρ."""
    log_ratio = log_prob - old_log_prob
    return jnp.mean(jnp.expm1(log_ratio) - log_ratio)


def clip_fraction(log_prob: jax.Array, old_log_prob: jax.Array, clip_eps: jax.Array) -> jax.Array:
    """Share of samples whose ratio lies outside [1-ε, 1+ε]."""
    ratio = jnp.exp(log_prob - old_log_prob)
    return jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))


# ---- configuration and state ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config(OnPolicyConfig):
    """PPO settings. Sizes and flags are static; the floats listed in `PPOHParams` are traced."""

    epochs: int = 4
    minibatches: int = 4
    clip_value: bool = True
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    vf_clip: float = 0.2

    def validate(self, num_envs: int | None = None) -> None:
        super().validate(num_envs)
        for name in ("epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        for name in ("clip_eps", "vf_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if num_envs is not None and (num_envs * self.rollout_length) % self.minibatches:
            raise ValueError(
                f"minibatches ({self.minibatches}) must divide num_envs * rollout_length "
                f"({num_envs} * {self.rollout_length} = {num_envs * self.rollout_length})")


@struct.dataclass
class PPOHParams:
    """Numeric hyperparameters, traced: sweepable with vmap, differentiable by meta-gradients."""

    learning_rate: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    vf_clip: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array


@struct.dataclass
class PPOState:
    params: dict
    opt_state: tuple
    hparams: PPOHParams
    step: jax.Array  # learning iterations (rollouts consumed) so far

    shared_fields = ("step",)  # one counter for all seeds: see training/axes.py


@struct.dataclass
class PPOBatch:
    """Flat training samples: leaves `[B, ...]`."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    ret: jax.Array


# ---- composition --------------------------------------------------------------

def network(config, spec: EnvSpec) -> ActorCritic:
    return ActorCritic(
        action_dim=spec.action_dim,
        discrete=spec.discrete,
        hidden=tuple(config.hidden),
        activation=config.activation,
        obs_ndim=len(spec.obs_shape),
        torso=config.torso,
        shared_torso=config.shared_torso,
        log_std_init=config.log_std_init,
    )


def num_iterations(config, spec: EnvSpec, total_steps: int | None) -> int | None:
    """Learning iterations in a run of `total_steps` env steps (None: unknown, no annealing)."""
    if total_steps is None:
        return None
    return max(1, total_steps // (config.rollout_length * spec.num_envs))


def lr_schedule(config, spec: EnvSpec, total_steps: int | None):
    """`(base_lr, step) -> lr`: linear decay to 0 over the run when `anneal_lr`."""
    iters = num_iterations(config, spec, total_steps)
    if not config.anneal_lr or iters is None:
        return lambda lr, step: lr
    return lambda lr, step: lr * jnp.maximum(1.0 - step.astype(jnp.float32) / iters, 0.0)


def policy_functions(config, spec: EnvSpec, net: ActorCritic):
    """`act` (mode / clipped mean) and `explore` (a sample, unclipped) over `state.params`."""

    def dist(params, obs):
        return policy_distribution(net.apply(params, obs, method=net.actor_outputs), spec.discrete)

    def act(state, obs):
        d = dist(state.params, obs)
        if spec.discrete:
            return d.mode().astype(jnp.int32)
        return jnp.clip(d.mode(), -1.0, 1.0)

    def explore(state, obs, key, step=None):
        del step
        outputs = net.apply(state.params, obs, method=net.actor_outputs)
        if spec.discrete:
            # what distrax's Categorical.sample draws (Gumbel-max over the logits), without its
            # normalisation and validity checks: a few kernels less per rollout step
            return jax.random.categorical(key, outputs).astype(jnp.int32)
        return policy_distribution(outputs, spec.discrete).sample(seed=key)

    return act, explore


def score_rollout(net: ActorCritic, spec: EnvSpec, params: dict, rollout: Rollout, gamma: jax.Array,
                  gae_lambda: jax.Array) -> PPOBatch:
    """The flat training batch of a rollout: behaviour log-probs and values under `params`,
    GAE advantages (plus the rollout's `advantage_bonus`) and returns under (γ, λ).

    The network outputs and the rollout are held constant; the advantages and returns stay
    differentiable in γ and λ, so meta-gradients reach them through the update.
    """
    rollout = jax.lax.stop_gradient(rollout)
    outputs, values = jax.lax.stop_gradient(net.apply(params, rollout.obs))
    next_values = jax.lax.stop_gradient(net.apply(params, rollout.next_obs, method=net.value))
    log_prob = policy_distribution(outputs, spec.discrete).log_prob(rollout.action)
    advantages, returns = gae(rollout.reward, values, next_values, rollout.terminated, rollout.truncated,
                              gamma, gae_lambda)
    batch = PPOBatch(rollout.obs, rollout.action, log_prob, values, advantages + rollout.advantage_bonus, returns)
    chex.assert_equal_shape([batch.log_prob, batch.value, batch.advantage, batch.ret])
    return flatten_steps(batch)


def make(config: Config, spec: EnvSpec, total_steps: int | None = None) -> Algorithm:
    """PPO for discrete or [-1, 1]-continuous actions; `total_steps` sets the lr annealing horizon."""
    config.validate(spec.num_envs)
    net = network(config, spec)
    tx = direction_optimizer(config.max_grad_norm, eps=config.adam_eps)
    schedule = lr_schedule(config, spec, total_steps)
    act, explore = policy_functions(config, spec, net)

    def init(key: jax.Array, spec_: EnvSpec = spec) -> PPOState:
        params = net.init(key, jnp.zeros((1, *spec_.obs_shape), spec_.obs_dtype))
        return PPOState(params, tx.init(params), hparams_from_config(PPOHParams, config),
                        jnp.zeros((), jnp.int32))

    def loss(params, batch: PPOBatch, hp: PPOHParams):
        outputs, values = net.apply(params, batch.obs)
        d = policy_distribution(outputs, spec.discrete)
        log_prob = d.log_prob(batch.action)
        adv = normalize_advantages(batch.advantage) if config.normalize_advantages else batch.advantage
        p_loss = ppo_policy_loss(log_prob, batch.log_prob, adv, hp.clip_eps)
        v_loss = value_loss(values, batch.value, batch.ret, hp.vf_clip if config.clip_value else None)
        entropy = entropy_bonus(d.entropy())
        total = p_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
        return total, {
            "loss": total, "policy_loss": p_loss, "value_loss": v_loss, "entropy": entropy,
            "approx_kl": approx_kl(log_prob, batch.log_prob),
            "clip_fraction": clip_fraction(log_prob, batch.log_prob, hp.clip_eps),
        }

    def update(state: PPOState, rollout: Rollout, key: jax.Array):
        batch = score_rollout(net, spec, state.params, rollout, state.hparams.gamma, state.hparams.gae_lambda)
        lr = schedule(state.hparams.learning_rate, state.step)

        def step(carry, minibatch, _key):
            params, opt_state = carry
            grads, metrics = jax.grad(loss, has_aux=True)(params, minibatch, state.hparams)
            grads = maybe_pmean(grads, config.axis_name)
            params, opt_state = apply_gradients(tx, params, opt_state, grads, lr)
            return (params, opt_state), metrics

        (params, opt_state), metrics = minibatch_updates(
            step, (state.params, state.opt_state), batch, key, config.epochs, config.minibatches)
        metrics.update(learning_rate=lr, value_mean=jnp.mean(batch.value),
                       advantage_mean=jnp.mean(batch.advantage))
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return Algorithm(init=init, update=update, act=act, explore=explore, config=config, kind="on_policy")
