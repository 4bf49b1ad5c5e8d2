"""Agent57 (Badia et al. 2020) and NGU (Badia et al. 2020b, "Never Give Up") on R2D2.

R2D2 (`algos.r2d2`: burn-in, sequence replay with the actor's core state, n-step double-Q
targets through the value rescaling `h`, prioritized sequences, per-env ε ladder) with:

- **a family of N policies** `(β_j, γ_j)` (`algos.policy_family`: β on NGU's sigmoid schedule up
  to `beta_max`, γ from `gamma_max` at j = 0 down to `gamma_min`, or given as lists). The policy
  index j enters the network as a one-hot beside the encoded observation (before the core).
- **two Q heads** on the core, extrinsic `Q_e` and intrinsic `Q_i`; policy j acts on
  `Q_j = h(h⁻¹(Q_e) + β_j h⁻¹(Q_i))` (`policy_family.combined_q`). Each head learns its own
  rescaled n-step double-Q target, with the discount γ_j of the step's policy and the action
  chosen at the bootstrap by the combined `Q_j` of the online network (both heads evaluate the
  policy j follows).
- **the intrinsic reward** `r_i = r_episodic · min(max(α, 1), L)`, computed in the loop at every env
  step (`observe`): the embedding `f` (`networks.inverse_dynamics`, trained by inverse dynamics
  with its own optimizer) of each env's observation is added to that env's episodic memory
  (`episodic.novelty`, `[num_envs, M, D]`), the successor's embedding gets the episodic reward
  against it (the NGU paper's Algorithm 1), and the memory of an env is emptied when its episode
  ends. `α = 1 + (err − μ)/σ` is RND's prediction error on the successor against running
  statistics of the error (`algos.rnd`'s networks and error, its own optimizer).
- **the meta-controller** (`bandits.sliding_window_ucb`): one sliding-window UCB bandit per env
  picks j for that env's next episode from the extrinsic returns of its last `bandit_window`
  episodes, updated when the env's episode ends. `meta_controller: false` (the `ngu` algorithm)
  keeps env i on policy `i mod N` instead.

The step's policy index and intrinsic reward are stored with it in the sequence replay
(`tagged_replay`) and reach the learner in `Agent57Batch.policy` / `.intrinsic`. The loss is the sum
of the two heads' R2D2 losses; a sequence's priority is R2D2's `η max + (1 − η) mean` of
`|δ_e| + |δ_i|`. The embedding and RND's predictor take one step each per update, on the sampled
sequences (inverse dynamics on their pairs of consecutive steps of one episode). Evaluation
(`act`) is greedy on `Q_e` of the exploit arm j = 0 (β = 0, γ_max).

Conventions: an "episode end" is a step with `terminated` or `truncated` (what ends an episode
in the replay too); with envpool's `episodic_life` that is a lost life. The intrinsic reward of
a step is that of the observation it leads to (`next_obs`, the true successor).
"""
from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from angle_jax.algos import policy_family
from angle_jax.algos import r2d2
from angle_jax.algos.dqn import epsilon_greedy, greedy_action
from angle_jax.algos.r2d2 import epsilon_ladder, rescaled_double_q_targets, sequence_td_loss
from angle_jax.algos.rnd import Embedding as RNDEmbedding
from angle_jax.algos.rnd import intrinsic_reward as rnd_error
from angle_jax.bandits import sliding_window_ucb as bandit
from angle_jax.core.kernels import XLA, Kernels
from angle_jax.core.optim import apply_gradients, direction_optimizer, hparams_from_config
from angle_jax.core.running_stats import RunningStats, normalize_obs
from angle_jax.core.types import AlgoSpec, Algorithm, Memory, SequenceBatch, SequenceStep, bind_kernels
from angle_jax.envs.base import EnvSpec
from angle_jax.episodic import novelty
from angle_jax.networks.heads import DuelingHead, QHead
from angle_jax.networks.inverse_dynamics import InverseDynamics, inverse_dynamics_loss, sequence_pairs
from angle_jax.networks.recurrent import (RecurrentNetwork, burn_in, initial_core, make_encoder, set_forget_bias,
                                          unroll)
from angle_jax.replay.buffer import ReplayBuffer
from angle_jax.replay.sequence import sequence_priority

EXTRINSIC, INTRINSIC = 0, 1  # the two heads along the network's output axis -2


