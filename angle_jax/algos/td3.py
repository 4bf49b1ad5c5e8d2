"""TD3 (Fujimoto, van Hoof, Meger 2018) as pure functions.

The named pieces (`target_policy_smoothing`, `twin_q_target`, `critic_loss`,
`actor_loss`) are small array functions research code can call alone;
`make` composes them, with the steps shared by every actor-critic
(algos/actor_critic.py), into an `Algorithm`; `SPEC` describes it to the registry.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos import actor_critic as ac
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.types import AlgoSpec, Algorithm, Transition, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.mlp import DeterministicActor

TD3State = ac.DeterministicACState
critic_loss = ac.ensemble_td_loss
actor_loss = ac.deterministic_policy_loss
exploration_action = ac.gaussian_exploration
first_member_q = ac.first_member_q


@dataclasses.dataclass(frozen=True)
class Config(ac.ActorCriticConfig):
    """TD3 settings. Sizes and flags are static; the floats become traced `TD3HParams`."""

    num_critics: int = 2
    policy_delay: int = 2
    target_noise: float = 0.2
    target_noise_clip: float = 0.5
    exploration_noise: float = 0.1

    def validate(self, num_envs: int | None = None) -> None:
        super().validate(num_envs)
        ac.require(self, non_negative=("target_noise", "target_noise_clip", "exploration_noise"),
                   at_least_one=("num_critics", "policy_delay"))


@struct.dataclass
class TD3HParams:
    """Numeric hyperparameters, traced: sweepable with vmap, differentiable by meta-gradients."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    target_noise: jax.Array
    target_noise_clip: jax.Array
    exploration_noise: jax.Array


# ---- named pieces -------------------------------------------------------------

def target_policy_smoothing(action: jax.Array, key: jax.Array, noise_scale: jax.Array,
                            noise_clip: jax.Array) -> jax.Array:
    """Target action plus clipped Gaussian noise, kept inside [-1, 1]."""
    noise = jnp.clip(noise_scale * jax.random.normal(key, action.shape), -noise_clip, noise_clip)
    return jnp.clip(action + noise, -1.0, 1.0)


def twin_q_target(next_q: jax.Array, reward: jax.Array, terminated: jax.Array, gamma: jax.Array) -> jax.Array:
    """Clipped double-Q target: r + γ (1 - terminated) min_i Q_i'(s', a').

    next_q: [members, batch]; reward, terminated: [batch]. A truncated step is
    not terminated, so it still bootstraps.
    """
    chex.assert_rank(next_q, 2)
    return ac.bellman_target(jnp.min(next_q, axis=0), reward, terminated, gamma)


# ---- composition --------------------------------------------------------------

def networks(config: Config, spec: EnvSpec):
    actor = DeterministicActor(spec.action_dim, config.actor_hidden, config.activation, len(spec.obs_shape))
    return actor, ac.make_critic(config, spec, config.num_critics)


def target_q(actor, critic, state: TD3State, next_obs: jax.Array, key: jax.Array, noise_scale: jax.Array,
             noise_clip: jax.Array) -> jax.Array:
    """Q_i'(s', π'(s') + ε) of every target critic member at the smoothed target action: `[members, batch]`."""
    next_action = target_policy_smoothing(actor.apply(state.actor_target, next_obs), key, noise_scale, noise_clip)
    return critic.apply(state.critic_target, next_obs, next_action)


def _critic_half(actor, critic, tx, config: Config):
    def critic_update(state: TD3State, batch: Transition, key: jax.Array):
        hp = state.hparams
        next_q = target_q(actor, critic, state, batch.next_obs, key, hp.target_noise, hp.target_noise_clip)
        target = twin_q_target(next_q, batch.reward, batch.terminated, hp.gamma)
        critic_params, critic_opt, c_loss, q = ac.critic_step(
            critic, tx, state.critic_params, state.critic_opt, batch.obs, batch.action, target, hp.critic_lr,
            config.axis_name)
        new_state = state.replace(critic_params=critic_params, critic_opt=critic_opt, step=state.step + 1)
        return new_state, {"critic_loss": c_loss, "q_mean": jnp.mean(q)}

    return critic_update


def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """TD3 for a continuous-action env whose actions live in [-1, 1]."""
    del total_steps
    actor, critic, tx, init, act, explore = ac.deterministic_parts("td3", config, spec, networks, TD3HParams,
                                                                   kernels)
    critic_update = _critic_half(actor, critic, tx, config)

    def update(state: TD3State, batch: Transition, key: jax.Array):
        half, metrics = critic_update(state, batch, key)

        def actor_step(_):
            return ac.deterministic_policy_step(actor, critic, tx, state, half.critic_params, batch.obs,
                                                config.axis_name)

        def skip(_):
            nan = jnp.full((), jnp.nan, jax.tree.leaves(state.actor_params)[0].dtype)  # the loss's dtype
            return state.actor_params, state.actor_opt, state.actor_target, state.critic_target, nan

        actor_params, actor_opt, actor_target, critic_target, a_loss = jax.lax.cond(
            half.step % config.policy_delay == 0, actor_step, skip, None)
        new_state = half.replace(actor_params=actor_params, actor_opt=actor_opt, actor_target=actor_target,
                                 critic_target=critic_target)
        return new_state, {**metrics, "actor_loss": a_loss}

    def validation(reference_gamma: float | None = None, actor_weight: float = 0.0):
        """TD3's meta-objective (`ac.td_validation`): the twin target
        r + γ' (1 - terminated) min_i Q_i'(s', π'(s') + ε) of the updated target networks, with a
        fixed reference γ' (default: the configured γ) and the configured target smoothing; the
        actor term is the deterministic policy-gradient loss. Without an actor term J is
        differentiated through the critic half alone: the delayed actor step reaches J only
        through the target networks, which J holds constant, so it adds nothing to ∂J/∂η;
        skipping it changes only the (constant) target by one polyak step, and takes the meta
        step from 61 to 33 matrix products (TD3, 64x64)."""
        gamma = ac.reference(reference_gamma, config.gamma)
        noise, noise_clip = jnp.float32(config.target_noise), jnp.float32(config.target_noise_clip)

        def target(state, batch, key):
            return twin_q_target(target_q(actor, critic, state, batch.next_obs, key, noise, noise_clip),
                                 batch.reward, batch.terminated, gamma)

        def actor_term(state, frozen, obs, key):
            del key
            return actor_loss(first_member_q(critic, frozen, obs, actor.apply(state.actor_params, obs)))

        return ac.td_validation(critic, target, actor_term, actor_weight,
                                update=None if actor_weight else kernels.bind(critic_update))

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  validation=validation, kernels=kernels))


SPEC = AlgoSpec(name="td3", loop="off_policy", action_kind="continuous", Config=Config, make=make,
                presets={"Pendulum-v1": "td3_pendulum.yaml", "HalfCheetah-v4": "td3_mujoco.yaml"},
                meta_options=("reference_gamma", "actor_weight"))
