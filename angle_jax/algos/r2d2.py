"""R2D2 (Kapturowski et al. 2019): recurrent Q-learning from stored sequences.

A recurrent Q-network (encoder -> LSTM/GRU -> dueling head) learns from replayed sequences of
`burn_in + unroll + n_step` steps. Each sequence starts from the core state the actor had
(stored in the replay); the first `burn_in` steps only refresh that state under the current
online and target parameters (no gradient), the next `unroll` steps are learned from with
n-step double-Q targets through the invertible value rescaling `h` (`core.returns.value_rescale`)
and its inverse, and the last `n_step` steps supply the bootstraps. Replay priorities are
`η max_t |δ_t| + (1 − η) mean_t |δ_t|` over a sequence. The target network is copied every
`target_update_interval` updates; each env explores with its own ε of the ladder
`ε_i = ε^(1 + α i / (N − 1))`.

The named pieces are pure functions: `epsilon_ladder`, `rescaled_double_q_targets`,
`sequence_td_loss` (the rescaling and the n-step sums live in `angle_jax.core.returns`).
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.dqn import epsilon_greedy, greedy_action
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import apply_gradients, direction_optimizer, hparams_from_config, maybe_pmean
from angle_jax.core.returns import inverse_value_rescale, sequence_nstep_returns, value_rescale
from angle_jax.core.types import AlgoSpec, Algorithm, Memory, SequenceBatch, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.heads import DuelingHead, QHead
from angle_jax.networks.mlp import ACTIVATIONS
from angle_jax.networks.recurrent import (CORES, ENCODERS, RecurrentNetwork, burn_in, initial_core, make_encoder,
                                          set_forget_bias, unroll)
from angle_jax.replay.buffer import ReplayBuffer
from angle_jax.replay.frames import frame_replay_for
from angle_jax.replay.sequence import sequence_priority, sequence_replay


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """R2D2's settings but the discount, declared once for R2D2 and Agent57 (one γ per policy).

    Network: `torso` encoder then dense layers `hidden` ("auto": none for vector observations,
    the MinAtar CNN for grids, the Nature CNN for stacked Atari frames `[K, 84, 84]`), a `core`
    ("lstm" or "gru") of `core_size` units (an LSTM's forget-gate bias starts at `forget_bias`), and
    a (dueling) head with `head_hidden` layers. Replay: sequences of `burn_in + unroll + n_step` steps, one starting every `period` steps
    per env (overlapping when `period` is shorter), prioritized with exponent `per_alpha`,
    importance weights annealed from `per_beta0` to 1 over `per_beta_steps` env steps, sequence
    priority mixing max and mean |δ| by `per_eta`. Stacked uint8 frames are stored once each
    (`sequence_replay(frames=True)`), with `shift_frames` side frames per `period` rows for the
    frames skipped after lost lives (sequences crossing a block with more are left out).
    """

    hidden: tuple[int, ...] = (64,)
    torso: str = "auto"
    activation: str = "relu"
    core: str = "lstm"
    core_size: int = 64
    forget_bias: float = 1.0
    head_hidden: tuple[int, ...] = (64,)
    dueling: bool = True
    burn_in: int = 20
    unroll: int = 40
    n_step: int = 5
    period: int = 20
    prioritized: bool = True
    per_alpha: float = 0.9
    per_beta0: float = 0.6
    per_beta_steps: int = 100_000
    per_eta: float = 0.9
    per_eps: float = 1e-6
    shift_frames: int = 2
    value_rescale_eps: float = 1e-3
    target_update_interval: int = 2_500
    max_grad_norm: float = 40.0
    adam_eps: float = 1e-3
    learning_rate: float = 1e-4
    epsilon: float = 0.4
    epsilon_alpha: float = 7.0

    @property
    def sequence_length(self) -> int:
        return self.burn_in + self.unroll + self.n_step

    def validate(self, num_envs: int | None = None) -> None:
        for name in ("hidden", "head_hidden"):
            if any(w <= 0 for w in getattr(self, name)):
                raise ValueError(f"{name} must be a list of positive widths, got {list(getattr(self, name))}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.torso not in ENCODERS:
            raise ValueError(f"torso must be one of {', '.join(repr(e) for e in ENCODERS)} (cnn: the MinAtar CNN "
                             f"for [10, 10, C] grids, the Nature CNN for [4, 84, 84] frames), got {self.torso!r}")
        if self.core not in CORES:
            raise ValueError(f"core must be one of {', '.join(CORES)}, got {self.core!r}")
        for name in ("core_size", "unroll", "n_step", "period", "target_update_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.shift_frames <= 250:
            raise ValueError(f"shift_frames must be in [0, 250], got {self.shift_frames}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.epsilon_alpha < 0:
            raise ValueError(f"epsilon_alpha must be >= 0, got {self.epsilon_alpha}")
        if not 0.0 <= self.per_eta <= 1.0:
            raise ValueError(f"per_eta must be in [0, 1], got {self.per_eta}")
        if self.per_alpha < 0:
            raise ValueError(f"per_alpha must be >= 0, got {self.per_alpha}")
        if not 0.0 <= self.per_beta0 <= 1.0:
            raise ValueError(f"per_beta0 must be in [0, 1], got {self.per_beta0}")
        if self.per_beta_steps < 0:
            raise ValueError(f"per_beta_steps must be >= 0, got {self.per_beta_steps}")
        for name in ("learning_rate", "adam_eps", "per_eps", "value_rescale_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """R2D2 settings: `BaseConfig`'s and the discount `gamma`. Sizes and flags are static; the floats
    named in `R2D2HParams` are traced."""

    gamma: float = 0.997
    axis_name: str | None = None

    def validate(self, num_envs: int | None = None) -> None:
        super().validate(num_envs)
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")


@struct.dataclass
class R2D2HParams:
    """Numeric hyperparameters, traced: sweepable with vmap, differentiable by meta-gradients."""

    learning_rate: jax.Array
    gamma: jax.Array
    epsilon: jax.Array
    epsilon_alpha: jax.Array


@struct.dataclass
class R2D2State:
    params: dict
    target_params: dict
    opt_state: tuple
    hparams: R2D2HParams
    step: jax.Array  # gradient updates done so far

    shared_fields = ("step",)  # one counter for all seeds: see core/axes.py


# ---- named pieces -------------------------------------------------------------

def epsilon_ladder(num_envs: int, epsilon: jax.Array, alpha: jax.Array) -> jax.Array:
    """Per-env exploration rates `ε_i = ε^(1 + α i / (N − 1))` (Ape-X, R2D2); ε for one env."""
    if num_envs == 1:
        return jnp.reshape(jnp.asarray(epsilon, jnp.float32), (1,))
    i = jnp.arange(num_envs, dtype=jnp.float32)
    return epsilon ** (1.0 + alpha * i / (num_envs - 1))


def rescaled_double_q_targets(q_online: jax.Array, q_target: jax.Array, rewards: jax.Array,
                              terminated: jax.Array, truncated: jax.Array, gamma: jax.Array, n_step: int,
                              eps: float | jax.Array = 1e-3) -> tuple[jax.Array, jax.Array]:
    """R2D2's targets `h(Σ_k γ^k r_{t+k} + γ^n h⁻¹(Q'(s_{t+n}, argmax_a Q(s_{t+n}, a))))`.

    q_online, q_target: `[U + n, B, A]` along the sequence after burn-in; rewards, terminated,
    truncated: `[U + n, B]`. The window stops at an episode end (no bootstrap after a
    termination; a window cut by a truncation is marked invalid). Returns `(targets [U, B],
    valid [U, B])`, held constant (stop-gradient).
    """
    chex.assert_rank([q_online, q_target, rewards], [3, 3, 2])
    chex.assert_equal_shape([q_online, q_target])
    chex.assert_equal_shape([rewards, terminated, truncated])
    chex.assert_equal_shape_prefix([q_online, rewards], 2)
    selected = jnp.argmax(q_online, axis=-1)
    bootstrap = inverse_value_rescale(jnp.take_along_axis(q_target, selected[..., None], axis=-1)[..., 0], eps)
    returns, valid = sequence_nstep_returns(rewards.astype(jnp.float32), terminated, truncated, bootstrap,
                                            gamma, n_step)
    return jax.lax.stop_gradient(value_rescale(returns, eps)), valid


def sequence_td_loss(td: jax.Array, valid: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean over sequences (importance-weighted) of each sequence's mean ½δ² over its valid steps.
    td, valid: `[U, B]`; weights `[B]`."""
    chex.assert_rank([td, valid, weights], [2, 2, 1])
    mask = valid.astype(jnp.float32)
    per_sequence = jnp.sum(0.5 * jnp.square(td) * mask, axis=0) / jnp.maximum(jnp.sum(mask, axis=0), 1.0)
    return jnp.mean(weights * per_sequence)


# ---- composition --------------------------------------------------------------

def network(config: Config, spec: EnvSpec) -> RecurrentNetwork:
    encoder = make_encoder(config.torso, config.hidden, config.activation, spec.obs_shape)
    head_cls = DuelingHead if config.dueling else QHead
    head = head_cls(spec.action_dim, hidden=tuple(config.head_hidden), activation=config.activation)
    return RecurrentNetwork(encoder, head, config.core, config.core_size)


def sequence_replay_for(config: BaseConfig, spec: EnvSpec, loop) -> ReplayBuffer:
    """The sequence replay of `config`'s sizes for `spec` and the off-policy `loop` (R2D2's and Agent57's).

    Raises when a sequence does not fit the rows per env; stacked uint8 frames are stored once each.
    """
    length = config.sequence_length
    rows = loop.capacity_per_env - loop.capacity_per_env % config.period
    if length > rows:
        raise ValueError(
            f"a stored sequence (agent.burn_in + agent.unroll + agent.n_step = {length} steps) does not fit "
            f"the replay's {loop.capacity_per_env} rows per env (buffer_size / num_envs, rounded down to a "
            f"multiple of agent.period = {config.period}: {rows}); raise buffer_size or shorten the sequence")
    # stacked Atari frames: each frame stored once, stacks rebuilt at sample time
    frames = frame_replay_for(spec.obs_shape, spec.obs_dtype)
    return sequence_replay(rows, loop.batch_size, length, config.period, prioritized=config.prioritized,
                           alpha=config.per_alpha, beta0=config.per_beta0, beta_steps=config.per_beta_steps,
                           eps=config.per_eps, frames=frames, shift_frames=config.shift_frames)


def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """R2D2 for a discrete-action env, run by the off-policy loop with its sequence replay."""
    del total_steps
    if not spec.discrete:
        raise ValueError(f"r2d2 needs discrete actions; {spec.name} has a continuous action space")
    config.validate()
    net = network(config, spec)
    tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, config.adam_eps))
    length = config.sequence_length

    def initial(num_envs: int):
        return initial_core(config.core, config.core_size, num_envs)
    rescale_eps = config.value_rescale_eps

    def init(key: jax.Array, spec_: EnvSpec = spec) -> R2D2State:
        obs = jnp.zeros((1, *spec_.obs_shape), jnp.dtype(spec_.obs_dtype))
        params = net.init(key, obs, initial(1), jnp.ones((1,), jnp.bool_))
        if config.core == "lstm" and config.forget_bias:
            params = set_forget_bias(params, config.forget_bias)
        return R2D2State(params=params, target_params=params, opt_state=tx.init(params),
                         hparams=hparams_from_config(R2D2HParams, config), step=jnp.zeros((), jnp.int32))

    def act(state: R2D2State, obs, core, reset):
        """The greedy action, and the next core state."""
        q, core = net.apply(state.params, obs, core, reset)
        return greedy_action(q), core

    def explore(state: R2D2State, obs, core, reset, key, step=None):
        """ε-greedy with env i's ε from the ladder, and the next core state."""
        del step
        q, core = net.apply(state.params, obs, core, reset)
        eps = epsilon_ladder(obs.shape[0], state.hparams.epsilon, state.hparams.epsilon_alpha)
        return epsilon_greedy(q, key, eps), core

    def update(state: R2D2State, batch: SequenceBatch, key: jax.Array):
        del key
        chex.assert_axis_dimension(batch.reward, 0, length)
        hp = state.hparams
        head, tail = slice(0, config.burn_in), slice(config.burn_in, None)
        online_core = burn_in(net, state.params, batch.obs[head], batch.core, batch.reset[head])
        obs, reset = batch.obs[tail], batch.reset[tail]
        # the target network runs burn-in and the rest in one pass: it takes no gradient
        q_target, _ = unroll(net, state.target_params, batch.obs, batch.core, batch.reset)
        q_target = jax.lax.stop_gradient(q_target[tail])
        action = batch.action[tail][:config.unroll].astype(jnp.int32)

        def objective(params):
            q, _ = unroll(net, params, obs, online_core, reset)
            targets, valid = rescaled_double_q_targets(
                jax.lax.stop_gradient(q), q_target, batch.reward[tail], batch.terminated[tail],
                batch.truncated[tail], hp.gamma, config.n_step, rescale_eps)
            taken = jnp.take_along_axis(q[:config.unroll], action[..., None], axis=-1)[..., 0]
            td = targets - taken
            loss = sequence_td_loss(td, valid, batch.weights)
            return loss, (jax.lax.stop_gradient(td), valid, q)

        (loss, (td, valid, q)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = maybe_pmean(grads, config.axis_name)
        params, opt_state = apply_gradients(tx, state.params, state.opt_state, grads, hp.learning_rate)
        step = state.step + 1
        target_params = jax.lax.cond(step % config.target_update_interval == 0,
                                     lambda: params, lambda: state.target_params)
        metrics = {"loss": loss, "q_mean": jnp.mean(q[:config.unroll]),
                   "td_abs": jnp.sum(jnp.abs(td) * valid) / jnp.maximum(jnp.sum(valid), 1)}
        if config.prioritized:
            metrics["priorities"] = sequence_priority(jnp.abs(td), valid, config.per_eta)
        return R2D2State(params, target_params, opt_state, hp, step), metrics

    def make_buffer(loop) -> ReplayBuffer:
        return sequence_replay_for(config, spec, loop)

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  make_buffer=make_buffer, kernels=kernels,
                                  memory=Memory(initial=initial)))


SPEC = AlgoSpec(name="r2d2", loop="off_policy", action_kind="discrete", Config=Config, make=make,
                presets={"MemoryChain-bsuite": "r2d2_memory_chain.yaml", "Breakout-MinAtar": "r2d2_minatar.yaml"})
