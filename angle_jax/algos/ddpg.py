"""DDPG (Lillicrap et al. 2016) as pure functions.

One critic (a `QEnsemble` with a single member), a deterministic actor, target
copies of both tracked by polyak averaging after every update. Exploration is
`exploration: gaussian` (independent noise of scale `exploration_noise`) or
`exploration: ou`, the paper's Ornstein–Uhlenbeck noise: one process per env
and action dimension (`ou_noise_step`, θ = `ou_theta`, σ = `ou_sigma`, traced
like the other floats), carried by the off-policy loop as the algorithm's
`Exploration` state and restarted at 0 in every env whose episode ended.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos import actor_critic as ac
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.types import AlgoSpec, Algorithm, Exploration, Transition, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.mlp import DeterministicActor

DDPGState = ac.DeterministicACState
EXPLORATIONS = ("gaussian", "ou")


@dataclasses.dataclass(frozen=True)
class Config(ac.ActorCriticConfig):
    """DDPG settings. Sizes and flags are static; the floats become traced `DDPGHParams`."""

    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    exploration: str = "gaussian"  # "gaussian" (scale exploration_noise) or "ou" (ou_theta, ou_sigma)
    exploration_noise: float = 0.1
    ou_theta: float = 0.15
    ou_sigma: float = 0.2

    def validate(self, num_envs: int | None = None) -> None:
        super().validate(num_envs)
        if self.exploration not in EXPLORATIONS:
            raise ValueError(f"exploration must be one of {', '.join(map(repr, EXPLORATIONS))}, "
                             f"got {self.exploration!r}")
        ac.require(self, non_negative=("exploration_noise", "ou_sigma"))
        if not 0.0 <= self.ou_theta <= 1.0:
            raise ValueError(f"ou_theta must be in [0, 1] (with dt = 1 a larger θ overshoots the mean), "
                             f"got {self.ou_theta}")


@struct.dataclass
class DDPGHParams:
    """Numeric hyperparameters, traced: sweepable with vmap, differentiable by meta-gradients."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    exploration_noise: jax.Array
    ou_theta: jax.Array
    ou_sigma: jax.Array


# ---- named pieces -------------------------------------------------------------

def q_target(next_q: jax.Array, reward: jax.Array, terminated: jax.Array, gamma: jax.Array) -> jax.Array:
    """r + γ (1 - terminated) Q'(s', μ'(s')). next_q: [1, batch] (the single critic member)."""
    chex.assert_shape(next_q, (1, reward.shape[0]))
    return ac.bellman_target(next_q[0], reward, terminated, gamma)


def ou_noise_step(noise: jax.Array, key: jax.Array, theta: jax.Array, sigma: jax.Array,
                  dt: jax.Array = 1.0) -> jax.Array:
    """One Euler–Maruyama step of the Ornstein–Uhlenbeck process dx = −θ x dt + σ dW.

    `noise` has any shape (e.g. `[num_envs, action_dim]`); its stationary standard
    deviation is σ / sqrt(2θ) (for small θ dt). Reset it to zeros at episode starts.
    """
    return noise - theta * noise * dt + sigma * jnp.sqrt(dt) * jax.random.normal(key, noise.shape)


def ou_exploration(action: jax.Array, noise: jax.Array) -> jax.Array:
    """Action plus the current OU noise, clipped to [-1, 1]."""
    chex.assert_equal_shape([action, noise])
    return jnp.clip(action + noise, -1.0, 1.0)


def ou_noise_reset(noise: jax.Array, done: jax.Array) -> jax.Array:
    """Restart the processes of the envs whose episode ended (`done`: bool [num_envs]) at 0."""
    return jnp.where(done.reshape(done.shape + (1,) * (noise.ndim - done.ndim)), 0.0, noise)


