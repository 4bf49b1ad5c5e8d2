"""A2C (Mnih et al. 2016, synchronous): one gradient step per short rollout on n-step returns.

`n_step_returns` and `a2c_loss` are the named pieces; `make` composes them
into an `Algorithm` run by `angle_jax.training.on_policy`. It shares the
actor-critic network, action handling and config checks with PPO.
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
from angle_jax.algos.ppo import entropy_bonus, lr_schedule, network, normalize_advantages, policy_functions
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.policies import policy_distribution
from angle_jax.training.modules import Rollout, flatten_steps

ACTION_KIND = "both"
LOOP = "on_policy"


# ---- named pieces -------------------------------------------------------------

def n_step_returns(rewards: jax.Array, next_values: jax.Array, terminated: jax.Array,
                   truncated: jax.Array, gamma: jax.Array) -> jax.Array:
    """Discounted returns to the end of the rollout, bootstrapped from the last value.

    `R_t = r_t + γ (1 - term_t) X_t` with `X_t = V(next_obs_t)` where the episode
    was truncated or the rollout ends, and `X_t = R_{t+1}` otherwise. So step
    `t` uses an up-to-(T - t)-step return; termination never bootstraps.
    Inputs `[T, ...]`; equals GAE with λ = 1 plus the values.
    """
    chex.assert_equal_shape([rewards, next_values, terminated, truncated])
    not_term = 1.0 - terminated.astype(jnp.float32)
    cut = truncated.astype(jnp.float32)

    def back(next_return, xs):
        r, nv, nt, c = xs
        ret = r + gamma * nt * (c * nv + (1.0 - c) * next_return)
        return ret, ret

    _, returns = jax.lax.scan(back, next_values[-1], (rewards, next_values, not_term, cut), reverse=True)
    return returns


def a2c_loss(log_prob: jax.Array, advantages: jax.Array, values: jax.Array, returns: jax.Array,
             entropy: jax.Array, vf_coef: jax.Array, ent_coef: jax.Array):
    """Policy gradient + value regression - entropy bonus.

    Returns `(total, (policy_loss, value_loss, entropy))`; advantages and returns
    are treated as constants.
    """
    chex.assert_equal_shape([log_prob, advantages, values, returns])
    advantages = jax.lax.stop_gradient(advantages)
    returns = jax.lax.stop_gradient(returns)
    p_loss = -jnp.mean(log_prob * advantages)
    v_loss = 0.5 * jnp.mean(jnp.square(values - returns))
    ent = entropy_bonus(entropy)
    return p_loss + vf_coef * v_loss - ent_coef * ent, (p_loss, v_loss, ent)


# ---- configuration and state ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config(OnPolicyConfig):
    """A2C settings. Sizes and flags are static; the floats listed in `A2CHParams` are traced."""

    rollout_length: int = 5
    anneal_lr: bool = False
    normalize_advantages: bool = False
    learning_rate: float = 7e-4


@struct.dataclass
class A2CHParams:
    learning_rate: jax.Array
    gamma: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array


@struct.dataclass
class A2CState:
    params: dict
    opt_state: tuple
    hparams: A2CHParams
    step: jax.Array  # learning iterations so far

    shared_fields = ("step",)


def make(config: Config, spec: EnvSpec, total_steps: int | None = None) -> Algorithm:
    """A2C for discrete or [-1, 1]-continuous actions; `total_steps` sets the lr annealing horizon."""
    config.validate(spec.num_envs)
    net = network(config, spec)
    tx = direction_optimizer(config.max_grad_norm, eps=config.adam_eps)
    schedule = lr_schedule(config, spec, total_steps)
    act, explore = policy_functions(config, spec, net)

    def init(key: jax.Array, spec_: EnvSpec = spec) -> A2CState:
        params = net.init(key, jnp.zeros((1, *spec_.obs_shape), spec_.obs_dtype))
        return A2CState(params, tx.init(params), hparams_from_config(A2CHParams, config),
                        jnp.zeros((), jnp.int32))

    def update(state: A2CState, rollout: Rollout, key: jax.Array):
        del key
        hp = state.hparams
        next_values = net.apply(state.params, rollout.next_obs, method=net.value)
        returns = n_step_returns(rollout.reward, next_values, rollout.terminated, rollout.truncated, hp.gamma)
        returns, bonus = flatten_steps((returns, rollout.advantage_bonus))
        obs, action = flatten_steps((rollout.obs, rollout.action))

        def objective(params):
            outputs, values = net.apply(params, obs)
            d = policy_distribution(outputs, spec.discrete)
            adv = returns - values + bonus
            if config.normalize_advantages:
                adv = normalize_advantages(adv)
            total, (p_loss, v_loss, ent) = a2c_loss(d.log_prob(action), adv, values, returns, d.entropy(),
                                                    hp.vf_coef, hp.ent_coef)
            return total, {"loss": total, "policy_loss": p_loss, "value_loss": v_loss, "entropy": ent,
                           "value_mean": jnp.mean(values)}

        grads, metrics = jax.grad(objective, has_aux=True)(state.params)
        grads = maybe_pmean(grads, config.axis_name)
        lr = schedule(hp.learning_rate, state.step)
        params, opt_state = apply_gradients(tx, state.params, state.opt_state, grads, lr)
        metrics["learning_rate"] = lr
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return Algorithm(init=init, update=update, act=act, explore=explore, config=config, kind="on_policy")
