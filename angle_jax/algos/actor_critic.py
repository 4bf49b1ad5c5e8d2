"""Pieces shared by the actor-critic algorithms over continuous actions (TD3, SAC, DDPG).

Each is a small pure function: the critic regression loss and step, the
deterministic policy-gradient step with its target sync, Gaussian
exploration, network construction, parameter/optimizer init, and the
meta-gradient objective they share (`td_validation`). An algorithm module
composes them and adds only what makes it different.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import direction_optimizer, gradient_step, hparams_from_config, polyak_update
from angle_jax.core.returns import bellman_target
from angle_jax.core.types import Validation
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.mlp import MLP, QEnsemble, as_float, flatten_obs


# ---- configuration ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ActorCriticConfig:
    """Settings every actor-critic here has. Sizes and flags are static; the floats
    are copied into the algorithm's traced hyperparameters."""

    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    max_grad_norm: float = 0.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    axis_name: str | None = None

    def validate(self, num_envs: int | None = None) -> None:
        for name in ("actor_hidden", "critic_hidden"):
            if not getattr(self, name) or any(w <= 0 for w in getattr(self, name)):
                raise ValueError(f"{name} must be a non-empty list of positive widths, got {list(getattr(self, name))}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        require(self, positive=("actor_lr", "critic_lr"), non_negative=("max_grad_norm",))


def require(config: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
            at_least_one: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming the first config field outside its allowed range."""
    for name in positive:
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")


def require_continuous(algo_name: str, spec: EnvSpec) -> None:
    if spec.discrete:
        raise ValueError(f"{algo_name} needs continuous actions; {spec.name} has {spec.action_space.n} discrete actions")


def build(algo_name: str, config: Any, spec: EnvSpec, networks: Callable,
          kernels: Kernels = XLA) -> tuple[Any, QEnsemble, Any]:
    """Check env and config, then (actor, critic, optimizer direction) for `make`."""
    require_continuous(algo_name, spec)
    config.validate()
    actor, critic = networks(config, spec)
    return actor, critic, kernels.optimizer(direction_optimizer(config.max_grad_norm))


# ---- targets and losses ---------------------------------------------------------------

def ensemble_td_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """Sum over members of the mean squared TD error. q: [members, batch], target: [batch]."""
    chex.assert_rank(q, 2)
    chex.assert_shape(target, (q.shape[1],))
    return jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=1))


def deterministic_policy_loss(q_of_policy: jax.Array) -> jax.Array:
    """Deterministic policy gradient objective: -mean Q(s, π(s)). q_of_policy: [batch]."""
    chex.assert_rank(q_of_policy, 1)
    return -jnp.mean(q_of_policy)


def gaussian_exploration(action: jax.Array, key: jax.Array, noise_scale: jax.Array) -> jax.Array:
    """Gaussian exploration noise, clipped to the action bounds [-1, 1]."""
    return jnp.clip(action + noise_scale * jax.random.normal(key, action.shape), -1.0, 1.0)


# ---- steps --------------------------------------------------------------------------

def critic_step(critic: QEnsemble, tx: optax.GradientTransformation, params: Any, opt_state: Any,
                obs: jax.Array, action: jax.Array, target: jax.Array, learning_rate: jax.Array,
                axis_name: str | None = None, loss_fn: Callable = ensemble_td_loss):
    """Regress every critic member onto `target`; returns (params, opt_state, loss, q)."""
    def objective(p):
        q = critic.apply(p, obs, action)
        return loss_fn(q, target), q

    return gradient_step(objective, tx, params, opt_state, learning_rate, axis_name)


def first_member_q(critic: QEnsemble, params: dict, obs: jax.Array, action: jax.Array) -> jax.Array:
    """Q of ensemble member 0 only, without evaluating the other members."""
    member = jax.tree.map(lambda p: p[0], params["params"]["VmapMLP_0"])
    x = jnp.concatenate([flatten_obs(obs, critic.obs_ndim), as_float(action)], axis=-1)
    return MLP(critic.hidden, critic.activation, 1).apply({"params": member}, x)[..., 0]


# ---- state and init -----------------------------------------------------------------

@struct.dataclass
class DeterministicACState:
    """A deterministic actor, a critic ensemble, target copies of both, their optimizer states."""

    actor_params: dict
    critic_params: dict
    actor_target: dict
    critic_target: dict
    actor_opt: tuple
    critic_opt: tuple
    hparams: Any
    step: jax.Array  # gradient updates done so far

    shared_fields = ("step",)  # one counter for all seeds: see core/axes.py


def make_critic(config: Any, spec: EnvSpec, num_members: int) -> QEnsemble:
    return QEnsemble(num_members, config.critic_hidden, config.activation, len(spec.obs_shape))


def init_actor_critic(key: jax.Array, actor: Any, critic: QEnsemble, spec: EnvSpec) -> tuple[dict, dict]:
    """Fresh (actor_params, critic_params) from dummy single-sample inputs."""
    k_actor, k_critic = jax.random.split(key)
    obs = jnp.zeros((1, *spec.obs_shape), jnp.float32)
    act = jnp.zeros((1, *spec.action_space.shape), jnp.float32)
    return actor.init(k_actor, obs), critic.init(k_critic, obs, act)


def init_deterministic_state(key: jax.Array, actor: Any, critic: QEnsemble, tx: optax.GradientTransformation,
                             spec: EnvSpec, hparams: Any) -> DeterministicACState:
    """Networks, targets equal to the online networks, fresh optimizer states, step 0."""
    actor_params, critic_params = init_actor_critic(key, actor, critic, spec)
    return DeterministicACState(
        actor_params=actor_params,
        critic_params=critic_params,
        actor_target=actor_params,
        critic_target=critic_params,
        actor_opt=tx.init(actor_params),
        critic_opt=tx.init(critic_params),
        hparams=hparams,
        step=jnp.zeros((), jnp.int32),
    )


def deterministic_policy_step(actor: Any, critic: QEnsemble, tx: optax.GradientTransformation,
                              state: DeterministicACState, critic_params: dict, obs: jax.Array,
                              axis_name: str | None = None):
    """Actor step on -mean Q_0(s, π(s)) under the fresh critic, then polyak sync of both targets.

    Returns (actor_params, actor_opt, actor_target, critic_target, actor_loss).
    Only critic member 0 is evaluated.
    """
    hp = state.hparams

    def objective(params):
        return deterministic_policy_loss(first_member_q(critic, critic_params, obs, actor.apply(params, obs))), None

    actor_params, actor_opt, loss, _ = gradient_step(objective, tx, state.actor_params, state.actor_opt,
                                                     hp.actor_lr, axis_name)
    actor_target, critic_target = polyak_update((actor_params, critic_params),
                                                (state.actor_target, state.critic_target), hp.tau)
    return actor_params, actor_opt, actor_target, critic_target, loss


def deterministic_agent(actor: Any):
    """(act, explore) for a deterministic actor with Gaussian exploration of scale
    `state.hparams.exploration_noise`."""
    def act(state: Any, obs: jax.Array) -> jax.Array:
        return actor.apply(state.actor_params, obs)

    def explore(state: Any, obs: jax.Array, key: jax.Array, step: jax.Array | None = None) -> jax.Array:
        del step
        return gaussian_exploration(act(state, obs), key, state.hparams.exploration_noise)

    return act, explore


class DeterministicParts(NamedTuple):
    """What TD3 and DDPG share before their `update`."""

    actor: Any
    critic: QEnsemble
    tx: optax.GradientTransformation
    init: Callable[..., DeterministicACState]
    act: Callable[..., jax.Array]
    explore: Callable[..., jax.Array]


def deterministic_parts(algo_name: str, config: Any, spec: EnvSpec, networks: Callable,
                        hparams_cls: type, kernels: Kernels = XLA) -> DeterministicParts:
    """Networks, optimizer, `init` (hyperparameters from `hparams_cls`'s config fields) and the agent."""
    actor, critic, tx = build(algo_name, config, spec, networks, kernels)
    act, explore = deterministic_agent(actor)

    def init(key: jax.Array, spec_: EnvSpec = spec) -> DeterministicACState:
        return init_deterministic_state(key, actor, critic, tx, spec_, hparams_from_config(hparams_cls, config))

    return DeterministicParts(actor, critic, tx, init, act, explore)


# ---- the meta-gradient objective ----------------------------------------------------------

def td_validation(critic: QEnsemble, target: Callable, actor_term: Callable | None = None,
                  actor_weight: float = 0.0, update: Callable | None = None) -> Validation:
    """The actor-critics' meta-objective (Xu et al. 2018): the TD error of the updated critic
    on held-out transitions, `sum_i mean (Q_i(s, a) - y)²`.

    `target(state, batch, key) -> y [batch]` is the algorithm's own Bellman target, read from
    the updated state's target networks with a fixed reference γ' (so η cannot shrink its
    own targets); it is held constant (stop-gradient), so η reaches J only through the critic
    parameters its update produced. With `actor_weight > 0`, adds that multiple of
    `actor_term(state, frozen_critic_params, obs, key)`, the updated actor's loss under the
    frozen updated critic, which gives actor hyperparameters a meta-gradient too. `update`
    is the inner step to differentiate through (None: the algorithm's update).
    """
    def objective(agent_state: Any, batch: Any, key: jax.Array) -> jax.Array:
        y = jax.lax.stop_gradient(target(agent_state, batch, key))
        q = critic.apply(agent_state.critic_params, batch.obs, batch.action)
        value = ensemble_td_loss(q, y)
        if actor_weight:
            frozen = jax.lax.stop_gradient(agent_state.critic_params)
            value = value + actor_weight * actor_term(agent_state, frozen, batch.obs, jax.random.fold_in(key, 1))
        return value

    return Validation(objective, update=update)


def reference(value: float | None, default: float) -> jax.Array:
    """A reference hyperparameter of a meta-objective: `value`, or the configured `default`."""
    return jnp.float32(default if value is None else value)
