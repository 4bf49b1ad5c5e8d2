"""What the on-policy actor-critics (PPO, A2C) share: their settings and checks, the
actor-critic network, acting, learning-rate annealing, advantage normalisation, the
entropy bonus and the observation / reward normalisation.

Each algorithm's `Config` extends `OnPolicyConfig` with its own fields and overrides only
the defaults that differ; the defaults here are PPO's.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.optim import linear_decay
from angle_jax.core.running_stats import RunningStats, discounted_filter, normalize_obs, scale_by_std
from angle_jax.core.types import Memory, Rollout
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.mlp import ACTIVATIONS
from angle_jax.networks.policies import ActorCritic, ActorCriticHead, policy_distribution
from angle_jax.networks.recurrent import CORES, RecurrentNetwork, initial_core, make_encoder, set_forget_bias, unroll


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig:
    """Rollout, network and optimizer settings. Sizes and flags are static; the floats
    are copied into the algorithm's traced hyperparameters."""

    rollout_length: int = 128
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    torso: str = "auto"
    shared_torso: bool = False
    log_std_init: float = 0.0
    core: str = "none"  # "lstm" or "gru": a recurrent policy (encoder `hidden` -> core -> heads)
    core_size: int = 64
    forget_bias: float = 0.0  # an LSTM core's initial forget-gate bias
    anneal_lr: bool = True
    normalize_advantages: bool = True
    normalize_obs: bool = False  # running mean/std of observations, kept in the state (SB3's VecNormalize)
    normalize_reward: bool = False  # rewards / running std of each env's discounted return
    obs_clip: float = 10.0
    reward_clip: float = 10.0
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    axis_name: str | None = None

    def validate(self, num_envs: int | None = None) -> None:
        if self.rollout_length < 1:
            raise ValueError(f"rollout_length must be >= 1, got {self.rollout_length}")
        if not self.hidden or any(w <= 0 for w in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.torso not in ("auto", "mlp", "cnn"):
            raise ValueError(f"torso must be 'auto', 'mlp' or 'cnn' (Nature CNN for [4, 84, 84] frames, MinAtar CNN for [10, 10, C] grids), got {self.torso!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.core not in ("none", *CORES):
            raise ValueError(f"core must be one of none, {', '.join(CORES)}, got {self.core!r}")
        if self.core_size < 1:
            raise ValueError(f"core_size must be >= 1, got {self.core_size}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("obs_clip", "reward_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if num_envs is not None and num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")


# ---- named pieces -------------------------------------------------------------

def normalize_advantages(advantages: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Zero mean, unit standard deviation over the (mini)batch."""
    return (advantages - jnp.mean(advantages)) / (jnp.std(advantages) + eps)


def entropy_bonus(entropy: jax.Array) -> jax.Array:
    """Mean policy entropy; the loss subtracts `ent_coef` times this."""
    return jnp.mean(entropy)



@struct.dataclass
class Normalization:
    """Running statistics of the observations and of each env's discounted return (None where the
    config does not normalise that input). Part of the agent's state: every vmapped run keeps its
    own, checkpoints carry them, and acting (evaluation and play.py too) sees the observations
    exactly as learning did."""

    obs: RunningStats | None
    returns: RunningStats | None
    discounted: jax.Array | None  # [num_envs] the running discounted return of each env


def state_normalized(config) -> bool:
    return config.normalize_obs or config.normalize_reward


def check_normalization(config, spec: EnvSpec) -> None:
    """Observation normalisation is for vector observations: image frames (uint8) are scaled by
    their network."""
    if config.normalize_obs and jnp.dtype(spec.obs_dtype) == jnp.uint8:
        raise ValueError(f"normalize_obs is for vector observations; this env's observations are uint8 frames "
                         f"{tuple(spec.obs_shape)}, which the network scales itself")


def init_normalization(config, spec: EnvSpec) -> Normalization | None:
    if not state_normalized(config):
        return None
    return Normalization(
        RunningStats.create(spec.obs_shape) if config.normalize_obs else None,
        RunningStats.create() if config.normalize_reward else None,
        jnp.zeros((spec.num_envs,), jnp.float32) if config.normalize_reward else None)


def observe(config, norm: Normalization | None, obs: jax.Array) -> jax.Array:
    """The observations as the network sees them: normalised by the running statistics when
    `normalize_obs`, else unchanged."""
    if not config.normalize_obs:
        return obs
    return normalize_obs(obs, norm.obs, config.obs_clip)


def normalize_rollout(config, norm: Normalization | None, rollout: Rollout,
                      gamma: jax.Array) -> tuple[Rollout, Normalization | None]:
    """The rollout as learning sees it, and the statistics with it folded in.

    Observations are normalised with the statistics the rollout was collected under (so the
    behaviour log-probs are those of the acting policy); its observations then update them.
    Rewards are divided by the running std of each env's discounted return (restarted at episode
    ends), the returns of this rollout included, and clipped.
    """
    if norm is None:
        return rollout, None
    axis_name = config.axis_name
    if config.normalize_obs:
        obs_stats = norm.obs.update(rollout.obs.reshape(-1, *rollout.obs.shape[2:]), axis_name)
        rollout = rollout.replace(obs=observe(config, norm, rollout.obs),
                                  next_obs=observe(config, norm, rollout.next_obs))
        norm = norm.replace(obs=obs_stats)
    if config.normalize_reward:
        done = jnp.logical_or(rollout.terminated, rollout.truncated)
        discounted, returns = discounted_filter(rollout.reward.astype(jnp.float32), norm.discounted,
                                                jax.lax.stop_gradient(gamma), done)
        return_stats = norm.returns.update(returns.reshape(-1), axis_name)
        rollout = rollout.replace(reward=scale_by_std(rollout.reward, return_stats, config.reward_clip))
        norm = norm.replace(returns=return_stats, discounted=discounted)
    return rollout, norm


# ---- composition --------------------------------------------------------------

def recurrent(config) -> bool:
    return config.core != "none"


def network(config, spec: EnvSpec) -> ActorCritic | RecurrentNetwork:
    """The actor-critic, or with a `core` the recurrent one: encoder (`hidden` dense layers or the
    MinAtar CNN) -> core -> policy and value heads (the core is shared; `shared_torso` is moot)."""
    if recurrent(config):
        encoder = make_encoder(config.torso, config.hidden, config.activation, spec.obs_shape)
        head = ActorCriticHead(spec.action_dim, spec.discrete, config.log_std_init)
        return RecurrentNetwork(encoder, head, config.core, config.core_size)
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
    iters = num_iterations(config, spec, total_steps) if config.anneal_lr else None
    return lambda lr, step: linear_decay(lr, step, iters)


def policy_functions(config, spec: EnvSpec, net: ActorCritic):
    """`act` (mode / clipped mean) and `explore` (a sample, unclipped) over `state.params`."""

    def dist(params, obs):
        return policy_distribution(net.apply(params, obs, method=net.actor_outputs), spec.discrete)

    def act(state, obs):
        d = dist(state.params, observe(config, state.norm, obs))
        if spec.discrete:
            return d.mode().astype(jnp.int32)
        return jnp.clip(d.mode(), -1.0, 1.0)

    def explore(state, obs, key, step=None):
        del step
        outputs = net.apply(state.params, observe(config, state.norm, obs), method=net.actor_outputs)
        if spec.discrete:
            # what distrax's Categorical.sample draws (Gumbel-max over the logits), without its
            # normalisation and validity checks: a few kernels less per rollout step
            return jax.random.categorical(key, outputs).astype(jnp.int32)
        return policy_distribution(outputs, spec.discrete).sample(seed=key)

    return act, explore


# ---- recurrent policies ------------------------------------------------------------

def init_params(config, spec: EnvSpec, net, key: jax.Array):
    """Fresh network parameters from a one-sample dummy input (with a core state when recurrent)."""
    obs = jnp.zeros((1, *spec.obs_shape), spec.obs_dtype)
    if recurrent(config):
        params = net.init(key, obs, initial_core(config.core, config.core_size, 1), jnp.ones((1,), jnp.bool_))
        if config.core == "lstm" and config.forget_bias:
            params = set_forget_bias(params, config.forget_bias)
        return params
    return net.init(key, obs)


def memory_for(config):
    """The `Memory` of a recurrent config (None for a feed-forward one)."""
    if not recurrent(config):
        return None
    return Memory(initial=lambda num_envs: initial_core(config.core, config.core_size, num_envs))


def recurrent_policy_functions(config, spec: EnvSpec, net: RecurrentNetwork):
    """`act(state, obs, core, reset)` (mode / clipped mean) and `explore(state, obs, core, reset, key,
    step)` (a sample, unclipped), each returning `(action, core)`."""

    def act(state, obs, core, reset):
        (outputs, _), core = net.apply(state.params, observe(config, state.norm, obs), core, reset)
        d = policy_distribution(outputs, spec.discrete)
        if spec.discrete:
            return d.mode().astype(jnp.int32), core
        return jnp.clip(d.mode(), -1.0, 1.0), core

    def explore(state, obs, core, reset, key, step=None):
        del step
        (outputs, _), core = net.apply(state.params, observe(config, state.norm, obs), core, reset)
        if spec.discrete:
            return jax.random.categorical(key, outputs).astype(jnp.int32), core
        return policy_distribution(outputs, spec.discrete).sample(seed=key), core

    return act, explore


def score_sequences(net: RecurrentNetwork, params, rollout):
    """(policy outputs, values, next values), each `[T, N, ...]`, of a rollout under a recurrent net.

    The net runs over the rollout from its stored start state `rollout.core` with its reset flags;
    `next_values[t]` is the value of the true successor `next_obs_t` after the core state of step t
    (one more core step, batched over all t), so truncated steps and the last step bootstrap
    from the observation they really reached.
    """
    (outputs, values), _, cores = unroll(net, params, rollout.obs, rollout.core, rollout.reset, all_cores=True)
    x = net.apply(params, rollout.next_obs, method=net.encode)
    _, y = net.apply(params, cores, x, jnp.zeros(rollout.reset.shape, jnp.bool_), method=net.recur)
    _, next_values = net.apply(params, y, method=net.decode)
    return outputs, values, next_values
