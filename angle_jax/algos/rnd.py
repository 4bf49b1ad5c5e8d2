"""Random Network Distillation (Burda et al. 2019) as an on-policy loop module.

A fixed random target network embeds observations; a predictor learns to match
it, so its error is large on rarely seen states. That error, divided by a
running standard deviation of the discounted intrinsic return, is the
intrinsic reward. RND keeps its own critic (torso and value head) with its
own discount, treats the intrinsic stream as non-episodic, and contributes
`int_coef * intrinsic advantages` to the policy's advantages. Target and
predictor see observations normalised by a running mean/std and clipped.

`make_module(config, spec)` returns a loop `Module` (angle_jax.core.types); enable it
with `RunConfig.modules = ("rnd",)` and settings in `module_kwargs["rnd"]`.
"""
from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.minibatch import flatten_steps, minibatch_updates
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import apply_gradients, direction_optimizer, hparams_from_config
from angle_jax.core.returns import gae
from angle_jax.core.running_stats import RunningStats, discounted_filter, normalize_obs
from angle_jax.core.types import Module, ModuleOutput, ModuleSpec, Rollout
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.initializers import orthogonal
from angle_jax.networks.mlp import ACTIVATIONS
from angle_jax.networks.policies import Critic, make_torso


# ---- named pieces -------------------------------------------------------------

