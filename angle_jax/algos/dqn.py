"""DQN and its extensions (double, dueling, n-step, prioritised, C51, noisy) as pure functions.

One `Config` switches each Rainbow component (Hessel et al. 2018) on or off;
`make` composes the named pieces below into an `Algorithm`. The pieces are
small array functions research code can call alone: targets
(`q_learning_target`, `double_q_target`, `categorical_projection`,
`categorical_q_target`, `categorical_double_q_target`), losses (`td_loss`,
`categorical_loss`) and the acting rule (`epsilon_schedule`, `epsilon_greedy`).

Replay comes from the algorithm (`make_buffer`): n-step windows from the
time-major store, uniform or prioritised; a batch is an `NStepBatch` and the
update returns per-sample "priorities" for the loop to feed back.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import (apply_gradients, direction_optimizer, hparams_from_config, linear_decay, maybe_pmean,
                                  polyak_update)
from angle_jax.core.returns import nstep_return
from angle_jax.core.types import AlgoSpec, Algorithm, NStepBatch, Transition, as_nstep_batch, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.networks.heads import TORSOS, QNetwork, resolve_torso
from angle_jax.networks.mlp import ACTIVATIONS
from angle_jax.replay.buffer import ReplayBuffer
from angle_jax.replay.frames import frame_replay, frame_replay_for
from angle_jax.replay.nstep import nstep_replay
from angle_jax.replay.prioritized import prioritized_replay

LOSSES = ("huber", "mse")


@dataclasses.dataclass(frozen=True)
class Config:
    """DQN settings. Sizes and flags are static; the floats named in `DQNHParams` are traced.

    Components: `double` (select the next action with the online net, evaluate
    it with the target net), `dueling`, `n_step` returns, `prioritized` replay
    (α, β0 annealed to 1 over `per_beta_steps` env steps), `distributional` C51
    (`num_atoms` on [v_min, v_max], cross-entropy loss; `loss` then is unused),
    `noisy` dense layers (σ0 = `noisy_sigma0`).

    ε-greedy follows `epsilon_schedule`: linear from `epsilon_start` to
    `epsilon_end` over the first `epsilon_decay_steps` env steps (counted from
    the start of the run, warm-up included). With `noisy`, ε-greedy still
    applies on top of the noisy greedy action when ε > 0 (both explore); set
    both ε values to 0 for exploration by parameter noise alone.

    The target net moves toward the online net by `tau` (1.0 = copy) every
    `target_update_interval` gradient updates. `lr_decay_updates` N > 0 decays the
    learning rate linearly to 0 over the first N gradient updates (a run makes
    (total_steps - learning_starts) x gradient_steps / (num_envs x train_frequency)),
    so the policy settles instead of drifting late in a run; 0 keeps it constant.
    """

    hidden: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    torso: str = "auto"
    double: bool = False
    dueling: bool = False
    n_step: int = 1
    prioritized: bool = False
    distributional: bool = False
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    noisy: bool = False
    noisy_sigma0: float = 0.5
    loss: str = "huber"
    target_update_interval: int = 500
    max_grad_norm: float = 10.0
    adam_eps: float = 1e-8
    per_alpha: float = 0.6
    per_beta0: float = 0.4
    per_beta_steps: int = 100_000
    per_eps: float = 1e-6
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    tau: float = 1.0
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 10_000
    lr_decay_updates: int = 0
    axis_name: str | None = None

    def validate(self, num_envs: int | None = None) -> None:
        if any(w <= 0 for w in self.hidden):
            raise ValueError(f"hidden must be a list of positive widths, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.torso not in TORSOS:
            raise ValueError(f"torso must be one of {list(TORSOS)}, got {self.torso!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {self.n_step}")
        if self.target_update_interval < 1:
            raise ValueError(f"target_update_interval must be >= 1 gradient update, got {self.target_update_interval}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps}")
        if self.lr_decay_updates < 0:
            raise ValueError(f"lr_decay_updates must be >= 0 (0 = constant learning rate), got {self.lr_decay_updates}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        check_epsilon_schedule(self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps)
        if self.distributional:
            if self.num_atoms < 2:
                raise ValueError(f"distributional needs num_atoms >= 2, got {self.num_atoms}")
            if not self.v_min < self.v_max:
                raise ValueError(f"distributional needs v_min < v_max, got v_min={self.v_min}, v_max={self.v_max}")
        if self.noisy and self.noisy_sigma0 <= 0:
            raise ValueError(f"noisy needs noisy_sigma0 > 0, got {self.noisy_sigma0}")
        if self.prioritized:
            if self.per_alpha < 0:
                raise ValueError(f"per_alpha must be >= 0 (0 = uniform), got {self.per_alpha}")
            if not 0.0 <= self.per_beta0 <= 1.0:
                raise ValueError(f"per_beta0 must be in [0, 1], got {self.per_beta0}")
            if self.per_beta_steps < 0:
                raise ValueError(f"per_beta_steps must be >= 0 (0 = β is 1 from the start), got {self.per_beta_steps}")
            if self.per_eps <= 0:
                raise ValueError(f"per_eps must be positive (a zero priority is never sampled again), "
                                 f"got {self.per_eps}")


@struct.dataclass
class DQNHParams:
    """Numeric hyperparameters, traced: sweepable with vmap, differentiable by meta-gradients."""

    learning_rate: jax.Array
    gamma: jax.Array
    tau: jax.Array
    epsilon_start: jax.Array
    epsilon_end: jax.Array
    epsilon_decay_steps: jax.Array


@struct.dataclass
class DQNState:
    params: dict
    target_params: dict
    opt_state: tuple
    hparams: DQNHParams
    step: jax.Array  # gradient updates done so far

    shared_fields = ("step",)  # one counter for all seeds: see core/axes.py


# ---- named pieces -------------------------------------------------------------

def check_epsilon_schedule(start: float, end: float, decay_steps: int) -> None:
    """The linear ε schedule's settings: both ends in [0, 1], decaying, over >= 0 env steps."""
    for name, value in (("epsilon_start", start), ("epsilon_end", end)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if end > start:
        raise ValueError(f"epsilon_end ({end}) must not exceed epsilon_start ({start}): the schedule only decays")
    if decay_steps < 0:
        raise ValueError(f"epsilon_decay_steps must be >= 0, got {decay_steps}")


def epsilon_schedule(step: jax.Array, start: jax.Array, end: jax.Array, decay_steps: jax.Array) -> jax.Array:
    """ε at env step `step`: linear from `start` to `end` over `decay_steps`, then `end`."""
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.where(decay_steps > 0, jnp.clip(step / jnp.maximum(decay_steps, 1.0), 0.0, 1.0), 1.0)
    return start + frac * (end - start)


def greedy_action(q: jax.Array) -> jax.Array:
    """argmax_a Q(s, a) as int32 (first maximiser on ties). q: [batch, actions]."""
    chex.assert_rank(q, 2)
    return jnp.argmax(q, axis=-1).astype(jnp.int32)


def epsilon_greedy(q: jax.Array, key: jax.Array, epsilon: jax.Array) -> jax.Array:
    """With probability ε a uniform random action, else the greedy one. q: [batch, actions]."""
    chex.assert_rank(q, 2)
    k_explore, k_action = jax.random.split(key)
    batch, num_actions = q.shape
    explore = jax.random.uniform(k_explore, (batch,)) < epsilon
    random = jax.random.randint(k_action, (batch,), 0, num_actions, dtype=jnp.int32)
    return jnp.where(explore, random, greedy_action(q))


def q_learning_target(next_q_target: jax.Array, returns: jax.Array, discount: jax.Array) -> jax.Array:
    """G + d max_a Q'(s', a). next_q_target: [batch, actions]; returns, discount: [batch].

    `returns` and `discount` come from `nstep_return` (for one step: r and γ(1 - terminated)).
    """
    chex.assert_rank(next_q_target, 2)
    chex.assert_shape([returns, discount], next_q_target.shape[:1])
    return jax.lax.stop_gradient(returns + discount * jnp.max(next_q_target, axis=-1))


def double_q_target(next_q_online: jax.Array, next_q_target: jax.Array, returns: jax.Array,
                    discount: jax.Array) -> jax.Array:
    """Double Q-learning target: G + d Q'(s', argmax_a Q(s', a)).

    The action is selected with the online values and evaluated with the target values.
    """
    chex.assert_rank([next_q_online, next_q_target], 2)
    chex.assert_equal_shape([next_q_online, next_q_target])
    chex.assert_shape([returns, discount], next_q_online.shape[:1])
    selected = greedy_action(next_q_online)
    value = jnp.take_along_axis(next_q_target, selected[:, None], axis=-1)[:, 0]
    return jax.lax.stop_gradient(returns + discount * value)


def td_loss(td_error: jax.Array, kind: str = "huber") -> jax.Array:
    """Per-sample loss of TD errors: Huber (δ = 1) or half squared error."""
    if kind == "huber":
        abs_err = jnp.abs(td_error)
        return jnp.where(abs_err <= 1.0, 0.5 * jnp.square(td_error), abs_err - 0.5)
    if kind == "mse":
        return 0.5 * jnp.square(td_error)
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {kind!r}")


def categorical_support(num_atoms: int, v_min: float, v_max: float) -> jax.Array:
    """The fixed atoms z_j, evenly spaced on [v_min, v_max]."""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def expected_q(logits: jax.Array, support: jax.Array) -> jax.Array:
    """Mean of each action's return distribution. logits: [batch, actions, atoms]."""
    chex.assert_rank(logits, 3)
    chex.assert_shape(support, logits.shape[-1:])
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * support, axis=-1)


