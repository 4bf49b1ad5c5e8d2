"""Agent57's meta-controller: a sliding-window UCB bandit with ε-greedy exploration, one per env.

Each env picks, at the start of every episode, an arm (a member of the policy family) and,
when the episode ends, records the pair (arm, episode return). The bandit only looks at the
last τ (`window`) pairs of its env, so it follows rewards that change as the agent learns.
Agent57 (Badia et al. 2020, appendix "sliding-window UCB"), for episode k of an env with N arms:

    N_k(a, τ) = Σ_{m=k−τ}^{k−1} 1{A_m = a}
    μ̂_k(a, τ) = (1 / N_k(a, τ)) Σ_{m=k−τ}^{k−1} R_m 1{A_m = a}
    A_k = k                                                   for k < N (each arm once, in order)
    A_k = argmax_a μ̂_{k−1}(a, τ) + β √(1 / N_{k−1}(a, τ))    with probability 1 − ε, for k ≥ N
    A_k ~ U{0, …, N−1}                                        with probability ε, for k ≥ N

An arm with no episode in the window (N_{k−1}(a, τ) = 0) has an infinite bonus: the greedy
choice takes the untried arm of lowest index (ties between finite scores go to the lowest index
too). Only the ε-random choice, after the first N episodes, can pass over an untried arm, as in
the paper. With τ < N the first N episodes still go 0, 1, …, N−1.

The state holds fixed-size arrays only (a ring buffer `[num_envs, τ]` of arms and returns and
an episode count per env), so `select` and `update` are jittable and vmap over runs; `beta`
and `epsilon` may be traced.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class BanditState:
    arms: jax.Array       # [num_envs, window] int32: arm of each recorded episode (ring buffer)
    rewards: jax.Array    # [num_envs, window] float32: its return
    count: jax.Array      # [num_envs] int32: episodes ever recorded; the next slot is count % window
    num_arms: int = struct.field(pytree_node=False)

    @property
    def window(self) -> int:
        return self.arms.shape[-1]


def validate(num_arms: int, window: int, beta: float = 0.0, epsilon: float = 0.0, num_envs: int = 1) -> None:
    """Raise ValueError (one line) for settings the bandit cannot run with."""
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if int(num_arms) < 1:
        raise ValueError(f"num_arms must be >= 1, got {num_arms}")
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not float(beta) >= 0.0:  # also refuses NaN
        raise ValueError(f"beta must be >= 0, got {beta}")
    if not 0.0 <= float(epsilon) <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")


def init(num_envs: int, num_arms: int, window: int) -> BanditState:
    """An empty history for each of `num_envs` independent bandits over `num_arms` arms."""
    validate(num_arms, window, num_envs=num_envs)
    return BanditState(arms=jnp.zeros((num_envs, window), jnp.int32),
                       rewards=jnp.zeros((num_envs, window), jnp.float32),
                       count=jnp.zeros((num_envs,), jnp.int32), num_arms=num_arms)


def window_stats(state: BanditState) -> tuple[jax.Array, jax.Array]:
    """`(N(a, τ), Σ R 1{A = a})`, both `[num_envs, num_arms]`, over each env's recorded window."""
    filled = jnp.arange(state.window)[None, :] < jnp.minimum(state.count, state.window)[:, None]
    hits = jax.nn.one_hot(state.arms, state.num_arms, dtype=jnp.float32) * filled[..., None]
    return jnp.sum(hits, axis=1), jnp.einsum("ewa,ew->ea", hits, state.rewards)


def ucb_scores(state: BanditState, beta: float | jax.Array) -> jax.Array:
    """μ̂(a, τ) + β √(1 / N(a, τ)) per env and arm `[num_envs, num_arms]`; +inf where N(a, τ) = 0."""
    n, total = window_stats(state)
    tried = n > 0
    safe_n = jnp.where(tried, n, 1.0)
    return jnp.where(tried, total / safe_n + beta * jnp.sqrt(1.0 / safe_n), jnp.inf)


def select(state: BanditState, key: chex.PRNGKey, beta: float | jax.Array,
           epsilon: float | jax.Array) -> jax.Array:
    """The arm `[num_envs]` int32 each env acts with in its next episode.

    Round-robin over the first `num_arms` episodes, then the UCB argmax (`ucb_scores`, ties to
    the lowest index) or, with probability `epsilon`, a uniform arm. `key` is split into the
    ε draws (`uniform`, one per env) and the random arms (`randint`, one per env).
    """
    chex.assert_rank([state.arms, state.count], [2, 1])
    num_envs = state.count.shape[0]
    explore_key, arm_key = jax.random.split(key)
    explore = jax.random.uniform(explore_key, (num_envs,)) < epsilon
    random_arm = jax.random.randint(arm_key, (num_envs,), 0, state.num_arms, dtype=jnp.int32)
    greedy = jnp.argmax(ucb_scores(state, beta), axis=-1).astype(jnp.int32)
    warming_up = state.count < state.num_arms
    return jnp.where(warming_up, state.count, jnp.where(explore, random_arm, greedy)).astype(jnp.int32)


def update(state: BanditState, arms: jax.Array, rewards: jax.Array, mask: jax.Array) -> BanditState:
    """Record `(arms[e], rewards[e])` (the arm and the episode's return) for each env whose
    episode ended (`mask[e]` true), overwriting its oldest pair once the window is full; the
    other envs' histories are left as they are, bit for bit. Arms must lie in [0, num_arms):
    another value is stored but counts for no arm."""
    num_envs = state.count.shape[0]
    chex.assert_shape([arms, rewards, mask], (num_envs,))
    mask = mask.astype(jnp.bool_)
    slot = jnp.arange(state.window)[None, :] == (state.count % state.window)[:, None]
    write = slot & mask[:, None]
    return state.replace(arms=jnp.where(write, arms.astype(jnp.int32)[:, None], state.arms),
                         rewards=jnp.where(write, rewards.astype(jnp.float32)[:, None], state.rewards),
                         count=state.count + mask.astype(jnp.int32))
