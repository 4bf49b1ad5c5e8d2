"""SAC with automatic temperature (Haarnoja et al. 2018, "SAC: Algorithms and Applications").

Twin critics (one `QEnsemble`), a tanh-squashed Gaussian actor whose log-prob
correction comes from distrax's `Tanh` bijector, and a learned temperature α
that drives the policy entropy towards a target (−|A| by default). The named
pieces (`squashed_gaussian`, `soft_q_target`, `sac_critic_loss`,
`sac_actor_loss`, `temperature_loss`) are pure array functions; `make`
composes them with the steps shared by every actor-critic into an `Algorithm`.
"""
from __future__ import annotations

import dataclasses

import chex
import distrax
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos import actor_critic as ac
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import direction_optimizer, gradient_step, hparams_from_config, polyak_update
from angle_jax.core.types import AlgoSpec, Algorithm, Transition, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.policies import SquashedGaussianActor

sac_critic_loss = ac.ensemble_td_loss


@dataclasses.dataclass(frozen=True)
class Config(ac.ActorCriticConfig):
    """SAC settings. `target_entropy` None means −(action dimensions); `alpha_lr` 0 keeps α fixed."""

    num_critics: int = 2
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy: float | None = None
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def validate(self, num_envs: int | None = None) -> None:
        super().validate(num_envs)
        ac.require(self, positive=("init_alpha",), non_negative=("alpha_lr",), at_least_one=("num_critics",))
        if self.log_std_min >= self.log_std_max:
            raise ValueError(f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})")


@struct.dataclass
class SACHParams:
    """Numeric hyperparameters, traced: sweepable with vmap, differentiable by meta-gradients."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    alpha_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    init_alpha: jax.Array
    target_entropy: jax.Array


@struct.dataclass
class SACState:
    actor_params: dict
    critic_params: dict
    critic_target: dict
    log_alpha: jax.Array  # the temperature, learned in log space so it stays positive
    actor_opt: tuple
    critic_opt: tuple
    alpha_opt: tuple
    hparams: SACHParams
    step: jax.Array  # gradient updates done so far

    shared_fields = ("step",)  # one counter for all seeds: see core/axes.py


# ---- named pieces -------------------------------------------------------------

def squashed_gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    """tanh(N(mean, diag(exp(log_std)^2))): actions in (-1, 1)^A, log-prob with the tanh Jacobian."""
    chex.assert_equal_shape([mean, log_std])
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)), distrax.Block(distrax.Tanh(), 1))


def soft_q_target(next_q: jax.Array, next_log_prob: jax.Array, reward: jax.Array, terminated: jax.Array,
                  gamma: jax.Array, alpha: jax.Array) -> jax.Array:
    """Soft clipped double-Q target: r + γ (1 - terminated) (min_i Q_i'(s', a') − α log π(a'|s')).

    next_q: [members, batch] at a' ~ π(·|s'); next_log_prob, reward, terminated: [batch].
    """
    chex.assert_rank(next_q, 2)
    chex.assert_shape(next_log_prob, (next_q.shape[1],))
    return ac.bellman_target(jnp.min(next_q, axis=0) - alpha * next_log_prob, reward, terminated, gamma)


def sac_actor_loss(q_of_policy: jax.Array, log_prob: jax.Array, alpha: jax.Array) -> jax.Array:
    """mean(α log π(a|s) − min_i Q_i(s, a)) at a ~ π(·|s). q_of_policy: [members, batch]."""
    chex.assert_rank(q_of_policy, 2)
    chex.assert_shape(log_prob, (q_of_policy.shape[1],))
    return jnp.mean(alpha * log_prob - jnp.min(q_of_policy, axis=0))


def temperature_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: jax.Array) -> jax.Array:
    """−log α · (mean log π + H̄), with the log-probs held constant.

    Its gradient in log α is (entropy − H̄): α grows while the policy's entropy is below
    the target H̄ and shrinks while it is above.
    """
    chex.assert_rank(log_alpha, 0)
    chex.assert_rank(log_prob, 1)
    return -log_alpha * jax.lax.stop_gradient(jnp.mean(log_prob) + target_entropy)


def default_target_entropy(spec: EnvSpec) -> float:
    """−|A|: one nat less per action dimension than a unit Gaussian, the usual SAC heuristic."""
    return -float(spec.action_dim)


# ---- composition --------------------------------------------------------------

def networks(config: Config, spec: EnvSpec):
    actor = SquashedGaussianActor(spec.action_dim, tuple(config.actor_hidden), config.activation,
                                  len(spec.obs_shape), config.log_std_min, config.log_std_max)
    return actor, ac.make_critic(config, spec, config.num_critics)


def soft_target(policy, critic, state: SACState, batch: Transition, key: jax.Array, gamma: jax.Array) -> jax.Array:
    """`soft_q_target` at a' ~ π(·|s') of `state`'s actor, its target critic and its temperature."""
    next_action, next_log_prob = policy(state.actor_params, batch.next_obs).sample_and_log_prob(seed=key)
    next_q = critic.apply(state.critic_target, batch.next_obs, next_action)
    return soft_q_target(next_q, next_log_prob, batch.reward, batch.terminated, gamma, jnp.exp(state.log_alpha))


