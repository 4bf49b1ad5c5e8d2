"""NGU's episodic novelty: the reward against a NumPy loop over the paper's formula (full, partial, wrapped and
empty memories, the running mean over calls), ring-buffer adds, per-env resets, the lifelong multiplier."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.core.running_stats import RunningStats
from angle_jax.episodic import novelty


def memory_from(embeddings, count, dist_mean=None, dist_count=None):
    n = embeddings.shape[0]
    return novelty.EpisodicMemory(
        jnp.asarray(embeddings, jnp.float32), jnp.asarray(count, jnp.int32),
        jnp.asarray(np.zeros(n) if dist_mean is None else dist_mean, jnp.float32),
        jnp.asarray(np.zeros(n) if dist_count is None else dist_count, jnp.float32))


def reference_reward(embeddings, count, mean, seen, emb, k, xi, eps, c, s_max):
    """Algorithm 1 per env in float64; returns rewards and the updated (mean, seen)."""
    n, capacity, _ = embeddings.shape
    rewards, mean, seen = np.zeros(n), np.array(mean, np.float64), np.array(seen, np.float64)
    for i in range(n):
        stored = embeddings[i, :min(count[i], capacity)].astype(np.float64)
        d2 = np.sort(((stored - emb[i]) ** 2).sum(-1))[:k]       # the k nearest (or fewer)
        for d in d2:                                               # running mean, one distance at a time
            seen[i] += 1
            mean[i] += (d - mean[i]) / seen[i]
        d_n = d2 / mean[i] if mean[i] > 0 else np.zeros_like(d2)
        d_n = np.maximum(d_n - xi, 0.0)
        s = np.sqrt(np.sum(eps / (d_n + eps))) + c
        rewards[i] = 1.0 / s if s <= s_max else 0.0
    return rewards, mean, seen


class EpisodicRewardTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_reward_matches_the_paper_formula_over_several_calls(self):
        rng = np.random.default_rng(0)
        n, capacity, dim, k = 5, 12, 3, 5
        embeddings = rng.normal(size=(n, capacity, dim)).astype(np.float32)
        count = np.array([12, 7, 2, 0, 15])        # full, partial, fewer than k, empty, wrapped ring
        memory = memory_from(embeddings, count)
        mean, seen = np.zeros(n), np.zeros(n)
        for xi, eps, c, s_max in [(0.008, 1e-4, 1e-3, 8.0), (0.5, 0.1, 1e-3, 8.0), (0.2, 0.5, 0.01, 1.2)]:
            emb = rng.normal(size=(n, dim)).astype(np.float32)
            fn = self.variant(lambda m, e: novelty.episodic_reward(m, e, k, xi, eps, c, s_max))
            reward, memory = fn(memory, emb)
            ref, mean, seen = reference_reward(embeddings, count, mean, seen, emb, k, xi, eps, c, s_max)
            np.testing.assert_allclose(reward, ref, rtol=2e-5)
            np.testing.assert_allclose(memory.dist_mean, mean, rtol=1e-5)
            np.testing.assert_array_equal(memory.dist_count, seen)
            assert reward.dtype == jnp.float32
            np.testing.assert_array_equal(memory.embeddings, embeddings)   # the embedding is not added
        # the last settings put some similarities above s_max: those rewards are 0
        assert (np.asarray(reward) == 0).any() and (np.asarray(reward) > 0).any()

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_hand_computed_reward_and_the_empty_memory_rule(self):
        memory = memory_from(np.array([[[0.0], [2.0], [9.0]], [[5.0], [5.0], [5.0]]]), [2, 0])
        reward, memory = self.variant(lambda m, e: novelty.episodic_reward(m, e, 2))(memory, jnp.array([[1.0], [3.0]]))
        # env 0: d² = [1, 1], d²_m = 1, d_n = 1 - 0.008, K = 1e-4 / (0.992 + 1e-4) each, s = √(2K) + 0.001
        kern = 1e-4 / (0.992 + 1e-4)
        # env 1: empty (its stale slots are not entries): s = c, r = 1/c, d²_m untouched
        np.testing.assert_allclose(reward, [1.0 / (np.sqrt(2 * kern) + 0.001), 1000.0], rtol=1e-5)
        np.testing.assert_array_equal(memory.dist_mean, [1.0, 0.0])
        np.testing.assert_array_equal(memory.dist_count, [2.0, 0.0])

    def test_an_identical_embedding_is_maximally_similar(self):
        # only zero distances seen: d²_m = 0 and d_n = 0, K = 1 per neighbour, s = √k + c
        memory = memory_from(np.ones((1, 4, 2)), [3])
        reward, memory = novelty.episodic_reward(memory, jnp.ones((1, 2)), 3)
        np.testing.assert_allclose(reward, [1.0 / (np.sqrt(3.0) + 0.001)], rtol=1e-6)
        assert float(memory.dist_mean[0]) == 0.0

    def test_k_beyond_the_capacity_and_bad_settings_are_refused(self):
        memory = novelty.init(2, 4, 3)
        with pytest.raises(ValueError, match="k must be"):
            novelty.episodic_reward(memory, jnp.zeros((2, 3)), 5)
        novelty.check(10, 100, 8)
        for kwargs, message in [(dict(k=0), "k must be"), (dict(k=101), "k must be"), (dict(dim=0), "embedding size"),
                                (dict(capacity=0), "capacity"), (dict(xi=-0.1), "xi"), (dict(eps=0.0), "epsilon"),
                                (dict(c=0.0), "constant c"), (dict(s_max=0.0), "s_max"), (dict(c=float("nan")), "c ")]:
            args = dict(k=10, capacity=100, dim=8) | kwargs
            with pytest.raises(ValueError, match=message):
                novelty.check(**args)
        with pytest.raises(ValueError, match="at least 1"):
            novelty.init(0, 4, 3)


class MemoryTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_add_is_a_ring_buffer_per_env(self):
        add = self.variant(novelty.add)
        memory = novelty.init(2, 3, 1)
        for t in range(5):
            memory = add(memory, jnp.array([[float(t)], [10.0 + t]]))
        np.testing.assert_array_equal(memory.embeddings[..., 0], [[3, 4, 2], [13, 14, 12]])  # 3, 4 over 0, 1
        np.testing.assert_array_equal(memory.count, [5, 5])
        # a full ring: every slot is an entry
        reward, _ = novelty.episodic_reward(memory, jnp.array([[2.0], [12.0]]), 3, s_max=100.0)
        ref, _, _ = reference_reward(np.asarray(memory.embeddings), [5, 5], [0, 0], [0, 0],
                                     np.array([[2.0], [12.0]]), 3, 0.008, 1e-4, 1e-3, 100.0)
        np.testing.assert_allclose(reward, ref, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_reset_empties_only_the_envs_that_are_done(self):
        rng = np.random.default_rng(1)
        memory = novelty.init(3, 4, 2)
        for _ in range(3):
            memory = novelty.add(memory, jnp.asarray(rng.normal(size=(3, 2)), jnp.float32))
        _, memory = novelty.episodic_reward(memory, jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), 2)
        after = self.variant(novelty.reset)(memory, jnp.array([False, True, False]))
        for field in ("embeddings", "dist_mean", "dist_count"):         # nothing reallocated or cleared
            np.testing.assert_array_equal(getattr(after, field), getattr(memory, field))
        np.testing.assert_array_equal(after.count, [3, 0, 3])
        # the reset env meets an empty memory and writes from slot 0 again; the others are untouched
        emb = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
        reward, later = novelty.episodic_reward(after, emb, 2)
        _, unreset = novelty.episodic_reward(memory, emb, 2)
        assert float(reward[1]) == pytest.approx(1000.0)
        for field in ("dist_mean", "dist_count"):
            np.testing.assert_array_equal(np.asarray(getattr(later, field))[[0, 2]],
                                          np.asarray(getattr(unreset, field))[[0, 2]])
        added, before, emb = (np.asarray(novelty.add(later, emb).embeddings), np.asarray(memory.embeddings),
                              np.asarray(emb))
        np.testing.assert_array_equal(added[1, 0], emb[1])
        np.testing.assert_array_equal(added[1, 1:], before[1, 1:])
        np.testing.assert_array_equal(added[[0, 2], 3], emb[[0, 2]])
        np.testing.assert_array_equal(added[[0, 2], :3], before[[0, 2], :3])


class LifelongTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_multiplier_and_combined_reward_by_hand(self):
        stats = RunningStats(jnp.array(2.0), jnp.array(4.0), jnp.array(10.0))   # σ = √(4 + 1e-8)
        alpha = self.variant(novelty.lifelong_multiplier)(jnp.array([2.0, 6.0, 0.0, 30.0]), stats)
        np.testing.assert_allclose(alpha, [1.0, 3.0, 0.0, 15.0], rtol=1e-6)
        r = self.variant(novelty.intrinsic_reward)(jnp.array([0.5, 0.5, 0.5, 0.5]), alpha)
        np.testing.assert_allclose(r, [0.5, 1.5, 0.5, 2.5], rtol=1e-6)      # α clipped to [1, L = 5]
        r = novelty.intrinsic_reward(jnp.array([0.5, 0.5]), jnp.array([3.0, 9.0]), L=2.0)
        np.testing.assert_allclose(r, [1.0, 1.0], rtol=1e-6)