def ou_explorer(act: Callable[..., jax.Array], spec: EnvSpec) -> Exploration:
    """Stateful OU exploration: `act(state, obs)` plus one process per env and action
    dimension, stepped once per env step with the agent's traced `ou_theta`, `ou_sigma`."""
    def init(key: jax.Array, spec_: EnvSpec = spec) -> jax.Array:
        del key
        return jnp.zeros((spec_.num_envs, spec_.action_dim), jnp.float32)  # the actor's output shape

    def explore(state: DDPGState, noise: jax.Array, obs: jax.Array, key: jax.Array, step=None):
        del step
        noise = ou_noise_step(noise, key, state.hparams.ou_theta, state.hparams.ou_sigma)
        return ou_exploration(act(state, obs), noise), noise

    return Exploration(init=init, explore=explore, reset=ou_noise_reset)


# ---- composition --------------------------------------------------------------

def networks(config: Config, spec: EnvSpec):
    actor = DeterministicActor(spec.action_dim, config.actor_hidden, config.activation, len(spec.obs_shape))
    return actor, ac.make_critic(config, spec, 1)


def target_q(actor, critic, state: DDPGState, batch: Transition, gamma: jax.Array) -> jax.Array:
    """`q_target` of `state`'s target networks."""
    next_q = critic.apply(state.critic_target, batch.next_obs, actor.apply(state.actor_target, batch.next_obs))
    return q_target(next_q, batch.reward, batch.terminated, gamma)


def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """DDPG for a continuous-action env whose actions live in [-1, 1]."""
    del total_steps
    actor, critic, tx, init, act, explore = ac.deterministic_parts("ddpg", config, spec, networks, DDPGHParams,
                                                                   kernels)
    exploration = None
    if config.exploration == "ou":
        exploration = ou_explorer(act, spec)

        def explore(state: DDPGState, obs: jax.Array, key: jax.Array, step=None) -> jax.Array:
            """The first step of a fresh OU process: what a just-reset env explores with."""
            del step
            action = act(state, obs)
            noise = ou_noise_step(jnp.zeros_like(action), key, state.hparams.ou_theta, state.hparams.ou_sigma)
            return ou_exploration(action, noise)

    def update(state: DDPGState, batch: Transition, key: jax.Array):
        del key
        hp = state.hparams
        target = target_q(actor, critic, state, batch, hp.gamma)
        critic_params, critic_opt, c_loss, q = ac.critic_step(
            critic, tx, state.critic_params, state.critic_opt, batch.obs, batch.action, target, hp.critic_lr,
            config.axis_name)
        actor_params, actor_opt, actor_target, critic_target, a_loss = ac.deterministic_policy_step(
            actor, critic, tx, state, critic_params, batch.obs, config.axis_name)
        new_state = DDPGState(actor_params, critic_params, actor_target, critic_target,
                              actor_opt, critic_opt, hp, state.step + 1)
        return new_state, {"critic_loss": c_loss, "actor_loss": a_loss, "q_mean": jnp.mean(q)}

    def validation(reference_gamma: float | None = None, actor_weight: float = 0.0):
        """DDPG's meta-objective (`ac.td_validation`): the target r + γ' (1 - terminated) Q'(s', μ'(s'))
        of the updated target networks, a fixed reference γ' (default: the configured γ); the
        actor term is the deterministic policy-gradient loss."""
        gamma = ac.reference(reference_gamma, config.gamma)

        def target(state, batch, key):
            del key
            return target_q(actor, critic, state, batch, gamma)

        def actor_term(state, frozen, obs, key):
            del key
            q_pi = ac.first_member_q(critic, frozen, obs, actor.apply(state.actor_params, obs))
            return ac.deterministic_policy_loss(q_pi)

        return ac.td_validation(critic, target, actor_term, actor_weight)

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  exploration=exploration, validation=validation, kernels=kernels))


SPEC = AlgoSpec(name="ddpg", loop="off_policy", action_kind="continuous", Config=Config, make=make,
                presets={"Pendulum-v1": "ddpg_pendulum.yaml"}, meta_options=("reference_gamma", "actor_weight"))
