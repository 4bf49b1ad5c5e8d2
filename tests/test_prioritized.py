"""Sum-tree prioritised replay: sampling law, importance weights, float32 stability, seed vmap."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.core.types import Transition
from angle_jax.replay.prioritized import (beta_schedule, importance_weights, prioritized_replay, stratified_targets,
                                          sumtree_find, tree_init, tree_leaf_values, tree_set, tree_total)
from angle_jax.core.axes import seed_axes


def item(t, num_envs):
    obs = jnp.full((num_envs, 2), float(t))
    zeros = jnp.zeros(num_envs, jnp.bool_)
    return Transition(obs, jnp.zeros(num_envs, jnp.int32), jnp.full((num_envs,), float(t)), zeros, zeros, obs + 1)


def check_tree_consistent(tree, combine):
    """Every internal node equals combine(children), recomputed here in float32."""
    tree = np.asarray(tree)
    half = tree.shape[0] // 2
    idx = np.arange(1, half)
    np.testing.assert_array_equal(tree[idx], combine(tree[2 * idx], tree[2 * idx + 1]).astype(np.float32))


class SumTreeTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_set_total_and_find(self):
        tree = tree_init(5, 0.0)                      # 5 leaves -> padded to 8
        assert tree.shape == (16,)
        tree = self.variant(tree_set)(tree, jnp.asarray([0, 1, 2, 4]), jnp.asarray([1.0, 2.0, 3.0, 4.0]))
        assert float(tree_total(tree)) == 10.0
        check_tree_consistent(tree, np.add)
        # prefix sums: leaf0 [0,1), leaf1 [1,3), leaf2 [3,6), leaf3 empty, leaf4 [6,10)
        targets = jnp.asarray([0.0, 0.99, 1.0, 2.5, 3.0, 5.99, 6.0, 9.99, 10.0])
        found = self.variant(sumtree_find)(tree, targets)
        np.testing.assert_array_equal(np.asarray(found), [0, 0, 1, 1, 2, 2, 4, 4, 4])

    def test_repeated_leaves_in_one_update_stay_consistent(self):
        tree = tree_set(tree_init(8, 0.0), jnp.arange(8), jnp.ones(8))
        tree = tree_set(tree, jnp.asarray([3, 3, 5]), jnp.asarray([7.0, 7.0, 2.0]))
        check_tree_consistent(tree, np.add)
        assert float(tree_total(tree)) == 6 + 7 + 2

    def test_min_tree(self):
        tree = tree_set(tree_init(6, np.inf), jnp.asarray([1, 4]), jnp.asarray([3.0, 0.5]), jnp.minimum)
        assert float(tree_total(tree)) == 0.5
        check_tree_consistent(tree, np.minimum)


def test_sampling_frequencies_are_proportional_to_priorities():
    priorities = np.array([1.0, 2.0, 0.0, 4.0, 0.5, 8.0, 0.0, 3.5], np.float32)
    tree = tree_set(tree_init(8, 0.0), jnp.arange(8), jnp.asarray(priorities))
    batch, draws = 128, 400

    @jax.jit
    def draw(keys):
        return jax.vmap(lambda k: sumtree_find(tree, stratified_targets(k, tree_total(tree), batch)))(keys)

    leaves = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), draws))).ravel()
    freq = np.bincount(leaves, minlength=8) / leaves.size
    expected = priorities / priorities.sum()
    assert freq[2] == 0 and freq[6] == 0, "zero-priority slots were sampled"
    np.testing.assert_allclose(freq, expected, atol=0.005)


def test_importance_weights_and_beta():
    w = importance_weights(jnp.asarray([1.0, 4.0, 2.0]), jnp.float32(1.0), jnp.float32(0.5))
    np.testing.assert_allclose(np.asarray(w), [1.0, 0.5, 2 ** -0.5], rtol=1e-6)
    # with N and P(i) written out: w_i = (N P_i)^-β / max_j w_j
    p = np.array([0.3, 1.2, 0.7, 2.0])
    n, beta = len(p), 0.7
    ref = (n * p / p.sum()) ** -beta
    ref = ref / ref.max()
    np.testing.assert_allclose(np.asarray(importance_weights(jnp.asarray(p, jnp.float32), jnp.float32(p.min()),
                                                             jnp.float32(beta))), ref, rtol=1e-5)
    np.testing.assert_allclose([float(beta_schedule(s, 0.4, 1000)) for s in (0, 500, 1000, 5000)],
                               [0.4, 0.7, 1.0, 1.0], rtol=1e-6)
    assert float(beta_schedule(0, 0.4, 0)) == 1.0


def test_buffer_priorities_max_priority_and_weights():
    alpha, eps = 0.5, 1e-6
    buf = prioritized_replay(capacity=4, batch_size=6, n_step=1, alpha=alpha, beta0=0.4, beta_steps=100, eps=eps)
    state = buf.init(item(0, 2))
    add = jax.jit(buf.add)
    for t in range(3):
        state = add(state, item(t, 2))
    np.testing.assert_allclose(np.asarray(tree_leaf_values(state.sum_tree, jnp.arange(8))), [1] * 6 + [0, 0])
    batch = jax.jit(buf.sample)(state, jax.random.PRNGKey(1))
    assert np.all(np.asarray(batch.index) < 6)
    np.testing.assert_allclose(np.asarray(batch.weights), 1.0)   # equal priorities: all weights 1
    prio = jnp.asarray([4.0, -9.0, 0.0, 1.0, 1.0, 1.0])
    batch = batch.replace(index=jnp.asarray([0, 1, 2, 3, 4, 5], jnp.int32))
    state = jax.jit(buf.update_priorities)(state, batch, prio)
    leaves = np.asarray(tree_leaf_values(state.sum_tree, jnp.arange(6)))
    np.testing.assert_allclose(leaves, (np.abs(np.asarray(prio)) + eps) ** alpha, rtol=1e-6)
    assert float(state.max_priority) == pytest.approx(9.0 + eps)
    check_tree_consistent(state.sum_tree, np.add)
    check_tree_consistent(state.min_tree, np.minimum)
    state = add(state, item(3, 2))                                 # new row gets the max priority
    np.testing.assert_allclose(np.asarray(tree_leaf_values(state.sum_tree, jnp.asarray([6, 7]))),
                               (9.0 + eps) ** alpha, rtol=1e-6)
    batch = jax.jit(buf.sample)(state, jax.random.PRNGKey(2))
    leaf = np.asarray(tree_leaf_values(state.sum_tree, batch.index))
    beta = 0.4 + 0.6 * min(1.0, 4 * 2 / 100)                       # 4 rows x 2 envs written
    ref = (leaf / float(tree_total(state.min_tree))) ** -beta
    np.testing.assert_allclose(np.asarray(batch.weights), ref, rtol=1e-5)
    assert np.all(leaf > 1e-3 ** alpha), "the slot with priority 0 (+eps) was sampled"


def test_float32_sum_stays_exact_over_long_update_sequence():
    """400k leaf writes swinging over 8 orders of magnitude; the root must track a float64 reference.

    Adding deltas to running float32 sums leaves residue after large values are
    replaced by small ones; recomputing nodes from children does not.
    """
    num_leaves, batch, steps = 1000, 64, 6250
    tree0 = tree_init(num_leaves, 0.0)

    def body(tree, key):
        k_idx, k_val, k_scale = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (batch,), 0, num_leaves)
        scale = 10.0 ** jax.random.randint(k_scale, (), -4, 5).astype(jnp.float32)
        vals = jax.random.uniform(k_val, (batch,)) * scale
        return tree_set(tree, idx, vals), None

    keys = jax.random.split(jax.random.PRNGKey(7), steps)
    tree, _ = jax.jit(lambda t: jax.lax.scan(body, t, keys))(tree0)
    # finish with every leaf small, so leftovers of earlier large values would dominate
    small = jax.random.uniform(jax.random.PRNGKey(8), (num_leaves,)) * 1e-3
    tree = jax.jit(tree_set)(tree, jnp.arange(num_leaves), small)
    leaves64 = np.asarray(tree_leaf_values(tree, jnp.arange(num_leaves)), np.float64)
    np.testing.assert_allclose(float(tree_total(tree)), leaves64.sum(), rtol=1e-5)
    check_tree_consistent(tree, np.add)


def test_vmapped_over_seeds_with_shared_counters():
    buf = prioritized_replay(capacity=8, batch_size=4, n_step=2, alpha=0.6)
    seeds = 3
    one = buf.init(item(0, 2))
    axes = seed_axes(one)
    assert axes.pos is None and axes.size is None and axes.added is None and axes.sum_tree == 0
    example = item(0, 2)
    state = jax.jit(jax.vmap(lambda _: buf.init(example), out_axes=axes))(jnp.arange(seeds))
    add = jax.jit(jax.vmap(buf.add, in_axes=(axes, None), out_axes=axes))
    for t in range(5):
        state = add(state, item(t, 2))
    assert int(state.pos) == 5 and int(state.added) == 5
    sample = jax.jit(jax.vmap(buf.sample, in_axes=(axes, 0)))
    batch = sample(state, jax.random.split(jax.random.PRNGKey(0), seeds))
    assert batch.rewards.shape == (seeds, 4, 2)
    upd = jax.jit(jax.vmap(buf.update_priorities, in_axes=(axes, 0, 0), out_axes=axes))
    prio = jnp.arange(seeds * 4, dtype=jnp.float32).reshape(seeds, 4) + 1.0
    state = upd(state, batch, prio)
    assert state.sum_tree.shape[0] == seeds and state.pos.shape == ()
    for s in range(seeds):
        check_tree_consistent(state.sum_tree[s], np.add)
    assert float(state.max_priority[2]) > float(state.max_priority[0])