def categorical_projection(probs: jax.Array, support: jax.Array, returns: jax.Array,
                           discount: jax.Array) -> jax.Array:
    """Project the distribution of G + d Z onto the fixed atoms (C51's Φ).

    probs: [batch, atoms] next-state distribution on `support`; returns,
    discount: [batch]. Each shifted atom Tz_i = clip(G + d z_i, v_min, v_max)
    splits its mass between the two nearest atoms in proportion to closeness
    (the weight of atom j is max(0, 1 - |Tz_i - z_j| / Δz)); total mass is kept.
    """
    chex.assert_rank([probs, support, returns, discount], [2, 1, 1, 1])
    chex.assert_shape(support, probs.shape[-1:])
    chex.assert_shape([returns, discount], probs.shape[:1])
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (support.shape[0] - 1)
    shifted = jnp.clip(returns[:, None] + discount[:, None] * support[None, :], v_min, v_max)
    closeness = jnp.clip(1.0 - jnp.abs(shifted[:, :, None] - support[None, None, :]) / delta, 0.0, 1.0)
    return jax.lax.stop_gradient(jnp.einsum("bi,bij->bj", probs, closeness))


def categorical_q_target(next_logits_target: jax.Array, returns: jax.Array, discount: jax.Array,
                         support: jax.Array) -> jax.Array:
    """C51 target distribution: project the target net's distribution of its greedy action."""
    chex.assert_rank(next_logits_target, 3)
    selected = greedy_action(expected_q(next_logits_target, support))
    probs = jax.nn.softmax(next_logits_target[jnp.arange(selected.shape[0]), selected], axis=-1)
    return categorical_projection(probs, support, returns, discount)