def intrinsic_reward(predicted: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared prediction error per sample: `[..., D] -> [...]`."""
    chex.assert_equal_shape([predicted, target])
    return jnp.mean(jnp.square(predicted - jax.lax.stop_gradient(target)), axis=-1)


def predictor_loss(predicted: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Distillation error averaged over the masked samples (a random share of the batch)."""
    err = intrinsic_reward(predicted, target)
    chex.assert_equal_shape([err, mask])
    mask = mask.astype(jnp.float32)
    return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---- configuration and state ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    """RND settings. Sizes and flags are static; the floats in `RNDHParams` are traced."""

    hidden: tuple[int, ...] = (64, 64)
    embed_dim: int = 64
    critic_hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    torso: str = "auto"
    epochs: int = 4
    minibatches: int = 4
    obs_clip: float = 5.0
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    learning_rate: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    int_coef: float = 0.5
    update_proportion: float = 0.25
    vf_coef: float = 0.5

    def validate(self, num_envs: int | None = None) -> None:
        del num_envs
        for name in ("hidden", "critic_hidden"):
            if not getattr(self, name) or any(w <= 0 for w in getattr(self, name)):
                raise ValueError(f"rnd {name} must be a non-empty list of positive widths, got {list(getattr(self, name))}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"rnd activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        for name in ("embed_dim", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"rnd {name} must be >= 1, got {getattr(self, name)}")
        for name in ("obs_clip", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"rnd {name} must be positive, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda", "update_proportion"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"rnd {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("int_coef", "vf_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"rnd {name} must be >= 0, got {getattr(self, name)}")


@struct.dataclass
class RNDHParams:
    learning_rate: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    int_coef: jax.Array
    update_proportion: jax.Array
    vf_coef: jax.Array


@struct.dataclass
class RNDState:
    target_params: dict
    params: dict  # {"predictor": ..., "critic": ...}: what RND trains
    opt_state: tuple
    obs_stats: RunningStats
    return_stats: RunningStats
    return_filter: jax.Array  # [num_envs] running discounted intrinsic return
    hparams: RNDHParams


@struct.dataclass
class RNDData:
    """Per-sample training data for RND's own update (leaves `[T, N, ...]`)."""

    obs: jax.Array       # normalised observations (critic input)
    next_obs: jax.Array  # normalised successors (predictor input)
    ret: jax.Array       # intrinsic returns


class Embedding(nn.Module):
    """obs -> `[..., embed_dim]` features (target and predictor share this shape)."""

    hidden: tuple[int, ...]
    embed_dim: int
    activation: str
    obs_ndim: int
    torso: str

    @nn.compact
    def __call__(self, obs):
        x = make_torso(self.torso, self.hidden, self.activation, self.obs_ndim)(obs)
        return nn.Dense(self.embed_dim, kernel_init=orthogonal(1.0))(x)


def make_module(config: Config, spec: EnvSpec, *, kernels: Kernels = XLA) -> Module:
    config.validate()
    obs_ndim = len(spec.obs_shape)
    embed = Embedding(tuple(config.hidden), config.embed_dim, config.activation, obs_ndim, config.torso)
    critic = Critic(tuple(config.critic_hidden), config.activation, obs_ndim, config.torso)
    tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, eps=config.adam_eps))

    def init(key: jax.Array, spec_: EnvSpec = spec) -> RNDState:
        k_target, k_pred, k_critic = jax.random.split(key, 3)
        obs = jnp.zeros((1, *spec_.obs_shape), jnp.float32)
        params = {"predictor": embed.init(k_pred, obs), "critic": critic.init(k_critic, obs)}
        return RNDState(embed.init(k_target, obs), params, tx.init(params),
                        RunningStats.create(spec_.obs_shape), RunningStats.create(),
                        jnp.zeros((spec_.num_envs,), jnp.float32), hparams_from_config(RNDHParams, config))

    def novelty(state: RNDState, norm_obs: jax.Array) -> jax.Array:
        return intrinsic_reward(embed.apply(state.params["predictor"], norm_obs),
                                embed.apply(state.target_params, norm_obs))

    def process(state: RNDState, rollout: Rollout):
        hp = state.hparams
        obs_stats = state.obs_stats.update(flatten_steps(rollout.next_obs).astype(jnp.float32))
        norm_obs = normalize_obs(rollout.obs, obs_stats, config.obs_clip)
        norm_next = normalize_obs(rollout.next_obs, obs_stats, config.obs_clip)
        raw = jax.lax.stop_gradient(novelty(state, norm_next))
        filt, discounted = discounted_filter(raw, state.return_filter, hp.gamma)
        return_stats = state.return_stats.update(discounted.reshape(-1))
        reward = raw / return_stats.std
        values = critic.apply(state.params["critic"], norm_obs)
        next_values = critic.apply(state.params["critic"], norm_next)
        never = jnp.zeros_like(reward, jnp.bool_)
        adv, ret = gae(reward, values, next_values, never, never, hp.gamma, hp.gae_lambda)
        state = state.replace(obs_stats=obs_stats, return_stats=return_stats, return_filter=filt)
        out = ModuleOutput(
            reward=None,
            advantage=jax.lax.stop_gradient(hp.int_coef * adv),
            data=jax.lax.stop_gradient(RNDData(norm_obs, norm_next, ret)),
            metrics={"intrinsic_reward": jnp.mean(reward), "intrinsic_reward_raw": jnp.mean(raw),
                     "intrinsic_value_mean": jnp.mean(values)},
        )
        return state, out

    def loss(params, target_params, batch: RNDData, mask: jax.Array, hp: RNDHParams):
        p_loss = predictor_loss(embed.apply(params["predictor"], batch.next_obs),
                                embed.apply(target_params, batch.next_obs), mask)
        v_loss = 0.5 * jnp.mean(jnp.square(critic.apply(params["critic"], batch.obs) - batch.ret))
        total = p_loss + hp.vf_coef * v_loss
        return total, {"predictor_loss": p_loss, "value_loss": v_loss}

    def update(state: RNDState, rollout: Rollout, out: ModuleOutput, key: jax.Array):
        del rollout
        hp = state.hparams

        def step(carry, batch, k):
            params, opt_state = carry
            mask = jax.random.uniform(k, batch.ret.shape) < hp.update_proportion
            grads, metrics = jax.grad(loss, has_aux=True)(params, state.target_params, batch, mask, hp)
            params, opt_state = apply_gradients(tx, params, opt_state, grads, hp.learning_rate)
            return (params, opt_state), metrics

        (params, opt_state), metrics = minibatch_updates(
            step, (state.params, state.opt_state), flatten_steps(out.data), key, config.epochs, config.minibatches)
        return state.replace(params=params, opt_state=opt_state), metrics

    return Module(name="rnd", init=init, process=kernels.bind(process), update=kernels.bind(update),
                  needs=("obs", "next_obs"), config=config)


SPEC = ModuleSpec(name="rnd", Config=Config, make=make_module)

