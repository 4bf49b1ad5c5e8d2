"""PPO (Schulman et al. 2017) with clipped surrogate, GAE and optional value clipping.

The named pieces (`ppo_policy_loss`, `policy_gradient_loss`, `value_loss`, `approx_kl`,
`clip_fraction`, `score_rollout`; GAE is `angle_jax.core.returns.gae`, advantage
normalisation and the entropy bonus are shared with A2C in `policy_gradient`) are small
functions research code can call alone. `make` composes them into an `Algorithm` whose
`update(state, rollout, key)` is one whole PPO learning step: score the rollout and compute
advantages, then `epochs x minibatches` gradient steps. γ and λ are read from the traced
`state.hparams` and the advantages stay differentiable in them, so meta-gradients can tune
both (`Algorithm.validation`, angle_jax/meta/). The rollout comes from
`angle_jax.training.on_policy`.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.minibatch import flatten_steps, minibatch_updates
from angle_jax.algos.policy_gradient import (Normalization, OnPolicyConfig, check_normalization, entropy_bonus,
                                             init_normalization, init_params, lr_schedule, memory_for, network,
                                             normalize_advantages, normalize_rollout, policy_functions, recurrent,
                                             recurrent_policy_functions, score_sequences, state_normalized)
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import apply_gradients, direction_optimizer, hparams_from_config, maybe_pmean
from angle_jax.core.returns import gae
from angle_jax.core.types import AlgoSpec, Algorithm, Rollout, Validation, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.policies import ActorCritic, policy_distribution
from angle_jax.networks.recurrent import RecurrentNetwork, unroll

PPO_POLICY_LOSSES = ("clipped", "pg")


# ---- named pieces -------------------------------------------------------------

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
        if num_envs is not None and self.core != "none" and num_envs % self.minibatches:
            raise ValueError(
                f"minibatches ({self.minibatches}) must divide num_envs ({num_envs}): a recurrent policy "
                f"(core {self.core}) learns from minibatches of whole env sequences")
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
    norm: Normalization | None = None  # observation / reward statistics (normalize_obs, normalize_reward)

    shared_fields = ("step",)  # one counter for all seeds: see core/axes.py


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


def score_sequences_batch(net: RecurrentNetwork, spec: EnvSpec, params: dict, rollout: Rollout, gamma: jax.Array,
                          gae_lambda: jax.Array) -> PPOBatch:
    """`score_rollout` for a recurrent net: the same batch, kept time-major `[T, N, ...]` (the
    net runs over the rollout from its stored start state, see `score_sequences`)."""
    rollout = jax.lax.stop_gradient(rollout)
    outputs, values, next_values = jax.lax.stop_gradient(score_sequences(net, params, rollout))
    log_prob = policy_distribution(outputs, spec.discrete).log_prob(rollout.action)
    advantages, returns = gae(rollout.reward, values, next_values, rollout.terminated, rollout.truncated,
                              gamma, gae_lambda)
    return PPOBatch(rollout.obs, rollout.action, log_prob, values, advantages + rollout.advantage_bonus, returns)


def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """PPO for discrete or [-1, 1]-continuous actions; `total_steps` sets the lr annealing horizon."""
    config.validate(spec.num_envs)
    check_normalization(config, spec)
    net = network(config, spec)
    tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, eps=config.adam_eps))
    schedule = lr_schedule(config, spec, total_steps)
    if recurrent(config):
        act, explore = recurrent_policy_functions(config, spec, net)
    else:
        act, explore = policy_functions(config, spec, net)

    def init(key: jax.Array, spec_: EnvSpec = spec) -> PPOState:
        params = init_params(config, spec_, net, key)
        return PPOState(params, tx.init(params), hparams_from_config(PPOHParams, config),
                        jnp.zeros((), jnp.int32), init_normalization(config, spec_))

    def loss(params, batch: PPOBatch, hp: PPOHParams):
        return loss_terms(*net.apply(params, batch.obs), batch, hp)

    def sequence_loss(params, sequences: tuple[PPOBatch, jax.Array, object], hp: PPOHParams):
        """The loss of a minibatch of whole env sequences: fields `[n, T, ...]`, reset `[n, T]`, start core."""
        batch, reset, core = sequences
        batch, reset = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (batch, reset))
        (outputs, values), _ = unroll(net, params, batch.obs, core, reset)
        return loss_terms(outputs, values, flatten_steps(batch), hp, flatten_steps)

    def loss_terms(outputs, values, batch: PPOBatch, hp: PPOHParams, flat=lambda x: x):
        outputs, values = flat((outputs, values))
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
        rollout, norm = normalize_rollout(config, state.norm, rollout, state.hparams.gamma)
        if recurrent(config):
            # minibatches of whole env sequences: env-major fields, the core state at their start
            steps = score_sequences_batch(net, spec, state.params, rollout, state.hparams.gamma,
                                          state.hparams.gae_lambda)
            steps, reset = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (steps, rollout.reset))
            batch = (steps, reset, rollout.core)
            objective = sequence_loss
        else:
            batch = score_rollout(net, spec, state.params, rollout, state.hparams.gamma, state.hparams.gae_lambda)
            objective = loss
        lr = schedule(state.hparams.learning_rate, state.step)

        def step(carry, minibatch, _key):
            params, opt_state = carry
            grads, metrics = jax.grad(objective, has_aux=True)(params, minibatch, state.hparams)
            grads = maybe_pmean(grads, config.axis_name)
            params, opt_state = apply_gradients(tx, params, opt_state, grads, lr)
            return (params, opt_state), metrics

        (params, opt_state), metrics = minibatch_updates(
            step, (state.params, state.opt_state), batch, key, config.epochs, config.minibatches)
        scored = batch[0] if recurrent(config) else batch
        metrics.update(learning_rate=lr, value_mean=jnp.mean(scored.value),
                       advantage_mean=jnp.mean(scored.advantage))
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1, norm=norm), metrics

    def validation(reference_gamma: float | None = None, reference_lambda: float | None = None,
                   policy_loss: str = "clipped") -> Validation:
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
        if recurrent(config):
            raise ValueError(f"meta-gradients do not support a recurrent policy yet (agent.core = {config.core})")
        if state_normalized(config):
            raise ValueError("meta-gradients do not support agent.normalize_obs / agent.normalize_reward yet")
        if policy_loss not in PPO_POLICY_LOSSES:
            raise ValueError(f"meta.policy_loss must be one of {', '.join(PPO_POLICY_LOSSES)}, got {policy_loss!r}")
        half = (config.rollout_length // 2) * spec.num_envs
        if config.rollout_length < 2 or half % config.minibatches:
            raise ValueError(
                f"meta-gradients run PPO's update on the first half of each rollout: agent.minibatches "
                f"({config.minibatches}) must divide num_envs * (rollout_length // 2) "
                f"({spec.num_envs} * {config.rollout_length // 2} = {half})")
        gamma = jnp.float32(config.gamma if reference_gamma is None else reference_gamma)
        lam = jnp.float32(config.gae_lambda if reference_lambda is None else reference_lambda)
        clip_eps = float(config.clip_eps)

        def prepare(agent_state, rollout):
            return score_rollout(net, spec, agent_state.params, rollout, gamma, lam)

        def objective(agent_state, batch: PPOBatch, key: jax.Array) -> jax.Array:
            del key
            outputs = net.apply(agent_state.params, batch.obs, method=net.actor_outputs)
            log_prob = policy_distribution(outputs, spec.discrete).log_prob(batch.action)
            adv = batch.advantage
            if config.normalize_advantages:
                adv = normalize_advantages(adv)
            adv = jax.lax.stop_gradient(adv)
            if policy_loss == "pg":
                return policy_gradient_loss(log_prob, adv)
            return ppo_policy_loss(log_prob, batch.log_prob, adv, jnp.asarray(clip_eps, log_prob.dtype))

        return Validation(objective, prepare)

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  validation=validation, kernels=kernels, memory=memory_for(config)))


SPEC = AlgoSpec(name="ppo", loop="on_policy", action_kind="both", Config=Config, make=make,
                presets={"CartPole-v1": "ppo_cartpole.yaml", "CartPoleNoVel-v1": "ppo_cartpole_novel.yaml",
                         "Pendulum-v1": "ppo_pendulum.yaml",
                         "Breakout-MinAtar": "ppo_minatar.yaml"},
                meta_options=("reference_gamma", "reference_lambda", "policy_loss"),
                meta_params=("gamma", "gae_lambda"))