def categorical_double_q_target(next_logits_online: jax.Array, next_logits_target: jax.Array,
                                returns: jax.Array, discount: jax.Array, support: jax.Array) -> jax.Array:
    """Double C51 target: select a* by the online net's mean values, project the target
    net's distribution of a*."""
    chex.assert_rank([next_logits_online, next_logits_target], 3)
    chex.assert_equal_shape([next_logits_online, next_logits_target])
    selected = greedy_action(expected_q(next_logits_online, support))
    probs = jax.nn.softmax(next_logits_target[jnp.arange(selected.shape[0]), selected], axis=-1)
    return categorical_projection(probs, support, returns, discount)


def categorical_loss(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
    """Per-sample cross-entropy -Σ_j m_j log p_j of the taken action's logits `[batch, atoms]`.

    Equal to KL(m || p) up to a term without gradient; Rainbow uses it as the priority.
    """
    chex.assert_rank([logits, target_probs], 2)
    chex.assert_equal_shape([logits, target_probs])
    return -jnp.sum(target_probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def select_action_values(values: jax.Array, action: jax.Array) -> jax.Array:
    """values[b, action[b]] for values `[batch, actions, ...]`."""
    chex.assert_rank(action, 1)
    return values[jnp.arange(action.shape[0]), action.astype(jnp.int32)]


# ---- composition --------------------------------------------------------------

def network(config: Config, spec: EnvSpec) -> QNetwork:
    torso, channels_first = resolve_torso(config.torso, spec.obs_shape)
    return QNetwork(
        num_actions=spec.action_dim,
        hidden=tuple(config.hidden),
        torso=torso,
        obs_ndim=len(spec.obs_shape),
        channels_first=channels_first,
        dueling=config.dueling,
        noisy=config.noisy,
        sigma0=config.noisy_sigma0,
        num_atoms=config.num_atoms if config.distributional else 1,
        activation=config.activation,
    )


def buffer_for(config: Config, capacity_per_env: int, batch_size: int) -> ReplayBuffer:
    """The replay `config` asks for: n-step windows, uniform or prioritised."""
    if config.prioritized:
        return prioritized_replay(capacity_per_env, batch_size, config.n_step, config.per_alpha,
                                  config.per_beta0, config.per_beta_steps, config.per_eps)
    return nstep_replay(capacity_per_env, batch_size, config.n_step)


def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """DQN (with the components `config` enables) for a discrete-action env."""
    del total_steps
    if not spec.discrete:
        raise ValueError(f"dqn needs discrete actions; {spec.name} has a continuous action space")
    config.validate()
    net = network(config, spec)
    tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, config.adam_eps))
    support = categorical_support(config.num_atoms, config.v_min, config.v_max) if config.distributional else None

    def q_values(params, obs, key=None):
        out = net.apply(params, obs, key)
        return expected_q(out, support) if config.distributional else out

    def noise_key(key):
        return key if config.noisy else None

    def init(key: jax.Array, spec_: EnvSpec = spec) -> DQNState:
        obs = jnp.zeros((1, *spec_.obs_shape), jnp.dtype(spec_.obs_dtype))
        params = net.init(key, obs)
        return DQNState(params=params, target_params=params, opt_state=tx.init(params),
                        hparams=hparams_from_config(DQNHParams, config), step=jnp.zeros((), jnp.int32))

    def act(state: DQNState, obs: jax.Array) -> jax.Array:
        """Greedy action of the deterministic (mean-weight) network."""
        return greedy_action(q_values(state.params, obs))

    def explore(state: DQNState, obs: jax.Array, key: jax.Array, step: jax.Array | None = None) -> jax.Array:
        """ε-greedy at env step `step` (None: the final ε) over a freshly noised net when `noisy`."""
        hp = state.hparams
        k_noise, k_eps = jax.random.split(key)
        q = q_values(state.params, obs, noise_key(k_noise))
        if step is None:
            epsilon = hp.epsilon_end
        else:
            epsilon = epsilon_schedule(step, hp.epsilon_start, hp.epsilon_end, hp.epsilon_decay_steps)
        return epsilon_greedy(q, k_eps, epsilon)

    def update(state: DQNState, batch: NStepBatch | Transition, key: jax.Array):
        batch = as_nstep_batch(batch)
        hp = state.hparams
        k_online, k_next, k_target = jax.random.split(key, 3)
        returns, discount = nstep_return(batch.rewards, batch.mask, batch.terminated, hp.gamma)
        next_target = net.apply(state.target_params, batch.next_obs, noise_key(k_target))
        next_online = net.apply(state.params, batch.next_obs, noise_key(k_next)) if config.double else None

        if config.distributional:
            if config.double:
                target = categorical_double_q_target(next_online, next_target, returns, discount, support)
            else:
                target = categorical_q_target(next_target, returns, discount, support)
        elif config.double:
            target = double_q_target(next_online, next_target, returns, discount)
        else:
            target = q_learning_target(next_target, returns, discount)

        def objective(params):
            out = net.apply(params, batch.obs, noise_key(k_online))
            chosen = select_action_values(out, batch.action)
            if config.distributional:
                per_sample = categorical_loss(chosen, target)
                priority = per_sample
                q = expected_q(out, support)
            else:
                td = target - chosen
                per_sample = td_loss(td, config.loss)
                priority = jnp.abs(td)
                q = out
            loss = jnp.mean(batch.weights * per_sample)
            return loss, (jax.lax.stop_gradient(priority), q)

        (loss, (priority, q)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = maybe_pmean(grads, config.axis_name)
        learning_rate = linear_decay(hp.learning_rate, state.step, config.lr_decay_updates)
        params, opt_state = apply_gradients(tx, state.params, state.opt_state, grads, learning_rate)
        step = state.step + 1
        target_params = jax.lax.cond(
            step % config.target_update_interval == 0,
            lambda: polyak_update(params, state.target_params, hp.tau),
            lambda: state.target_params,
        )
        new_state = DQNState(params, target_params, opt_state, hp, step)
        metrics = {"loss": loss, "q_mean": jnp.mean(q), "q_taken": jnp.mean(select_action_values(q, batch.action))}
        if config.lr_decay_updates:
            metrics["learning_rate"] = learning_rate
        if config.prioritized:
            metrics["priorities"] = priority
        return new_state, metrics

    def make_buffer(loop) -> ReplayBuffer:
        if not config.prioritized and frame_replay_for(spec.obs_shape, spec.obs_dtype):
            # Stacked Atari frames: store each frame once and rebuild stacks at sample time.
            return frame_replay(loop.capacity_per_env, loop.batch_size, config.n_step)
        return buffer_for(config, loop.capacity_per_env, loop.batch_size)

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  make_buffer=make_buffer, kernels=kernels))


SPEC = AlgoSpec(name="dqn", loop="off_policy", action_kind="discrete", Config=Config, make=make,
                presets={"CartPole-v1": "dqn_cartpole.yaml"})
