"""Returns and targets (angle_jax/core/returns.py) against hand-computed cases and NumPy loops
written independently of the scans."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.core import returns


def random_trajectory(seed: int, shape: tuple[int, ...], p_end: float):
    """Rewards, values, next values, terminated and truncated (never both) of random episodes."""
    rng = np.random.default_rng(seed)
    r, v, nv = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    term = rng.random(shape) < p_end
    return r, v, nv, term, (rng.random(shape) < p_end) & ~term


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Straightforward per-env loop, written independently of the scan version."""
    rewards, values, next_values = map(np.asarray, (rewards, values, next_values))
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    for t in reversed(range(T)):
        boot = 0.0 if terminated[t] else next_values[t]
        delta = rewards[t] + gamma * boot - values[t]
        following = 0.0 if (t == T - 1 or terminated[t] or truncated[t]) else adv[t + 1]
        adv[t] = delta + gamma * lam * following
    return adv


class GaeTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_gae_by_hand_with_truncation_and_termination(self):
        # t=1 is truncated: bootstrap from V(true final obs) = 9, but stop the recursion.
        # t=3 terminates: no bootstrap.
        rewards = jnp.array([1.0, 2.0, 3.0, 4.0])
        values = jnp.array([0.5, 0.6, 0.7, 0.8])
        next_values = jnp.array([0.6, 9.0, 0.8, 1.0])
        terminated = jnp.array([False, False, False, True])
        truncated = jnp.array([False, True, False, False])
        gamma, lam = 0.9, 0.8
        d0 = 1.0 + 0.9 * 0.6 - 0.5
        d1 = 2.0 + 0.9 * 9.0 - 0.6
        d2 = 3.0 + 0.9 * 0.8 - 0.7
        d3 = 4.0 - 0.8
        a3 = d3
        a2 = d2 + gamma * lam * a3
        a1 = d1
        a0 = d0 + gamma * lam * a1
        adv, ret = self.variant(returns.gae)(rewards, values, next_values, terminated, truncated, gamma, lam)
        np.testing.assert_allclose(adv, [a0, a1, a2, a3], rtol=1e-5)
        np.testing.assert_allclose(ret, np.array([a0, a1, a2, a3]) + np.asarray(values), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gae_matches_reference_on_random_batches(self):
        T, N = 17, 3
        r, v, nv, term, trunc = random_trajectory(0, (T, N), 0.1)
        adv, _ = self.variant(returns.gae)(r, v, nv, term, trunc, 0.97, 0.9)
        for n in range(N):
            want = reference_gae(r[:, n], v[:, n], nv[:, n], term[:, n], trunc[:, n], 0.97, 0.9)
            np.testing.assert_allclose(adv[:, n], want, rtol=1e-4, atol=1e-5)

    def test_gae_rejects_mismatched_shapes(self):
        with self.assertRaises(AssertionError):
            returns.gae(jnp.zeros(4), jnp.zeros(4), jnp.zeros(5), jnp.zeros(4, bool), jnp.zeros(4, bool), 0.9, 0.9)


def test_n_step_returns_by_hand_and_equal_to_gae_lambda_one():
    rewards = jnp.ones(3)
    next_values = jnp.array([2.0, 3.0, 4.0])
    term = jnp.zeros(3, bool)
    trunc = jnp.array([False, True, False])
    ret = returns.n_step_returns(rewards, next_values, term, trunc, 0.5)
    r2 = 1 + 0.5 * 4.0
    r1 = 1 + 0.5 * 3.0  # truncated: bootstraps from its own final observation
    r0 = 1 + 0.5 * r1
    np.testing.assert_allclose(ret, [r0, r1, r2], rtol=1e-6)
    term = jnp.array([True, False, False])
    np.testing.assert_allclose(returns.n_step_returns(rewards, next_values, term, trunc, 0.5)[0], 1.0)

    rng = np.random.default_rng(1)
    T, N = 11, 4
    r, v, nv = (rng.normal(size=(T, N)).astype(np.float32) for _ in range(3))
    te = rng.random((T, N)) < 0.15
    tr = (rng.random((T, N)) < 0.15) & ~te
    # within an episode the successor's value is the next step's value
    cont = ~(te | tr)
    nv[:-1] = np.where(cont[:-1], v[1:], nv[:-1])
    _, gae_ret = returns.gae(r, v, nv, te, tr, 0.95, 1.0)
    np.testing.assert_allclose(returns.n_step_returns(r, nv, te, tr, 0.95), gae_ret, rtol=1e-4, atol=1e-5)


def reference_lambda_returns(rewards, next_values, terminated, truncated, gamma, lam):
    """λ-returns by the forward-view definition: the λ-weighted mix of the n-step returns of
    each step, every n-step return cut at the episode's end (termination: no bootstrap;
    truncation: bootstrap from the true final observation) or the rollout's end."""
    T = len(rewards)
    out = np.zeros(T)
    for t in range(T):
        end = t  # the last step of the episode segment that starts at t
        while end < T - 1 and not (terminated[end] or truncated[end]):
            end += 1

        def n_step(n):  # steps t..t+n-1, then bootstrap from V(next_obs of step t+n-1)
            g, discount = 0.0, 1.0
            for k in range(t, t + n):
                g += discount * rewards[k]
                discount *= gamma
            last = t + n - 1
            return g + (0.0 if terminated[last] else discount * next_values[last])

        horizon = end - t + 1
        mixed = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, horizon))
        out[t] = mixed + lam ** (horizon - 1) * n_step(horizon)
    return out


class LambdaReturnsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_lambda_returns_match_the_forward_view_on_random_episodes(self):
        for i, lam in enumerate((0.0, 0.6, 1.0)):
            r, _, nv, term, trunc = random_trajectory(2 + i, (13,), 0.15)
            got = self.variant(returns.lambda_returns)(r, nv, term, trunc, jnp.float32(0.9), jnp.float32(lam))
            np.testing.assert_allclose(got, reference_lambda_returns(r, nv, term, trunc, 0.9, lam), rtol=1e-4,
                                       atol=1e-5)

    def test_lambda_returns_equal_gae_returns_and_differentiate_in_gamma_and_lambda(self):
        r, v, nv, te, tr = random_trajectory(3, (9, 2), 0.2)
        nv[:-1] = np.where(~(te | tr)[:-1], v[1:], nv[:-1])  # inside an episode V(s') is the next V(s)
        _, gae_ret = returns.gae(r, v, nv, te, tr, 0.95, 0.7)
        np.testing.assert_allclose(returns.lambda_returns(r, nv, te, tr, 0.95, 0.7), gae_ret, rtol=1e-4, atol=1e-5)
        grads = jax.grad(lambda g, l: jnp.sum(returns.lambda_returns(r, nv, te, tr, g, l)), argnums=(0, 1))(0.95, 0.7)
        assert all(np.isfinite(float(x)) and float(x) != 0.0 for x in grads)


def test_td_errors_and_bellman_target_by_hand():
    r, v, nv = jnp.array([1.0, 2.0]), jnp.array([0.5, 0.25]), jnp.array([3.0, 4.0])
    term = jnp.array([False, True])
    np.testing.assert_allclose(returns.td_errors(r, v, nv, term, 0.5), [1.0 + 1.5 - 0.5, 2.0 - 0.25])
    np.testing.assert_allclose(returns.bellman_target(nv, r, term, 0.5), [2.5, 2.0])