@dataclasses.dataclass(frozen=True)
class Config(r2d2.BaseConfig):
    """Agent57 settings. Sizes and flags are static; the floats named in `Agent57HParams` are traced.

    The R2D2 part is `r2d2.BaseConfig`'s (no single `gamma`: each policy has its own). Family:
    `num_policies` N, `beta_max`, `gamma_max`, `gamma_min` (the NGU schedules), or `betas` /
    `gammas` given as lists of N values.
    Meta-controller: `meta_controller` (false: env i runs policy i mod N), `bandit_window` τ,
    `bandit_beta` (UCB bonus), `bandit_epsilon` (Agent57: 160, 1, 0.5). Episodic novelty:
    `memory_size` M embeddings per env, `embed_dim` D, `embed_hidden` encoder layers,
    `classifier_hidden`, and Algorithm 1's k (`episodic_k`), ξ (`cluster_distance`),
    ε (`kernel_epsilon`), c (`pseudo_count`), s_max (`similarity_max`). Life-long novelty:
    `lifelong` (false: α = 1), RND's `rnd_hidden` / `rnd_embed_dim` networks, `rnd_obs_clip`,
    the multiplier cap `max_multiplier` L.
    """

    # the family of policies
    num_policies: int = 32
    beta_max: float = 0.3
    gamma_max: float = 0.997
    gamma_min: float = 0.99
    betas: tuple[float, ...] = ()
    gammas: tuple[float, ...] = ()
    # the meta-controller
    meta_controller: bool = True
    bandit_window: int = 160
    bandit_beta: float = 1.0
    bandit_epsilon: float = 0.5
    # episodic novelty
    memory_size: int = 30_000
    embed_dim: int = 32
    embed_hidden: tuple[int, ...] = (64,)
    classifier_hidden: int = 128
    embed_learning_rate: float = 5e-4
    episodic_k: int = 10
    cluster_distance: float = 0.008
    kernel_epsilon: float = 1e-4
    pseudo_count: float = 1e-3
    similarity_max: float = 8.0
    # life-long novelty
    lifelong: bool = True
    rnd_hidden: tuple[int, ...] = (64,)
    rnd_embed_dim: int = 64
    rnd_learning_rate: float = 5e-4
    rnd_obs_clip: float = 5.0
    max_multiplier: float = 5.0
    axis_name: str | None = None

    def validate(self, num_envs: int | None = None) -> None:
        super().validate(num_envs)
        if self.axis_name is not None:
            raise ValueError("agent57 keeps episodic memories and a bandit per env and does not support "
                             "data_parallel > 1")
        n = self.num_policies
        if n < 1:
            raise ValueError(f"num_policies must be >= 1, got {n}")
        for name in ("gamma_max", "gamma_min"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.gamma_min > self.gamma_max:
            raise ValueError(f"gamma_min ({self.gamma_min}) must not exceed gamma_max ({self.gamma_max})")
        if not self.beta_max >= 0.0:
            raise ValueError(f"beta_max must be >= 0, got {self.beta_max}")
        for name in ("betas", "gammas"):
            values = getattr(self, name)
            if values and len(values) != n:
                raise ValueError(f"{name} must list num_policies = {n} values, got {len(values)}")
        betas = self.betas or (0.0,) * n        # the schedules are valid by the checks above
        gammas = self.gammas or (0.5,) * n
        try:
            policy_family.check_family(np.asarray(betas), np.asarray(gammas), n)
        except ValueError as e:
            raise ValueError(str(e).replace("must have shape", "must list")) from None
        if self.bandit_window < 1:
            raise ValueError(f"bandit_window must be >= 1, got {self.bandit_window}")
        if not self.bandit_beta >= 0.0:
            raise ValueError(f"bandit_beta must be >= 0, got {self.bandit_beta}")
        if not 0.0 <= self.bandit_epsilon <= 1.0:
            raise ValueError(f"bandit_epsilon must be in [0, 1], got {self.bandit_epsilon}")
        for name in ("memory_size", "embed_dim", "classifier_hidden", "rnd_embed_dim", "episodic_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.memory_size < self.episodic_k:
            raise ValueError(f"memory_size ({self.memory_size}) must be at least episodic_k ({self.episodic_k}), "
                             f"the neighbours each lookup takes")
        for name in ("embed_hidden", "rnd_hidden"):
            if any(w <= 0 for w in getattr(self, name)):
                raise ValueError(f"{name} must be a list of positive widths, got {list(getattr(self, name))}")
        if self.cluster_distance < 0:
            raise ValueError(f"cluster_distance must be >= 0, got {self.cluster_distance}")
        for name in ("kernel_epsilon", "pseudo_count", "similarity_max", "embed_learning_rate", "rnd_learning_rate",
                     "rnd_obs_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_multiplier < 1.0:
            raise ValueError(f"max_multiplier (L) must be >= 1, got {self.max_multiplier}")
        novelty.check(self.episodic_k, self.memory_size, self.embed_dim, self.cluster_distance,
                      self.kernel_epsilon, self.pseudo_count, self.similarity_max)


def family(config: Config) -> tuple[jax.Array, jax.Array]:
    """`(β [N], γ [N])` float32: the lists given, else NGU's schedules."""
    n = config.num_policies
    betas = (jnp.asarray(config.betas, jnp.float32) if config.betas
             else policy_family.betas(n, config.beta_max))
    gammas = (jnp.asarray(config.gammas, jnp.float32) if config.gammas
              else policy_family.gammas(n, config.gamma_max, config.gamma_min))
    return betas, gammas


# ---- state and the replay's step -------------------------------------------------

@struct.dataclass
class Agent57HParams:
    """Numeric hyperparameters, traced: sweepable with vmap."""

    learning_rate: jax.Array
    epsilon: jax.Array
    epsilon_alpha: jax.Array
    embed_learning_rate: jax.Array
    rnd_learning_rate: jax.Array


@struct.dataclass
class Controller:
    """The per-env bandits' histories (`bandit.BanditState`'s arrays; the arm count is the config's)."""

    arms: jax.Array      # [num_envs, window] int32
    returns: jax.Array   # [num_envs, window] float32
    count: jax.Array     # [num_envs] int32


@struct.dataclass
class Agent57State:
    params: dict                 # the Q-network (encoder, core, extrinsic and intrinsic heads)
    target_params: dict
    opt_state: tuple
    embed_params: dict           # the inverse-dynamics embedding f and its classifier
    embed_opt_state: tuple
    rnd_params: dict             # RND's predictor
    rnd_target_params: dict      # RND's fixed random target
    rnd_opt_state: tuple
    obs_stats: RunningStats      # of the observations RND sees
    error_stats: RunningStats    # of RND's error (α's μ and σ)
    memory: novelty.EpisodicMemory  # [num_envs, M, D]
    controller: Controller
    arm: jax.Array               # [num_envs] int32: the policy each env follows in its current episode
    episode_return: jax.Array    # [num_envs, 2] float32: extrinsic and intrinsic return of the current episode so far
    last_return: jax.Array       # [num_envs, 2] float32: the same for each env's last finished episode
    hparams: Agent57HParams
    step: jax.Array              # gradient updates done so far

    shared_fields = ("step",)


@struct.dataclass
class Agent57Step(SequenceStep):
    """A `SequenceStep` with the policy index j the env followed and the step's intrinsic reward."""

    policy: jax.Array = None     # [num_envs] int32
    intrinsic: jax.Array = None  # [num_envs] float32


@struct.dataclass
class Agent57Batch(SequenceBatch):
    """A `SequenceBatch` with each step's policy index and intrinsic reward, `[L, B]`."""

    policy: jax.Array = None
    intrinsic: jax.Array = None


@struct.dataclass
class _Tagged:
    action: jax.Array
    policy: jax.Array
    intrinsic: jax.Array


def tagged_replay(inner: ReplayBuffer) -> ReplayBuffer:
    """`inner` (a `sequence_replay`) storing `Agent57Step`s and sampling `Agent57Batch`es.

    The policy index and the intrinsic reward ride in the stored action (a pytree the sequence
    store gathers with the other per-step fields), so they share its rows, slots and layout.
    """
    def untag(step: Agent57Step) -> SequenceStep:
        return SequenceStep(step.obs, _Tagged(step.action, step.policy, step.intrinsic), step.reward,
                            step.terminated, step.truncated, step.reset, step.core)

    def sample(state, key) -> Agent57Batch:
        b = inner.sample(state, key)
        return Agent57Batch(obs=b.obs, action=b.action.action, reward=b.reward, terminated=b.terminated,
                            truncated=b.truncated, reset=b.reset, core=b.core, index=b.index, weights=b.weights,
                            policy=b.action.policy, intrinsic=b.action.intrinsic)

    return inner._replace(init=lambda example: inner.init(untag(example)),
                          add=lambda state, item: inner.add(state, untag(item)), sample=sample)


# ---- networks -------------------------------------------------------------------

class PolicyConditioned(nn.Module):
    """`encoder(obs)` followed by the policy one-hot: takes `(obs, one_hot)`."""

    encoder: nn.Module

    def __call__(self, inputs):
        obs, one_hot = inputs
        return jnp.concatenate([self.encoder(obs), one_hot.astype(jnp.float32)], axis=-1)


class TwoHeads(nn.Module):
    """The extrinsic and the intrinsic Q heads on the same input: `[..., 2, A]` (EXTRINSIC, INTRINSIC)."""

    extrinsic: nn.Module
    intrinsic: nn.Module

    def __call__(self, y):
        return jnp.stack([self.extrinsic(y), self.intrinsic(y)], axis=-2)


def network(config: Config, spec: EnvSpec) -> RecurrentNetwork:
    """encoder ⊕ one-hot(j) -> core -> (Q_e, Q_i), applied to `(obs, one_hot)`."""
    encoder = PolicyConditioned(make_encoder(config.torso, config.hidden, config.activation, spec.obs_shape))
    head_cls = DuelingHead if config.dueling else QHead

    def head():
        return head_cls(spec.action_dim, hidden=tuple(config.head_hidden), activation=config.activation)

    return RecurrentNetwork(encoder, TwoHeads(head(), head()), config.core, config.core_size)


def embedding_network(config: Config, spec: EnvSpec) -> InverseDynamics:
    return InverseDynamics(spec.action_dim, tuple(spec.obs_shape), config.embed_dim, tuple(config.embed_hidden),
                           config.classifier_hidden, config.activation, config.torso)


def rnd_network(config: Config, spec: EnvSpec) -> RNDEmbedding:
    return RNDEmbedding(tuple(config.rnd_hidden), config.rnd_embed_dim, config.activation, len(spec.obs_shape),
                        config.torso)


# ---- named pieces -------------------------------------------------------------

def two_head_targets(q_online: jax.Array, q_target: jax.Array, reward: jax.Array, intrinsic: jax.Array,
                     terminated: jax.Array, truncated: jax.Array, beta: jax.Array, gamma: jax.Array, n_step: int,
                     eps: float | jax.Array = 1e-3) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each head's rescaled n-step double-Q target for the policies of the steps.

    q_online, q_target: `[U + n, B, 2, A]` (heads EXTRINSIC, INTRINSIC); reward, intrinsic,
    terminated, truncated, beta (β of each step's policy): `[U + n, B]`; gamma: `[U, B]` (γ of the
    step's policy; a window never crosses an episode end, so its policy is the step's). The
    bootstrap action is `argmax_a Q_j` of the online heads combined with β of the bootstrap step;
    both heads bootstrap their target network's value of it. Returns `(target_e, target_i, valid)`, `[U, B]`.
    """
    chex.assert_rank([q_online, q_target, reward, beta, gamma], [4, 4, 2, 2, 2])
    chex.assert_equal_shape([q_online, q_target])
    chex.assert_equal_shape([reward, intrinsic, terminated, truncated, beta])
    select = policy_family.combined_q(q_online[..., EXTRINSIC, :], q_online[..., INTRINSIC, :], beta, eps)
    target_e, valid = rescaled_double_q_targets(select, q_target[..., EXTRINSIC, :], reward, terminated, truncated,
                                                gamma, n_step, eps)
    target_i, _ = rescaled_double_q_targets(select, q_target[..., INTRINSIC, :], intrinsic, terminated, truncated,
                                            gamma, n_step, eps)
    return target_e, target_i, valid


# ---- composition --------------------------------------------------------------

def make(config: Config, spec: EnvSpec, *, total_steps: int | None = None, kernels: Kernels = XLA) -> Algorithm:
    """Agent57 (or NGU, `meta_controller: false`) for a discrete-action env, run by the off-policy
    loop with its sequence replay and its `observe` hook."""
    del total_steps
    if not spec.discrete:
        raise ValueError(f"agent57 needs discrete actions; {spec.name} has a continuous action space")
    config.validate(spec.num_envs)
    net = network(config, spec)
    idm = embedding_network(config, spec)
    rnd_net = rnd_network(config, spec)
    tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, config.adam_eps))
    embed_tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, 1e-8))
    rnd_tx = kernels.optimizer(direction_optimizer(config.max_grad_norm, 1e-8))
    n_policies = config.num_policies
    length = config.sequence_length
    rescale_eps = config.value_rescale_eps
    obs_shape = tuple(spec.obs_shape)

    def initial(num_envs: int):
        return initial_core(config.core, config.core_size, num_envs)

    def one_hot(j):
        return policy_family.policy_one_hot(j, n_policies)

    def init(key: jax.Array, spec_: EnvSpec = spec) -> Agent57State:
        k_q, k_embed, k_rnd, k_rnd_target = jax.random.split(key, 4)
        num_envs = spec_.num_envs
        obs = jnp.zeros((1, *spec_.obs_shape), jnp.dtype(spec_.obs_dtype))
        params = net.init(k_q, (obs, one_hot(jnp.zeros((1,), jnp.int32))), initial(1), jnp.ones((1,), jnp.bool_))
        if config.core == "lstm" and config.forget_bias:
            params = set_forget_bias(params, config.forget_bias)
        embed_params = idm.init(k_embed, obs, obs)
        float_obs = obs.astype(jnp.float32)
        rnd_params = rnd_net.init(k_rnd, float_obs)
        controller = Controller(jnp.zeros((num_envs, config.bandit_window), jnp.int32),
                                jnp.zeros((num_envs, config.bandit_window), jnp.float32),
                                jnp.zeros((num_envs,), jnp.int32))
        if config.meta_controller:  # the first episodes go round the arms, from arm 0 (bandit.select)
            arm = jnp.zeros((num_envs,), jnp.int32)
        else:
            arm = jnp.arange(num_envs, dtype=jnp.int32) % n_policies
        return Agent57State(
            params=params, target_params=params, opt_state=tx.init(params),
            embed_params=embed_params, embed_opt_state=embed_tx.init(embed_params),
            rnd_params=rnd_params, rnd_target_params=rnd_net.init(k_rnd_target, float_obs),
            rnd_opt_state=rnd_tx.init(rnd_params),
            obs_stats=RunningStats.create(tuple(spec_.obs_shape)), error_stats=RunningStats.create(),
            memory=novelty.init(num_envs, config.memory_size, config.embed_dim), controller=controller,
            arm=arm, episode_return=jnp.zeros((num_envs, 2), jnp.float32),
            last_return=jnp.zeros((num_envs, 2), jnp.float32),
            hparams=hparams_from_config(Agent57HParams, config), step=jnp.zeros((), jnp.int32))

    def heads(params, obs, j, core, reset):
        return net.apply(params, (obs, one_hot(j)), core, reset)

    def act(state: Agent57State, obs, core, reset):
        """Greedy on Q_e of the exploit arm (j = 0: β = 0, γ_max), and the next core state."""
        q, core = heads(state.params, obs, jnp.zeros((obs.shape[0],), jnp.int32), core, reset)
        return greedy_action(q[:, EXTRINSIC]), core

    def explore(state: Agent57State, obs, core, reset, key, step=None):
        """ε-greedy on Q_j of each env's policy j (env i's ε from the ladder), and the next core state.
        A batch of another size than the training envs' (sampled evaluation) acts with j = 0."""
        del step
        n = obs.shape[0]
        j = state.arm if state.arm.shape[0] == n else jnp.zeros((n,), jnp.int32)
        q, core = heads(state.params, obs, j, core, reset)
        betas, _ = family(config)  # constants of the traced program
        q_j = policy_family.combined_q(q[:, EXTRINSIC], q[:, INTRINSIC], betas[j], rescale_eps)
        eps = epsilon_ladder(n, state.hparams.epsilon, state.hparams.epsilon_alpha)
        return epsilon_greedy(q_j, key, eps), core

    def embed(params, obs):
        flat = obs.reshape(-1, *obs_shape)
        return idm.apply(params, flat, method=idm.embed).reshape(*obs.shape[:obs.ndim - len(obs_shape)], -1)

    def novelty_of(state: Agent57State, obs):
        """RND's error on `obs` against the running observation statistics in `state`."""
        norm = normalize_obs(obs, state.obs_stats, config.rnd_obs_clip)
        return rnd_error(rnd_net.apply(state.rnd_params, norm), rnd_net.apply(state.rnd_target_params, norm))

    def observe(state: Agent57State, step: SequenceStep, next_obs, key) -> tuple[Agent57State, Agent57Step]:
        """One vectorised env step: the intrinsic reward of `next_obs`, the memories and, at episode
        ends, the bandits and the next policy of each env; the step tagged for the replay."""
        n = step.obs.shape[0]
        j = state.arm  # the policy this step was taken with (the bandit may change it for the next episode)
        emb = embed(state.embed_params, jnp.concatenate([step.obs, next_obs]))
        memory = novelty.add(state.memory, emb[:n])
        r_episodic, memory = novelty.episodic_reward(
            memory, emb[n:], config.episodic_k, config.cluster_distance, config.kernel_epsilon,
            config.pseudo_count, config.similarity_max)
        obs_stats, error_stats = state.obs_stats, state.error_stats
        if config.lifelong:
            obs_stats = obs_stats.update(next_obs)
            err = novelty_of(state.replace(obs_stats=obs_stats), next_obs)
            error_stats = error_stats.update(err)
            alpha = novelty.lifelong_multiplier(err, error_stats)
        else:
            alpha = jnp.ones_like(r_episodic)
        r_intrinsic = novelty.intrinsic_reward(r_episodic, alpha, config.max_multiplier)
        done = jnp.logical_or(step.terminated, step.truncated)
        memory = novelty.reset(memory, done)
        episode_return = state.episode_return + jnp.stack([step.reward.astype(jnp.float32), r_intrinsic], axis=1)
        controller, arm = state.controller, state.arm
        if config.meta_controller:  # scored on the extrinsic return
            bandits = bandit.BanditState(controller.arms, controller.returns, controller.count, n_policies)
            bandits = bandit.update(bandits, state.arm, episode_return[:, 0], done)
            arm = jnp.where(done, bandit.select(bandits, key, config.bandit_beta, config.bandit_epsilon), state.arm)
            controller = Controller(bandits.arms, bandits.rewards, bandits.count)
        state = state.replace(obs_stats=obs_stats, error_stats=error_stats, memory=memory, controller=controller,
                              arm=arm, episode_return=jnp.where(done[:, None], 0.0, episode_return),
                              last_return=jnp.where(done[:, None], episode_return, state.last_return))
        tagged = Agent57Step(step.obs, step.action, step.reward, step.terminated, step.truncated, step.reset,
                             step.core, policy=j, intrinsic=r_intrinsic)
        return state, tagged

    def update(state: Agent57State, batch: Agent57Batch, key: jax.Array):
        del key
        chex.assert_axis_dimension(batch.reward, 0, length)
        hp = state.hparams
        head, tail = slice(0, config.burn_in), slice(config.burn_in, None)
        inputs = (batch.obs, one_hot(batch.policy))
        online_core = burn_in(net, state.params, jax.tree.map(lambda x: x[head], inputs), batch.core,
                              batch.reset[head])
        tail_inputs, reset = jax.tree.map(lambda x: x[tail], inputs), batch.reset[tail]
        q_target, _ = unroll(net, state.target_params, inputs, batch.core, batch.reset)
        q_target = jax.lax.stop_gradient(q_target[tail])
        policy = batch.policy[tail]
        betas, gammas = family(config)
        beta, gamma = betas[policy], gammas[policy[:config.unroll]]
        action = batch.action[tail][:config.unroll].astype(jnp.int32)

        def objective(params):
            q, _ = unroll(net, params, tail_inputs, online_core, reset)
            target_e, target_i, valid = two_head_targets(
                jax.lax.stop_gradient(q), q_target, batch.reward[tail].astype(jnp.float32), batch.intrinsic[tail],
                batch.terminated[tail], batch.truncated[tail], beta, gamma, config.n_step, rescale_eps)
            taken = jnp.take_along_axis(q[:config.unroll], action[..., None, None], axis=-1)[..., 0]  # [U, B, 2]
            td_e, td_i = target_e - taken[..., EXTRINSIC], target_i - taken[..., INTRINSIC]
            loss_e = sequence_td_loss(td_e, valid, batch.weights)
            loss_i = sequence_td_loss(td_i, valid, batch.weights)
            return loss_e + loss_i, (jax.lax.stop_gradient((td_e, td_i)), valid, q, loss_e, loss_i)

        (loss, ((td_e, td_i), valid, q, loss_e, loss_i)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        params, opt_state = apply_gradients(tx, state.params, state.opt_state, grads, hp.learning_rate)
        step = state.step + 1
        target_params = jax.lax.cond(step % config.target_update_interval == 0,
                                     lambda: params, lambda: state.target_params)

        # the embedding: inverse dynamics on the batch's consecutive pairs of one episode
        x, x_next, a, same = sequence_pairs(batch.obs, batch.action, batch.reset)

        def embed_objective(p):
            logits = idm.apply(p, x.reshape(-1, *obs_shape), x_next.reshape(-1, *obs_shape))
            return inverse_dynamics_loss(logits, a.reshape(-1), same.reshape(-1))

        embed_loss, embed_grads = jax.value_and_grad(embed_objective)(state.embed_params)
        embed_params, embed_opt_state = apply_gradients(embed_tx, state.embed_params, state.embed_opt_state,
                                                        embed_grads, hp.embed_learning_rate)
        rnd_params, rnd_opt_state, rnd_loss = state.rnd_params, state.rnd_opt_state, jnp.zeros((), jnp.float32)
        if config.lifelong:
            norm = normalize_obs(batch.obs.reshape(-1, *obs_shape), state.obs_stats, config.rnd_obs_clip)
            target = rnd_net.apply(state.rnd_target_params, norm)

            def rnd_objective(p):
                return jnp.mean(rnd_error(rnd_net.apply(p, norm), target))

            rnd_loss, rnd_grads = jax.value_and_grad(rnd_objective)(state.rnd_params)
            rnd_params, rnd_opt_state = apply_gradients(rnd_tx, state.rnd_params, state.rnd_opt_state, rnd_grads,
                                                        hp.rnd_learning_rate)

        count = jnp.maximum(jnp.sum(valid), 1)
        metrics = {"loss": loss, "loss_extrinsic": loss_e, "loss_intrinsic": loss_i,
                   "q_mean": jnp.mean(q[:config.unroll, :, EXTRINSIC]),
                   "q_intrinsic_mean": jnp.mean(q[:config.unroll, :, INTRINSIC]),
                   "td_abs": jnp.sum(jnp.abs(td_e) * valid) / count, "embed_loss": embed_loss, "rnd_loss": rnd_loss,
                   "intrinsic_reward": jnp.mean(batch.intrinsic),
                   "last_episode_return": jnp.mean(state.last_return[:, 0]),
                   "last_episode_intrinsic_return": jnp.mean(state.last_return[:, 1])}
        # the share of envs running each policy (the bandits' choices over training)
        share = jnp.mean(jax.nn.one_hot(state.arm, n_policies), axis=0)
        metrics.update({f"policy_share_{j}": share[j] for j in range(n_policies)})
        if config.prioritized:
            metrics["priorities"] = sequence_priority(jnp.abs(td_e) + jnp.abs(td_i), valid, config.per_eta)
        new_state = state.replace(params=params, target_params=target_params, opt_state=opt_state,
                                  embed_params=embed_params, embed_opt_state=embed_opt_state, rnd_params=rnd_params,
                                  rnd_opt_state=rnd_opt_state, step=step)
        return new_state, metrics

    def make_buffer(loop) -> ReplayBuffer:
        """R2D2's sequence replay for these sizes (its checks, frame deduplication), tagged."""
        return tagged_replay(r2d2.sequence_replay_for(config, spec, loop))

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  make_buffer=make_buffer, kernels=kernels, memory=Memory(initial=initial),
                                  observe=observe))


@dataclasses.dataclass(frozen=True)
class NGUConfig(Config):
    """NGU: Agent57's settings with a fixed policy per env (env i runs policy i mod N) and no bandit."""

    meta_controller: bool = False


SPEC = AlgoSpec(name="agent57", loop="off_policy", action_kind="discrete", Config=Config, make=make,
                presets={"MountainCar-v0": "agent57_mountaincar.yaml", "DeepSea-bsuite": "agent57_deepsea.yaml"})
NGU_SPEC = AlgoSpec(name="ngu", loop="off_policy", action_kind="discrete", Config=NGUConfig, make=make)