def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """SAC for a continuous-action env whose actions live in [-1, 1]."""
    del total_steps
    actor, critic, tx = ac.build("sac", config, spec, networks, kernels)
    alpha_tx = kernels.optimizer(direction_optimizer())
    target_entropy = default_target_entropy(spec) if config.target_entropy is None else config.target_entropy
    hparams = hparams_from_config(SACHParams, dataclasses.replace(config, target_entropy=target_entropy))

    def policy(params: dict, obs: jax.Array) -> distrax.Distribution:
        return squashed_gaussian(*actor.apply(params, obs))

    def init(key: jax.Array, spec_: EnvSpec = spec) -> SACState:
        actor_params, critic_params = ac.init_actor_critic(key, actor, critic, spec_)
        log_alpha = jnp.log(hparams.init_alpha)
        return SACState(actor_params, critic_params, critic_params, log_alpha, tx.init(actor_params),
                        tx.init(critic_params), alpha_tx.init(log_alpha), hparams, jnp.zeros((), jnp.int32))

    def act(state: SACState, obs: jax.Array) -> jax.Array:
        return jnp.tanh(actor.apply(state.actor_params, obs)[0])

    def explore(state: SACState, obs: jax.Array, key: jax.Array, step: jax.Array | None = None) -> jax.Array:
        del step
        return policy(state.actor_params, obs).sample(seed=key)

    def update(state: SACState, batch: Transition, key: jax.Array):
        hp = state.hparams
        k_next, k_pi = kernels.split(key)
        alpha = jnp.exp(state.log_alpha)
        target = soft_target(policy, critic, state, batch, k_next, hp.gamma)
        critic_params, critic_opt, c_loss, q = ac.critic_step(
            critic, tx, state.critic_params, state.critic_opt, batch.obs, batch.action, target, hp.critic_lr,
            config.axis_name, sac_critic_loss)

        def actor_objective(params):
            action, log_prob = policy(params, batch.obs).sample_and_log_prob(seed=k_pi)
            return sac_actor_loss(critic.apply(critic_params, batch.obs, action), log_prob, alpha), log_prob

        actor_params, actor_opt, a_loss, log_prob = gradient_step(
            actor_objective, tx, state.actor_params, state.actor_opt, hp.actor_lr, config.axis_name)

        def alpha_objective(log_alpha):
            return temperature_loss(log_alpha, log_prob, hp.target_entropy), None

        log_alpha, alpha_opt, t_loss, _ = gradient_step(
            alpha_objective, alpha_tx, state.log_alpha, state.alpha_opt, hp.alpha_lr, config.axis_name)
        new_state = SACState(actor_params, critic_params, polyak_update(critic_params, state.critic_target, hp.tau),
                             log_alpha, actor_opt, critic_opt, alpha_opt, hp, state.step + 1)
        metrics = {"critic_loss": c_loss, "actor_loss": a_loss, "alpha_loss": t_loss, "alpha": alpha,
                   "entropy": -jnp.mean(log_prob), "q_mean": jnp.mean(q)}
        return new_state, metrics

    def validation(reference_gamma: float | None = None, actor_weight: float = 0.0):
        """SAC's meta-objective (`ac.td_validation`): the soft target `soft_target` of the updated
        actor, target critic and temperature, with a fixed reference γ' (default: the configured
        γ); the actor term is SAC's actor loss (α held constant)."""
        gamma = ac.reference(reference_gamma, config.gamma)

        def target(state, batch, key):
            return soft_target(policy, critic, state, batch, key, gamma)

        def actor_term(state, frozen, obs, key):
            action, log_prob = policy(state.actor_params, obs).sample_and_log_prob(seed=key)
            alpha = jax.lax.stop_gradient(jnp.exp(state.log_alpha))
            return sac_actor_loss(critic.apply(frozen, obs, action), log_prob, alpha)

        return ac.td_validation(critic, target, actor_term, actor_weight)

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  validation=validation, kernels=kernels))


SPEC = AlgoSpec(name="sac", loop="off_policy", action_kind="continuous", Config=Config, make=make,
                presets={"Pendulum-v1": "sac_pendulum.yaml", "HalfCheetah-v4": "sac_halfcheetah.yaml"},
                meta_options=("reference_gamma", "actor_weight"))
