"""A2C (Mnih et al. 2016, synchronous): one gradient step per short rollout on n-step returns.

`a2c_loss` is the named piece (the returns are `angle_jax.core.returns.n_step_returns`);
`make` composes them into an `Algorithm` run by `angle_jax.training.on_policy`. It shares
the actor-critic network, action handling and config checks with PPO (`policy_gradient`).
With `core` set (lstm, gru) the policy is recurrent: the update unrolls the net over the whole
rollout from its stored start state, one gradient step over all its steps.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.minibatch import flatten_steps
from angle_jax.algos.policy_gradient import (Normalization, OnPolicyConfig, check_normalization, entropy_bonus,
                                             init_normalization, init_params, lr_schedule, memory_for, network,
                                             normalize_advantages, normalize_rollout, policy_functions, recurrent,
                                             recurrent_policy_functions, score_sequences)
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import apply_gradients, direction_optimizer, hparams_from_config, maybe_pmean
from angle_jax.core.returns import n_step_returns
from angle_jax.core.types import AlgoSpec, Algorithm, Rollout, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.policies import policy_distribution
from angle_jax.networks.recurrent import unroll


# ---- named pieces -------------------------------------------------------------

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
    norm: Normalization | None = None  # observation / reward statistics (normalize_obs, normalize_reward)

    shared_fields = ("step",)


def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """A2C for discrete or [-1, 1]-continuous actions; `total_steps` sets the lr annealing horizon."""
    config.validate(spec.num_envs)
    check_normalization(config, spec)
    net = network(config, spec)
    tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, eps=config.adam_eps))
    schedule = lr_schedule(config, spec, total_steps)
    if recurrent(config):
        act, explore = recurrent_policy_functions(config, spec, net)
    else:
        act, explore = policy_functions(config, spec, net)

    def init(key: jax.Array, spec_: EnvSpec = spec) -> A2CState:
        params = init_params(config, spec_, net, key)
        return A2CState(params, tx.init(params), hparams_from_config(A2CHParams, config),
                        jnp.zeros((), jnp.int32), init_normalization(config, spec_))

    def update(state: A2CState, rollout: Rollout, key: jax.Array):
        del key
        hp = state.hparams
        rollout, norm = normalize_rollout(config, state.norm, rollout, hp.gamma)
        if recurrent(config):
            # next values of the true successors, after each step's core state (see `score_sequences`)
            _, _, next_values = jax.lax.stop_gradient(score_sequences(net, state.params, rollout))
        else:
            next_values = net.apply(state.params, rollout.next_obs, method=net.value)
        returns = n_step_returns(rollout.reward, next_values, rollout.terminated, rollout.truncated, hp.gamma)
        returns, bonus = flatten_steps((returns, rollout.advantage_bonus))
        obs, action = flatten_steps((rollout.obs, rollout.action))

        def outputs_and_values(params):
            """Policy outputs and values of all T x N steps, flat; a recurrent net runs over the rollout
            from its stored start state with its reset flags."""
            if recurrent(config):
                (outputs, values), _ = unroll(net, params, rollout.obs, rollout.core, rollout.reset)
                return flatten_steps((outputs, values))
            return net.apply(params, obs)

        def objective(params):
            outputs, values = outputs_and_values(params)
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
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1, norm=norm), metrics

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  kernels=kernels, memory=memory_for(config)))


SPEC = AlgoSpec(name="a2c", loop="on_policy", action_kind="both", Config=Config, make=make,
                presets={"CartPole-v1": "a2c_cartpole.yaml"})
