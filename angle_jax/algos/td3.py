"""TD3 (Fujimoto, van Hoof, Meger 2018) as pure functions.

The named pieces (`target_policy_smoothing`, `twin_q_target`, `critic_loss`,
`actor_loss`) are small array functions research code can call alone;
`make` composes them into an `Algorithm`.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.base import (Algorithm, Transition, apply_gradients, direction_optimizer,
                                  hparams_from_config, maybe_pmean, polyak_update)
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.mlp import MLP, DeterministicActor, QEnsemble, flatten_obs

ACTION_KIND = "continuous"


@dataclasses.dataclass(frozen=True)
class Config:
    """TD3 settings. Sizes and flags are static; the floats become traced `TD3HParams`."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    num_critics: int = 2
    policy_delay: int = 2
    max_grad_norm: float = 0.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    target_noise: float = 0.2
    target_noise_clip: float = 0.5
    exploration_noise: float = 0.1
    axis_name: str | None = None

    def validate(self) -> None:
        for name in ("actor_hidden", "critic_hidden"):
            if not getattr(self, name) or any(w <= 0 for w in getattr(self, name)):
                raise ValueError(f"{name} must be a non-empty list of positive widths, got {list(getattr(self, name))}")
        if self.num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {self.num_critics}")
        if self.policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {self.policy_delay}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("actor_lr", "critic_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("target_noise", "target_noise_clip", "exploration_noise", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


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


@struct.dataclass
class TD3State:
    actor_params: dict
    critic_params: dict
    actor_target: dict
    critic_target: dict
    actor_opt: tuple
    critic_opt: tuple
    hparams: TD3HParams
    step: jax.Array  # gradient updates done so far

    shared_fields = ("step",)  # one counter for all seeds: see training/axes.py


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
    chex.assert_shape([reward, terminated], (next_q.shape[1],))
    bootstrap = gamma * (1.0 - terminated.astype(jnp.float32))
    return jax.lax.stop_gradient(reward + bootstrap * jnp.min(next_q, axis=0))


def critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """Sum over members of the mean squared TD error. q: [members, batch]."""
    chex.assert_rank(q, 2)
    chex.assert_shape(target, (q.shape[1],))
    return jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=1))


def actor_loss(q_of_policy: jax.Array) -> jax.Array:
    """Deterministic policy gradient objective: -mean Q1(s, π(s))."""
    chex.assert_rank(q_of_policy, 1)
    return -jnp.mean(q_of_policy)


def exploration_action(action: jax.Array, key: jax.Array, noise_scale: jax.Array) -> jax.Array:
    """Gaussian exploration noise, clipped to the action bounds."""
    return jnp.clip(action + noise_scale * jax.random.normal(key, action.shape), -1.0, 1.0)


# ---- composition --------------------------------------------------------------

def networks(config: Config, spec: EnvSpec):
    obs_ndim = len(spec.obs_shape)
    actor = DeterministicActor(spec.action_dim, config.actor_hidden, config.activation, obs_ndim)
    critic = QEnsemble(config.num_critics, config.critic_hidden, config.activation, obs_ndim)
    return actor, critic


def first_member_q(critic: QEnsemble, params: dict, obs: jax.Array, action: jax.Array) -> jax.Array:
    """Q of ensemble member 0 only, without evaluating the other members."""
    member = jax.tree.map(lambda p: p[0], params["params"]["VmapMLP_0"])
    x = jnp.concatenate([flatten_obs(obs, critic.obs_ndim), action.astype(jnp.float32)], axis=-1)
    return MLP(critic.hidden, critic.activation, 1).apply({"params": member}, x)[..., 0]


def make(config: Config, spec: EnvSpec) -> Algorithm:
    """TD3 for a continuous-action env whose actions live in [-1, 1]."""
    if spec.discrete:
        raise ValueError(f"td3 needs continuous actions; {spec.name} has {spec.action_space.n} discrete actions")
    config.validate()
    actor, critic = networks(config, spec)
    tx = direction_optimizer(config.max_grad_norm)
    action_shape = spec.action_space.shape

    def init(key: jax.Array, spec_: EnvSpec = spec) -> TD3State:
        k_actor, k_critic = jax.random.split(key)
        obs = jnp.zeros((1, *spec_.obs_shape), jnp.float32)
        act = jnp.zeros((1, *action_shape), jnp.float32)
        actor_params = actor.init(k_actor, obs)
        critic_params = critic.init(k_critic, obs, act)
        return TD3State(
            actor_params=actor_params,
            critic_params=critic_params,
            actor_target=actor_params,
            critic_target=critic_params,
            actor_opt=tx.init(actor_params),
            critic_opt=tx.init(critic_params),
            hparams=hparams_from_config(TD3HParams, config),
            step=jnp.zeros((), jnp.int32),
        )

    def act(state: TD3State, obs: jax.Array) -> jax.Array:
        return actor.apply(state.actor_params, obs)

    def explore(state: TD3State, obs: jax.Array, key: jax.Array, step: jax.Array | None = None) -> jax.Array:
        del step
        return exploration_action(act(state, obs), key, state.hparams.exploration_noise)

    def update(state: TD3State, batch: Transition, key: jax.Array):
        hp = state.hparams
        next_action = target_policy_smoothing(
            actor.apply(state.actor_target, batch.next_obs), key, hp.target_noise, hp.target_noise_clip)
        next_q = critic.apply(state.critic_target, batch.next_obs, next_action)
        target = twin_q_target(next_q, batch.reward, batch.terminated, hp.gamma)

        def critic_objective(params):
            q = critic.apply(params, batch.obs, batch.action)
            return critic_loss(q, target), q

        (c_loss, q), grads = jax.value_and_grad(critic_objective, has_aux=True)(state.critic_params)
        grads = maybe_pmean(grads, config.axis_name)
        critic_params, critic_opt = apply_gradients(tx, state.critic_params, state.critic_opt, grads, hp.critic_lr)
        step = state.step + 1

        def actor_step(_):
            def objective(params):
                return actor_loss(first_member_q(critic, critic_params, batch.obs, actor.apply(params, batch.obs)))

            a_loss, a_grads = jax.value_and_grad(objective)(state.actor_params)
            a_grads = maybe_pmean(a_grads, config.axis_name)
            actor_params, actor_opt = apply_gradients(tx, state.actor_params, state.actor_opt, a_grads, hp.actor_lr)
            return (actor_params, actor_opt,
                    polyak_update(actor_params, state.actor_target, hp.tau),
                    polyak_update(critic_params, state.critic_target, hp.tau),
                    a_loss)

        def skip(_):
            return (state.actor_params, state.actor_opt, state.actor_target, state.critic_target,
                    jnp.full((), jnp.nan, jnp.float32))

        actor_params, actor_opt, actor_target, critic_target, a_loss = jax.lax.cond(
            step % config.policy_delay == 0, actor_step, skip, None)
        new_state = TD3State(actor_params, critic_params, actor_target, critic_target,
                             actor_opt, critic_opt, hp, step)
        metrics = {"critic_loss": c_loss, "actor_loss": a_loss, "q_mean": jnp.mean(q)}
        return new_state, metrics

    return Algorithm(init=init, update=update, act=act, explore=explore, config=config, kind="off_policy")
