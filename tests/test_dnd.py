"""NEC's differentiable neural dictionary: lookup against a NumPy k-NN, the write rules traced by hand and
against a Python loop, time stamps, gradients against float64 finite differences, the averaged gradient
step, determinism under jit and vmap, bad settings."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.episodic import dnd


def filled(keys, values, size, last_used=None, time=None):
    """A DNDState from NumPy arrays `keys [A, C, D]`, `values [A, C]`, `size [A]`."""
    a, c, _ = keys.shape
    if last_used is None:
        last_used = np.where(np.arange(c)[None, :] < np.asarray(size)[:, None], np.arange(c)[None, :], -1)
    return dnd.DNDState(jnp.asarray(keys), jnp.asarray(values), jnp.asarray(last_used, jnp.int32),
                        jnp.asarray(size, jnp.int32), jnp.asarray(c if time is None else time, jnp.int32))


def random_state(rng, a=3, c=20, d=4, size=(20, 5, 0)):
    return filled(rng.normal(size=(a, c, d)).astype(np.float32), rng.normal(size=(a, c)).astype(np.float32), size)


def reference_lookup(state, h, k, delta):
    """Per query and action: stable sort of float64 distances over the stored slots, kernel weights, Q."""
    keys, values, size = (np.asarray(x, np.float64) for x in (state.keys, state.values, state.size))
    b, a = h.shape[0], keys.shape[0]
    q = np.zeros((b, a))
    idx = np.zeros((b, a, k), int)
    valid = np.zeros((b, a, k), bool)
    w = np.zeros((b, a, k))
    for i in range(b):
        for j in range(a):
            n = int(size[j])
            d2 = ((keys[j, :n] - h[i].astype(np.float64)) ** 2).sum(-1)
            order = np.argsort(d2, kind="stable")[:k]
            kern = 1.0 / (d2[order] + delta)
            m = len(order)
            idx[i, j, :m], valid[i, j, :m] = order, True
            idx[i, j, m:] = np.arange(n, n + k - m)  # free slots, in order
            if m:
                w[i, j, :m] = kern / kern.sum()
                q[i, j] = (w[i, j, :m] * values[j, order]).sum()
    return q, idx, valid, w


def reference_write(state, h, actions, returns, alpha, radius):
    """The write rules as a plain Python loop over the items."""
    keys, values = np.array(state.keys), np.array(state.values)
    last_used, size, time = np.array(state.last_used), np.array(state.size), int(state.time)
    capacity = keys.shape[1]
    for x, a, g in zip(h, actions, returns):
        n = size[a]
        match = False
        if n:
            d2 = ((keys[a, :n].astype(np.float64) - x) ** 2).sum(-1)
            near = int(np.argmin(d2))
            match = d2[near] <= radius
        if match:
            slot = near
            values[a, slot] = values[a, slot] + np.float32(alpha) * (np.float32(g) - values[a, slot])
        else:
            slot = n if n < capacity else int(np.argmin(last_used[a]))
            keys[a, slot], values[a, slot] = x, g
            size[a] = min(n + 1, capacity)
        last_used[a, slot] = time
        time += 1
    return keys, values, last_used, size, time


def assert_state(state, keys, values, last_used, size, time, exact_values=False):
    np.testing.assert_array_equal(state.keys, keys)
    (np.testing.assert_array_equal if exact_values else
     lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6))(state.values, values)
    np.testing.assert_array_equal(state.last_used, last_used)
    np.testing.assert_array_equal(state.size, size)
    assert int(state.time) == time


class LookupTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_lookup_matches_numpy_knn_with_full_partial_and_empty_actions(self):
        rng = np.random.default_rng(0)
        state = random_state(rng)                       # action 0 full, 1 has 5 < k entries, 2 empty
        h = rng.normal(size=(6, 4)).astype(np.float32)
        q, nb = self.variant(lambda s, x: dnd.lookup(s, x, 7, 1e-3))(state, h)
        ref_q, ref_idx, ref_valid, ref_w = reference_lookup(state, h, 7, 1e-3)
        np.testing.assert_array_equal(nb.indices, ref_idx)
        np.testing.assert_array_equal(nb.valid, ref_valid)
        np.testing.assert_allclose(q, ref_q, rtol=1e-4, atol=1e-6)
        keys, _ = dnd.gather(state, nb)
        np.testing.assert_allclose(dnd.kernel_weights(h, keys, nb.valid, 1e-3), ref_w, rtol=1e-4, atol=1e-7)
        assert q.shape == (6, 3) and q.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(q)[:, 2], 0.0)  # no entries: Q = 0

    @chex.variants(with_jit=True, without_jit=True)
    def test_equal_distances_get_equal_weights_and_the_lower_slot_comes_first(self):
        keys = np.array([[[4, 0], [1, 0], [0, 1], [1, 0], [9, 9]]], np.float32)   # slots 1 and 3 the same key
        values = np.array([[10.0, 1.0, 2.0, 3.0, 50.0]], np.float32)
        state = filled(keys, values, [5])
        q, nb = self.variant(lambda s, x: dnd.lookup(s, x, 4, 0.5))(state, np.zeros((1, 2), np.float32))
        np.testing.assert_array_equal(nb.indices, [[[1, 2, 3, 0]]])
        w = np.array([1 / 1.5, 1 / 1.5, 1 / 1.5, 1 / 16.5])
        w /= w.sum()
        np.testing.assert_allclose(q, [[w @ [1.0, 2.0, 3.0, 10.0]]], rtol=1e-6)

    def test_gradients_match_float64_finite_differences(self):
        with jax.enable_x64(True):
            rng = np.random.default_rng(1)
            state0 = random_state(rng, a=2, c=6, d=3, size=(6, 3))
            keys0, values0 = np.asarray(state0.keys, np.float64), np.asarray(state0.values, np.float64)
            h0 = rng.normal(size=(2, 3))
            weights = rng.normal(size=(2, 2))

            @jax.jit
            def f(h, keys, values):
                q, _ = dnd.lookup(state0.replace(keys=keys, values=values), h, 4, 0.1)
                return jnp.sum(weights * q)

            grads = jax.grad(f, argnums=(0, 1, 2))(h0, keys0, values0)
            args = [h0, keys0, values0]
            eps = 1e-6
            for which, grad in enumerate(grads):
                assert grad.dtype == np.float64
                numeric = np.zeros_like(args[which])
                for i in np.ndindex(args[which].shape):
                    plus, minus = [a.copy() for a in args], [a.copy() for a in args]
                    plus[which][i] += eps
                    minus[which][i] -= eps
                    numeric[i] = (float(f(*plus)) - float(f(*minus))) / (2 * eps)
                np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
            # values outside the neighbours and unfilled slots get no gradient; used ones do
            _, nb = dnd.lookup(state0, h0, 4, 0.1)
            used = np.zeros((2, 6), bool)
            for b, a, j in zip(*np.nonzero(np.asarray(nb.valid))):
                used[a, nb.indices[b, a, j]] = True
            assert (np.asarray(grads[2])[~used] == 0).all() and (np.asarray(grads[2])[used] != 0).all()

    def test_gradient_step_averages_the_gradients_of_a_slot_used_by_several_queries(self):
        rng = np.random.default_rng(2)
        state = random_state(rng, a=2, c=8, d=3, size=(8, 3))
        h = rng.normal(size=(3, 3)).astype(np.float32)
        h = np.concatenate([h, h[:1] + 0.01])  # query 3 shares its neighbours with query 0
        target = rng.normal(size=(4, 2)).astype(np.float32)
        nb = dnd.neighbours(state, h, 3)
        keys, values = dnd.gather(state, nb)

        def loss(keys, values):
            return jnp.sum(jnp.square(dnd.q_from_neighbours(h, keys, values, nb.valid, 0.1) - target))

        g_keys, g_values = jax.grad(loss, argnums=(0, 1))(keys, values)
        stepped = jax.jit(dnd.gradient_step)(state, nb, g_keys, g_values, 0.5)
        # reference: per slot, the mean of the gradients of the queries that used it
        ref_k, ref_v = np.array(state.keys), np.array(state.values)
        sum_k, sum_v, count = np.zeros_like(ref_k), np.zeros_like(ref_v), np.zeros(ref_v.shape)
        for b, a, j in zip(*np.nonzero(np.asarray(nb.valid))):
            s = int(nb.indices[b, a, j])
            sum_k[a, s] += g_keys[b, a, j]
            sum_v[a, s] += g_values[b, a, j]
            count[a, s] += 1
        assert count.max() >= 2, "the test needs a slot used twice"
        mean_k = sum_k / np.maximum(count, 1)[..., None]
        mean_v = sum_v / np.maximum(count, 1)
        np.testing.assert_allclose(stepped.keys, ref_k - 0.5 * mean_k, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stepped.values, ref_v - 0.5 * mean_v, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(stepped.values)[count == 0], ref_v[count == 0])
        # the plain gradient through the gather is the sum, not the mean
        full_k, full_v = jax.grad(lambda k_, v_: loss(*dnd.gather(state.replace(keys=k_, values=v_), nb)),
                                  argnums=(0, 1))(state.keys, state.values)
        np.testing.assert_allclose(full_k, sum_k, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(full_v, sum_v, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(dnd.slot_use_counts(nb),
                                      np.where(nb.valid, count[np.arange(2)[None, :, None], nb.indices], 0))

    @chex.variants(with_jit=True, without_jit=True)
    def test_touch_stamps_valid_neighbours_once_per_call(self):
        state = filled(np.zeros((2, 4, 1), np.float32), np.zeros((2, 4), np.float32), [4, 1])
        indices = jnp.array([[[2, 0], [0, 1]], [[2, 3], [0, 2]]])   # [B=2, A=2, k=2]
        valid = jnp.array([[[True, True], [True, False]], [[True, False], [True, False]]])
        touched = self.variant(dnd.touch)(state, indices, valid)
        np.testing.assert_array_equal(touched.last_used, [[4, 1, 4, 3], [4, -1, -1, -1]])
        assert int(touched.time) == 5


class WriteTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_tabular_update_free_slots_and_lru_overwrite_traced_by_hand(self):
        write = self.variant(lambda s, h, a, g: dnd.write(s, h, a, g, 0.5, 0.01))
        state = dnd.init(2, 3, 1)
        # t=0 a0: slot 0 <- (0, 1); t=1 a0: 1 is 1 away -> slot 1 <- (1, 2);
        # t=2 a0: 0 matches slot 0: v = 1 + 0.5 (3 - 1) = 2, stamped 2; t=3 a1: its own dictionary -> slot 0
        state = write(state, np.array([[0.0], [1.0], [0.0], [0.0]], np.float32), np.array([0, 0, 0, 1]),
                      np.array([1.0, 2.0, 3.0, 4.0], np.float32))
        assert_state(state, [[[0], [1], [0]], [[0], [0], [0]]], [[2, 2, 0], [4, 0, 0]],
                     [[2, 1, -1], [3, -1, -1]], [2, 1], 4, exact_values=True)
        # t=4: 2 -> free slot 2 (action 0 now full); t=5: 3 -> LRU slot 1 (stamp 1 < 2 < 4);
        # t=6: 1.05 (nearest 2 at 0.9025 > 0.01) -> LRU slot 0; t=7: 7 -> LRU slot 2
        state = write(state, np.array([[2.0], [3.0], [1.05], [7.0]], np.float32), np.array([0, 0, 0, 0]),
                      np.array([10.0, 20.0, 30.0, 40.0], np.float32))
        assert_state(state, np.array([[[1.05], [3], [7]], [[0], [0], [0]]], np.float32),
                     [[30, 20, 40], [4, 0, 0]], [[6, 5, 7], [3, -1, -1]], [3, 1], 8, exact_values=True)

    @chex.variants(with_jit=True, without_jit=True)
    def test_lru_ties_go_to_the_lowest_slot_and_touch_protects_a_slot(self):
        write = self.variant(lambda s, h, a, g: dnd.write(s, h, a, g, 1.0, 0.0))
        state = write(dnd.init(1, 3, 1), np.array([[0.0], [10.0], [20.0]], np.float32), np.zeros(3, np.int32),
                      np.zeros(3, np.float32))
        state = dnd.touch(state, jnp.array([[[2, 0, 1]]]), jnp.ones((1, 1, 3), bool))  # all stamped 3
        state = write(state, np.array([[100.0]], np.float32), np.zeros(1, np.int32), np.ones(1, np.float32))
        np.testing.assert_array_equal(np.asarray(state.keys)[0, :, 0], [100, 10, 20])   # tie -> slot 0
        state = dnd.touch(state, jnp.array([[[1]]]), jnp.ones((1, 1, 1), bool))           # slot 1 now newest
        state = write(state, np.array([[200.0]], np.float32), np.zeros(1, np.int32), np.ones(1, np.float32))
        np.testing.assert_array_equal(np.asarray(state.keys)[0, :, 0], [100, 10, 200])
        np.testing.assert_array_equal(state.last_used, [[4, 5, 6]])
        # match radius 0: an identical key is updated (α = 1 replaces the value), not stored twice
        state = write(state, np.array([[10.0]], np.float32), np.zeros(1, np.int32), np.full(1, 7.0, np.float32))
        np.testing.assert_array_equal(np.asarray(state.keys)[0, :, 0], [100, 10, 200])
        np.testing.assert_array_equal(state.values, [[1, 7, 1]])

    def test_random_writes_match_a_python_loop_and_jit_equals_no_jit_bit_for_bit(self):
        rng = np.random.default_rng(3)
        state = dnd.init(3, 5, 2)
        jitted = jax.jit(dnd.write)
        for _ in range(4):   # 4 batches of 6 into 3 x 5 slots: free slots, matches, LRU overwrites
            h = rng.integers(0, 3, size=(6, 2)).astype(np.float32) + rng.normal(0, 0.05, (6, 2)).astype(np.float32)
            actions = rng.integers(0, 3, size=6)
            returns = rng.normal(size=6).astype(np.float32)
            ref = reference_write(state, h, actions, returns, 0.3, 0.02)
            new = jitted(state, h, actions, returns, 0.3, 0.02)
            plain = dnd.write(state, h, actions, returns, 0.3, 0.02)
            chex.assert_trees_all_equal(new, plain)
            assert_state(new, *ref)
            state = new
        assert (np.asarray(state.size) == 5).all()

    def test_masked_write_equals_writing_only_the_valid_items(self):
        rng = np.random.default_rng(5)
        state = dnd.init(2, 4, 2)
        masked = jax.jit(dnd.write)
        for _ in range(4):   # free slots, matches and LRU overwrites, with skipped items in between
            h = rng.integers(0, 3, size=(6, 2)).astype(np.float32)
            actions = rng.integers(0, 2, size=6)
            returns = rng.normal(size=6).astype(np.float32)
            valid = rng.random(6) < 0.5
            new = masked(state, h, actions, returns, 0.3, 0.0, valid)
            ref = reference_write(state, h[valid], actions[valid], returns[valid], 0.3, 0.0)
            assert_state(new, *ref)
            state = new
        none = masked(state, h, actions, returns, 0.3, 0.0, np.zeros(6, bool))
        chex.assert_trees_all_equal(none, state)
        every = dnd.write(state, h, actions, returns, 0.3, 0.0, np.ones(6, bool))
        chex.assert_trees_all_equal(every, dnd.write(state, h, actions, returns, 0.3, 0.0))

    def test_vmap_over_independent_dictionaries_equals_a_loop(self):
        rng = np.random.default_rng(4)
        n = 3
        states = [dnd.init(2, 4, 2) for _ in range(n)]
        write = jax.jit(jax.vmap(dnd.write, in_axes=(0, 0, 0, 0, None, None)))
        batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
        for _ in range(3):
            h = rng.integers(0, 3, size=(n, 5, 2)).astype(np.float32)
            actions = rng.integers(0, 2, size=(n, 5))
            returns = rng.normal(size=(n, 5)).astype(np.float32)
            batched = write(batched, h, actions, returns, 0.5, 0.0)
            states = [dnd.write(s, h[i], actions[i], returns[i], 0.5, 0.0) for i, s in enumerate(states)]
            for i, s in enumerate(states):
                chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], batched), s)


class SettingsTest(chex.TestCase):

    def test_bad_settings_raise_one_line_value_errors(self):
        dnd.check(50, 100, 64, 0.1, 1e-3)
        bad = [((101, 100, 64, 0.1, 1e-3), "k \\(neighbours\\) must be"), ((0, 100, 64, 0.1, 1e-3), "k \\(neighbours\\) must be"),
               ((5, 100, 0, 0.1, 1e-3), "key_size"), ((5, 0, 4, 0.1, 1e-3), "capacity"),
               ((5, 100, 4, 0.0, 1e-3), "alpha"), ((5, 100, 4, 1.5, 1e-3), "alpha"),
               ((5, 100, 4, float("nan"), 1e-3), "alpha"), ((5, 100, 4, 0.1, 0.0), "delta"),
               ((5, 100, 4, 0.1, -1.0), "delta"), ((5, 100, 4, 0.1, float("inf")), "delta")]
        for args, message in bad:
            with pytest.raises(ValueError, match=message) as info:
                dnd.check(*args)
            assert "\n" not in str(info.value)
        dnd.check(1, 1, 1, 1.0, 1e-9)   # the edges that are allowed
        for sizes in [(0, 4, 2), (2, 0, 2), (2, 4, 0)]:
            with pytest.raises(ValueError, match="at least 1"):
                dnd.init(*sizes)
        with pytest.raises(ValueError, match="k must be in \\[1, 4\\]"):
            dnd.lookup(dnd.init(2, 4, 2), jnp.zeros((1, 2)), 5, 0.1)

    def test_nbytes_counts_the_arrays(self):
        state = dnd.init(3, 7, 5)
        assert dnd.nbytes(3, 7, 5) == sum(x.nbytes for x in jax.tree.leaves(state)) == 3 * 7 * (5 * 4 + 8) + 3 * 4 + 4
