"""Neural Episodic Control (Pritzel et al. 2017) as pure functions over the DND in `angle_jax.episodic.dnd`.

An embedding network `h(s)` (an MLP, or the MinAtar / Nature CNN for image observations, then a
linear layer of `key_size`) feeds one differentiable neural dictionary per action:
`Q(s, a) = Σ_i w_i v_i` over the `k` nearest keys of action `a`'s dictionary to `h(s)`, with
kernel weights `1 / (‖h − key_i‖² + δ)` normalised over them. An action whose dictionary is still
empty has `Q = 0`: before any write, every action ties and the greedy action is action 0.

Writes (`observe`, called by the off-policy loop once per vectorised env step): every env keeps
its last `N` steps in a pending window (a ring `[N, num_envs, ...]`). The oldest pending step `t`
of an env is due once its N-step return is known: `N` steps have been seen since (then
`G = Σ_{i<N} γ^i r_{t+i} + γ^N max_a Q(s_{t+N}, a)`), or its episode has ended at step `t+m−1`
(`m ≤ N`; then `G = Σ_{i<m} γ^i r_{t+i}`, plus `γ^m max_a Q(s', a)` from the true successor `s'`
of that step when the episode was truncated, nothing when it terminated). Each call pops at most
one due step per env and writes `(h(s_t), a_t, G)` with `dnd.write` (env 0 first; an env with
nothing due is masked out), so the work per env step is fixed. In the long run one step leaves
per step that arrives; at an episode end the episode's last pending steps are all due at once
and leave one per env step, so such a write comes at most `N` env steps after its return was
known (the window never holds more than `N` steps). The bootstrap lookup uses the dictionary
before this call's writes and stamps its neighbours as used (`dnd.touch`); the lookups of `act`
and `explore` stamp nothing (they return only actions). Keys are computed with the embedding
parameters of the time of the write. The loop calls `observe` in its random warm-up too, so the
dictionary and the replay fill from the first env step.

Replay (a design choice of this module): NEC learns from `(s_t, a_t, G_t)` with `G_t` as it was
when written, and `G_t` is known only when the step leaves the window, so the loop's replay of
`Transition`s cannot hold it. The agent state keeps its own uniform replay (`replay_size` items
in all, `batch_size` per update; the run's `buffer_size` / `batch_size` are not used) of one row
per env step, `(obs, action, G, valid)` for every env, `valid` False where nothing left the window.
`make_buffer` gives the loop a replay that stores nothing and samples `None`; `update(state, None,
key)` then draws its batch from the state's replay (a given `NECBatch` is used as it is). The
replay is part of the agent state, so it is saved with the agent (params.ckpt, checkpoints).

`update`: `h = h(obs)`; `Q(s, a)` from the neighbours of the taken action; loss = mean over valid
items of `(Q − G)²`. The embedding parameters take an Adam step (`learning_rate`); the looked-up
keys and values take an SGD step with `dnd_learning_rate` (`dnd.gradient_step`, a slot's gradient
averaged over the batch items that used it) and are stamped as used.

`act`: `argmax_a Q(h(obs), a)`; `explore`: ε-greedy on it, ε linear from `epsilon_start` to
`epsilon_end` over the first `epsilon_decay_steps` env steps (DQN's schedule).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.algos.dqn import check_epsilon_schedule, epsilon_greedy, epsilon_schedule, greedy_action
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import apply_gradients, direction_optimizer, hparams_from_config
from angle_jax.core.types import AlgoSpec, Algorithm, Transition, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.episodic import dnd
from angle_jax.networks.heads import TORSOS, QNetwork, resolve_torso
from angle_jax.networks.mlp import ACTIVATIONS
from angle_jax.replay.buffer import BufferState, ReplayBuffer, uniform_replay


@dataclasses.dataclass(frozen=True)
class Config:
    """NEC settings. Sizes and flags are static; the floats named in `NECHParams` are traced.

    Embedding: `torso` ("auto": MLP for vectors, MinAtar CNN for small grids, Nature CNN for
    frames), `hidden` dense layers, then a linear layer of `key_size`.
    Dictionary: `capacity` entries per action, `k` neighbours per lookup, kernel constant
    `delta`, tabular rate `alpha` for a write that matches a stored key within `match_radius`
    (squared distance; 0: only an identical key), `dnd_learning_rate` for the gradient step on
    looked-up keys and values. Returns: `n_step`, `gamma`.
    Replay (the agent's own): `replay_size` items in all, `batch_size` per update.
    """

    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    torso: str = "auto"
    key_size: int = 64
    k: int = 50
    capacity: int = 25_000
    n_step: int = 50
    replay_size: int = 100_000
    batch_size: int = 32
    max_grad_norm: float = 10.0
    adam_eps: float = 1e-8
    learning_rate: float = 1e-4
    dnd_learning_rate: float = 0.1
    gamma: float = 0.99
    alpha: float = 0.1
    delta: float = 1e-3
    match_radius: float = 0.0
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 10_000
    axis_name: str | None = None

    def validate(self, num_envs: int | None = None) -> None:
        dnd.check(self.k, self.capacity, self.key_size, self.alpha, self.delta)
        if self.n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {self.n_step}")
        if any(w <= 0 for w in self.hidden):
            raise ValueError(f"hidden must be a list of positive widths, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.torso not in TORSOS:
            raise ValueError(f"torso must be one of {list(TORSOS)}, got {self.torso!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if num_envs is not None and self.replay_size < num_envs:
            raise ValueError(f"replay_size ({self.replay_size}) must be at least num_envs ({num_envs})")
        if self.replay_size < 1:
            raise ValueError(f"replay_size must be at least 1, got {self.replay_size}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("learning_rate", "dnd_learning_rate", "adam_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        check_epsilon_schedule(self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps)
        if self.axis_name is not None:
            raise ValueError("nec keeps one dictionary per run and does not support data_parallel > 1")


@struct.dataclass
class NECHParams:
    """Numeric hyperparameters, traced (sweepable with vmap)."""

    learning_rate: jax.Array
    dnd_learning_rate: jax.Array
    gamma: jax.Array
    alpha: jax.Array
    delta: jax.Array
    match_radius: jax.Array
    epsilon_start: jax.Array
    epsilon_end: jax.Array
    epsilon_decay_steps: jax.Array


@struct.dataclass
class Pending:
    """The last steps of every env not yet written, a ring per env: leaves `[N, num_envs, ...]`.

    The env's pending steps are ring slots `head, head + 1, ..., head + count − 1` (mod N), oldest
    first, consecutive steps of that env.
    """

    obs: jax.Array
    next_obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    head: jax.Array    # [num_envs] int32
    count: jax.Array   # [num_envs] int32, at most N


@struct.dataclass
class NECBatch:
    """Replay items: obs `[B, ...]`, action `[B]`, N-step return `[B]`, valid `[B]` (False: an
    empty replay slot, left out of the loss)."""

    obs: jax.Array
    action: jax.Array
    ret: jax.Array
    valid: jax.Array


@struct.dataclass
class NECState:
    params: dict
    opt_state: tuple
    dnd: dnd.DNDState
    pending: Pending
    replay: BufferState   # NECBatch rows `[rows, num_envs]`
    hparams: NECHParams
    step: jax.Array  # gradient updates done so far

    shared_fields = ("step",)  # one counter for all seeds: see core/axes.py


# ---- named pieces -------------------------------------------------------------

def due_returns(pending: Pending, gamma: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """For every env, whether its oldest pending step is due and its return so far.

    Returns `(due [E] bool, partial [E] float32, bootstrap [E] bool, m [E] int32)`: `m` is the
    number of steps in the return (from the oldest pending step to the first episode end, at
    most `N`), `partial = Σ_{i<m} γ^i r_{t+i}`, and `bootstrap` whether `γ^m max_a Q` of the
    successor of the m-th step (`next_obs` at ring slot `(head + m − 1) mod N`) is to be added:
    not when that step terminated the episode. Meaningful where `due`.
    """
    n, num_envs = pending.reward.shape
    offsets = jnp.arange(n)[:, None]
    slots = (pending.head[None, :] + offsets) % n                      # [N, E] oldest first
    envs = jnp.arange(num_envs)[None, :]
    inside = offsets < pending.count[None, :]
    done = (pending.terminated | pending.truncated)[slots, envs] & inside
    ended = jnp.any(done, axis=0)
    due = (pending.count >= n) | ended
    m = jnp.where(ended, jnp.argmax(done, axis=0) + 1, n)              # steps in the return, 1..N
    used = offsets < m[None, :]
    discounts = jnp.power(gamma, jnp.arange(n, dtype=jnp.float32))[:, None]
    partial = jnp.sum(jnp.where(used, discounts * pending.reward[slots, envs], 0.0), axis=0)
    last = (pending.head + m - 1) % n
    bootstrap = ~pending.terminated[last, jnp.arange(num_envs)]
    return due, partial, bootstrap, m.astype(jnp.int32)


def push(pending: Pending, tr: Transition) -> Pending:
    """`pending` with the step `tr` (leaves `[E, ...]`) appended to every env's window (room is
    guaranteed: a full window's oldest step is due and leaves in the same call)."""
    n = pending.reward.shape[0]
    envs = jnp.arange(pending.head.shape[0])
    pos = (pending.head + pending.count) % n
    return pending.replace(
        obs=pending.obs.at[pos, envs].set(tr.obs.astype(pending.obs.dtype)),
        next_obs=pending.next_obs.at[pos, envs].set(tr.next_obs.astype(pending.next_obs.dtype)),
        action=pending.action.at[pos, envs].set(tr.action.astype(jnp.int32)),
        reward=pending.reward.at[pos, envs].set(tr.reward.astype(jnp.float32)),
        terminated=pending.terminated.at[pos, envs].set(tr.terminated.astype(jnp.bool_)),
        truncated=pending.truncated.at[pos, envs].set(tr.truncated.astype(jnp.bool_)),
        count=pending.count + 1,
    )


def embedding_network(config: Config, spec: EnvSpec) -> QNetwork:
    """obs -> keys `[batch, key_size]`: the value-family torso and dense stack with `key_size` linear outputs."""
    torso, channels_first = resolve_torso(config.torso, spec.obs_shape)
    return QNetwork(num_actions=config.key_size, hidden=tuple(config.hidden), torso=torso,
                    obs_ndim=len(spec.obs_shape), channels_first=channels_first, activation=config.activation)


def null_replay() -> ReplayBuffer:
    """The loop's replay for NEC: stores nothing, samples `None` (NEC's replay is in its state)."""
    return ReplayBuffer(init=lambda example: (), add=lambda state, item: state, sample=lambda state, key: None,
                        can_sample=lambda state: jnp.asarray(True), capacity=0, batch_size=0)


# ---- composition --------------------------------------------------------------

def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """NEC for a discrete-action env."""
    del total_steps
    if not spec.discrete:
        raise ValueError(f"nec needs discrete actions; {spec.name} has a continuous action space")
    config.validate(spec.num_envs)
    num_envs, num_actions, n = spec.num_envs, spec.action_dim, config.n_step
    net = embedding_network(config, spec)
    tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, config.adam_eps))
    replay = uniform_replay(max(1, config.replay_size // num_envs), config.batch_size, kernels=kernels)
    obs_dtype = jnp.dtype(spec.obs_dtype)

    def embed(params, obs):
        return net.apply(params, obs)

    def q_values(state: NECState, obs: jax.Array) -> jax.Array:
        q, _ = dnd.lookup(state.dnd, embed(state.params, obs), config.k, state.hparams.delta)
        return q

    def init(key: jax.Array, spec_: EnvSpec = spec) -> NECState:
        obs = jnp.zeros((1, *spec_.obs_shape), obs_dtype)
        params = net.init(key, obs)
        window_obs = jnp.zeros((n, num_envs, *spec_.obs_shape), obs_dtype)
        flags = jnp.zeros((n, num_envs), jnp.bool_)
        pending = Pending(window_obs, window_obs, jnp.zeros((n, num_envs), jnp.int32),
                          jnp.zeros((n, num_envs), jnp.float32), flags, flags,
                          jnp.zeros((num_envs,), jnp.int32), jnp.zeros((num_envs,), jnp.int32))
        example = NECBatch(jnp.zeros((num_envs, *spec_.obs_shape), obs_dtype), jnp.zeros((num_envs,), jnp.int32),
                           jnp.zeros((num_envs,), jnp.float32), jnp.zeros((num_envs,), jnp.bool_))
        return NECState(params=params, opt_state=tx.init(params),
                        dnd=dnd.init(num_actions, config.capacity, config.key_size), pending=pending,
                        replay=replay.init(example), hparams=hparams_from_config(NECHParams, config),
                        step=jnp.zeros((), jnp.int32))

    def observe(state: NECState, tr: Transition, key: jax.Array) -> NECState:
        """Append the step to every env's window; write each env's oldest step if it is due."""
        del key
        hp = state.hparams
        pending = push(state.pending, tr)
        due, partial, bootstrap, m = due_returns(pending, hp.gamma)
        envs = jnp.arange(num_envs)
        last = (pending.head + m - 1) % n
        oldest = pending.head
        h_next = embed(state.params, pending.next_obs[last, envs])
        q_next, nb = dnd.lookup(state.dnd, h_next, config.k, hp.delta)
        bootstrap = bootstrap & due
        ret = partial + jnp.where(bootstrap, jnp.power(hp.gamma, m.astype(jnp.float32)) * jnp.max(q_next, -1), 0.0)
        obs, action = pending.obs[oldest, envs], pending.action[oldest, envs]
        table = dnd.touch(state.dnd, nb.indices, nb.valid & bootstrap[:, None, None])
        table = dnd.write(table, embed(state.params, obs), action, ret, hp.alpha, hp.match_radius, valid=due)
        replay_state = replay.add(state.replay, NECBatch(obs, action, jnp.where(due, ret, 0.0), due))
        pending = pending.replace(head=jnp.where(due, (pending.head + 1) % n, pending.head),
                                  count=pending.count - due.astype(jnp.int32))
        return state.replace(dnd=table, pending=pending, replay=replay_state)

    def act(state: NECState, obs: jax.Array) -> jax.Array:
        """argmax_a Q(h(obs), a) (first maximiser on ties; an action with no entries has Q = 0)."""
        return greedy_action(q_values(state, obs))

    def explore(state: NECState, obs: jax.Array, key: jax.Array, step: jax.Array | None = None) -> jax.Array:
        """ε-greedy at env step `step` (None: the final ε)."""
        hp = state.hparams
        if step is None:
            epsilon = hp.epsilon_end
        else:
            epsilon = epsilon_schedule(step, hp.epsilon_start, hp.epsilon_end, hp.epsilon_decay_steps)
        return epsilon_greedy(q_values(state, obs), key, epsilon)

    def update(state: NECState, batch: NECBatch | None, key: jax.Array):
        """One step on `batch` (None: drawn with `key` from the state's replay).

        Metrics: loss, q_mean (Q of the taken actions), return_mean (their targets G), both over
        the valid items, and dnd_size (entries per action, averaged over actions, before the step).
        """
        if batch is None:
            batch = replay.sample(state.replay, key)
        hp = state.hparams
        b = batch.action.shape[0]
        action = batch.action.astype(jnp.int32)
        weight = batch.valid.astype(jnp.float32)
        h, embed_vjp = jax.vjp(lambda p: embed(p, batch.obs), state.params)
        nb = dnd.neighbours(state.dnd, h, config.k)
        # only the taken action's neighbours enter the loss (and the averaging of slot gradients)
        taken = (jnp.arange(num_actions)[None, :, None] == action[:, None, None]) & batch.valid[:, None, None]
        nb = dnd.Neighbours(nb.indices, nb.valid & taken)
        keys, values = dnd.gather(state.dnd, nb)

        def objective(h, keys, values):
            q = dnd.q_from_neighbours(h, keys, values, nb.valid, hp.delta)[jnp.arange(b), action]
            loss = jnp.sum(weight * jnp.square(q - batch.ret)) / jnp.maximum(jnp.sum(weight), 1.0)
            return loss, q

        (loss, q), (g_h, g_keys, g_values) = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)(
            h, keys, values)
        (grads,) = embed_vjp(g_h)
        params, opt_state = apply_gradients(tx, state.params, state.opt_state, grads, hp.learning_rate)
        table = dnd.gradient_step(state.dnd, nb, g_keys, g_values, hp.dnd_learning_rate)
        table = dnd.touch(table, nb.indices, nb.valid)
        denom = jnp.maximum(jnp.sum(weight), 1.0)
        metrics = {"loss": loss, "q_mean": jnp.sum(weight * q) / denom,
                   "return_mean": jnp.sum(weight * batch.ret) / denom,
                   "dnd_size": jnp.mean(state.dnd.size.astype(jnp.float32))}
        return state.replace(params=params, opt_state=opt_state, dnd=table, step=state.step + 1), metrics

    def make_buffer(loop) -> ReplayBuffer:
        del loop
        return null_replay()

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  make_buffer=make_buffer, kernels=kernels, observe=observe))


SPEC = AlgoSpec(name="nec", loop="off_policy", action_kind="discrete", Config=Config, make=make,
                presets={"CartPole-v1": "nec_cartpole.yaml", "Breakout-MinAtar": "nec_minatar.yaml"})
