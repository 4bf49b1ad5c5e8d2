"""Targets and returns as small pure array functions (the rlax style): one place for the
return math every algorithm and replay reads.

Conventions: trajectories are time-major `[T, ...]`; `next_values[t] = V(next_obs_t)` of the
true successor (pre-reset); `terminated` stops bootstrapping, `truncated` (a time limit)
bootstraps from the true final observation. Discounts and λ are arrays, so they can be
traced hyperparameters (vmapped in sweeps, differentiated by meta-gradients); no function
here applies a stop-gradient that callers might not want.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def bellman_target(next_value: jax.Array, reward: jax.Array, terminated: jax.Array, gamma: jax.Array) -> jax.Array:
    """r + γ (1 - terminated) V(s').

    All arrays are `[batch]`. A truncated step is not terminated, so it still bootstraps.
    No stop-gradient: callers build the target from target networks outside the
    differentiated loss, so parameters get no gradient through it, while meta-gradients
    can still flow into γ and the other traced hyperparameters. Code that builds a
    target inside its own loss applies `stop_gradient` itself.
    """
    chex.assert_rank(next_value, 1)
    chex.assert_equal_shape([next_value, reward, terminated])
    bootstrap = gamma * (1.0 - terminated.astype(jnp.float32))
    return reward + bootstrap * next_value


def td_errors(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
              gamma: jax.Array) -> jax.Array:
    """δ_t = r_t + γ (1 - terminated_t) V(next_obs_t) - V(obs_t), elementwise over any shape."""
    chex.assert_equal_shape([rewards, values, next_values, terminated])
    return rewards + gamma * (1.0 - terminated.astype(jnp.float32)) * next_values - values


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
        truncated: jax.Array, gamma: jax.Array, gae_lambda: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a time-major trajectory `[T, ...]`.

    `values[t] = V(obs_t)`, `next_values[t] = V(next_obs_t)` of the true successor
    (pre-reset). Termination stops the bootstrap (δ uses 0 for the next value);
    truncation bootstraps from the true final observation's value. Either ends the
    recursion so advantages never leak across episodes.
    Returns `(advantages, returns = advantages + values)`.
    """
    chex.assert_equal_shape([rewards, values, next_values, terminated, truncated])
    chex.assert_rank(rewards, {1, 2})
    not_term = 1.0 - terminated.astype(jnp.float32)
    cont = not_term * (1.0 - truncated.astype(jnp.float32))
    deltas = rewards + gamma * not_term * next_values - values

    def back(next_adv, xs):
        delta, c = xs
        adv = delta + gamma * gae_lambda * c * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(back, jnp.zeros_like(rewards[0]), (deltas, cont), reverse=True)
    return advantages, advantages + values


def lambda_returns(rewards: jax.Array, next_values: jax.Array, terminated: jax.Array, truncated: jax.Array,
                   gamma: jax.Array, gae_lambda: jax.Array) -> jax.Array:
    """λ-returns over a time-major trajectory `[T, ...]`, bootstrapped at its end.

    `G_t = r_t + γ (1 - terminated_t) ((1 - w_t) V(next_obs_t) + w_t G_{t+1})` with
    `w_t = λ (1 - truncated_t)` and `G_T = V(next_obs_{T-1})`: a truncated step and the
    last step bootstrap from the value of their true successor, termination never
    bootstraps. Equals GAE's returns (advantages + values) when `next_values[t] =
    values[t+1]` inside episodes; λ = 1 gives the up-to-(T - t)-step returns of A2C.
    """
    chex.assert_equal_shape([rewards, next_values, terminated, truncated])
    not_term = 1.0 - terminated.astype(jnp.float32)
    weight = gae_lambda * (1.0 - truncated.astype(jnp.float32))

    def back(next_return, xs):
        r, nv, nt, w = xs
        ret = r + gamma * nt * ((1.0 - w) * nv + w * next_return)
        return ret, ret

    _, returns = jax.lax.scan(back, next_values[-1], (rewards, next_values, not_term, weight), reverse=True)
    return returns


def n_step_returns(rewards: jax.Array, next_values: jax.Array, terminated: jax.Array,
                   truncated: jax.Array, gamma: jax.Array) -> jax.Array:
    """Discounted returns to the end of the rollout, bootstrapped from the last value:
    `lambda_returns` with λ = 1. Step `t` uses an up-to-(T - t)-step return; inputs `[T, ...]`."""
    return lambda_returns(rewards, next_values, terminated, truncated, gamma, jnp.float32(1.0))


def nstep_return(rewards: jax.Array, mask: jax.Array, terminated: jax.Array,
                 gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The return of an n-step replay window and its bootstrap discount:
    (Σ_k γ^k r_k, γ^m (1 - terminated)) with m the number of steps in the window.

    rewards, mask: `[B, n]` (mask 1.0 for the window's steps); terminated: `[B]`, the
    window's last step ended its episode. The replay stores per-step rewards rather than a
    discounted sum, so γ stays a traced hyperparameter.
    """
    chex.assert_rank([rewards, mask, terminated], [2, 2, 1])
    chex.assert_equal_shape([rewards, mask])
    chex.assert_shape(terminated, rewards.shape[:1])
    n = rewards.shape[1]
    powers = gamma ** jnp.arange(n, dtype=jnp.float32)
    returns = jnp.sum(rewards * mask * powers, axis=1)
    steps = jnp.sum(mask, axis=1)
    discount = (gamma ** steps) * (1.0 - terminated.astype(jnp.float32))
    return returns, discount


def value_rescale(x: jax.Array, eps: float | jax.Array = 1e-3) -> jax.Array:
    """h(x) = sign(x)(√(|x| + 1) − 1) + εx (Pike-Burke & Grünewälder; R2D2): squashes returns of
    any scale into a range a network regresses well, invertibly (`inverse_value_rescale`)."""
    # √(|x|+1) − 1 written as |x| / (√(|x|+1) + 1): no cancellation near 0 in float32
    return x / (jnp.sqrt(jnp.abs(x) + 1.0) + 1.0) + eps * x


def inverse_value_rescale(x: jax.Array, eps: float | jax.Array = 1e-3) -> jax.Array:
    """h⁻¹(x) = sign(x)(((√(1 + 4ε(|x| + 1 + ε)) − 1) / 2ε)² − 1), the inverse of `value_rescale`."""
    # with u = root − 1 = 2|x| / (1 + 2ε + √((1 + 2ε)² + 4ε|x|)), root² − 1 = u(u + 2): the same
    # value without the two cancellations of the textbook form, so h⁻¹ stays exact and odd near 0
    a = jnp.abs(x)
    u = 2.0 * a / (1.0 + 2.0 * eps + jnp.sqrt(jnp.square(1.0 + 2.0 * eps) + 4.0 * eps * a))
    return jnp.sign(x) * u * (u + 2.0)


def sequence_nstep_returns(rewards: jax.Array, terminated: jax.Array, truncated: jax.Array,
                           bootstrap: jax.Array, gamma: jax.Array, n_step: int) -> tuple[jax.Array, jax.Array]:
    """n-step returns at every step of a time-major sequence, and where they are defined.

    rewards, terminated, truncated, bootstrap: `[U + n, ...]`, `bootstrap[t]` the value of the
    observation at step t (e.g. h⁻¹ of a target Q). For t < U:
    `G_t = Σ_{k<m} γ^k r_{t+k} + γ^n bootstrap[t+n]` when no episode ends in steps t..t+n-1
    (m = n); when one ends at step t+m-1, the sum stops there and nothing is bootstrapped.
    A window that ends in a truncation would bootstrap from the true final observation,
    which the sequence does not hold (the next step is the new episode's first): `valid` is
    false there. Returns `(G [U, ...], valid [U, ...])`.
    """
    chex.assert_equal_shape([rewards, terminated, truncated, bootstrap])
    if n_step < 1 or rewards.shape[0] <= n_step:
        raise ValueError(f"sequence of {rewards.shape[0]} steps is too short for {n_step}-step returns")
    length = rewards.shape[0] - n_step
    term = terminated.astype(jnp.bool_)
    trunc = jnp.logical_and(truncated.astype(jnp.bool_), jnp.logical_not(term))
    alive = jnp.ones(rewards[:length].shape, jnp.bool_)
    cut_by_truncation = jnp.zeros_like(alive)
    returns = jnp.zeros(rewards[:length].shape, jnp.float32)
    for k in range(n_step):
        window = slice(k, k + length)
        returns = returns + jnp.where(alive, gamma ** k * rewards[window], 0.0)
        cut_by_truncation = jnp.logical_or(cut_by_truncation, jnp.logical_and(alive, trunc[window]))
        alive = jnp.logical_and(alive, jnp.logical_not(jnp.logical_or(term[window], trunc[window])))
    returns = returns + jnp.where(alive, gamma ** n_step * bootstrap[n_step:], 0.0)
    return returns, jnp.logical_not(cut_by_truncation)
