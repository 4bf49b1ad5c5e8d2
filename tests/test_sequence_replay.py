"""Sequence replay: slot validity over wrap-around, stored sequences and cores, priorities, weights."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.core.axes import seed_axes
from angle_jax.core.types import SequenceStep
from angle_jax.replay import sequence_priority, sequence_replay
from angle_jax.replay.prioritized import tree_leaf_values


def step(t, num_envs, term=(), trunc=(), reset=()):
    """Vectorised step at global time t: obs = (t, env), action = 10 t + env, reward = t + 100 env;
    core h = 1000 t + 10 env + [0, 1, 2], core n = t."""
    envs = np.arange(num_envs)
    return SequenceStep(
        obs=jnp.asarray(np.stack([np.full(num_envs, t), envs], axis=1), jnp.float32),
        action=jnp.asarray(10 * t + envs, jnp.int32),
        reward=jnp.asarray(t + 100.0 * envs, jnp.float32),
        terminated=jnp.asarray([e in term for e in envs]),
        truncated=jnp.asarray([e in trunc for e in envs]),
        reset=jnp.asarray([e in reset for e in envs]),
        core={"h": jnp.asarray(1000.0 * t + 10.0 * envs[:, None] + np.arange(3), jnp.float32),
              "n": jnp.full((num_envs,), t, jnp.int32)},
    )


def core_h(t, env):
    return 1000.0 * t + 10.0 * env + np.arange(3)


def reference_starts(steps, capacity, period, length):
    """Start times of the valid sequences after `steps` writes: a start row, its last row written,
    its start row not yet overwritten."""
    return [t for t in range(steps) if t % period == 0 and t + length - 1 <= steps - 1 and t >= steps - capacity]


def reference_leaves(steps, capacity, period, length, num_envs):
    return {(t % capacity // period) * num_envs + e
            for t in reference_starts(steps, capacity, period, length) for e in range(num_envs)}


def check_tree_consistent(tree, combine):
    tree = np.asarray(tree)
    idx = np.arange(1, tree.shape[0] // 2)
    np.testing.assert_array_equal(tree[idx], combine(tree[2 * idx], tree[2 * idx + 1]).astype(np.float32))


@functools.lru_cache(maxsize=None)
def jitted(capacity, batch_size, length, period, prioritized=False, **kw):
    buf = sequence_replay(capacity, batch_size, length, period, prioritized=prioritized, **kw)
    return buf, jax.jit(buf.add), jax.jit(buf.sample), jax.jit(buf.update_priorities)


def check_sequences(batch, now, capacity, period, length, num_envs):
    """Every sampled sequence is L consecutive steps of one env, from a valid start, with its start's core."""
    ts = np.asarray(batch.obs[..., 0])            # [L, B]
    env_ids = np.asarray(batch.obs[..., 1])
    index = np.asarray(batch.index)
    t0 = ts[0]
    np.testing.assert_array_equal(ts, t0[None, :] + np.arange(length)[:, None])
    np.testing.assert_array_equal(env_ids, np.broadcast_to(env_ids[0], env_ids.shape))
    assert set(t0.astype(int)) <= set(reference_starts(now, capacity, period, length)), (t0, now)
    assert np.all(t0 + length - 1 <= now - 1), "a row not yet written was read"
    assert np.all(t0 >= now - capacity), "stale rows: the start row was overwritten"
    np.testing.assert_array_equal(index, (t0.astype(int) % capacity // period) * num_envs + env_ids[0].astype(int))
    np.testing.assert_array_equal(np.asarray(batch.action), 10 * ts.astype(int) + env_ids.astype(int))
    np.testing.assert_array_equal(np.asarray(batch.reward), ts + 100.0 * env_ids)
    np.testing.assert_array_equal(np.asarray(batch.core["n"]), t0.astype(int))
    np.testing.assert_array_equal(np.asarray(batch.core["h"]),
                                  np.stack([core_h(t, e) for t, e in zip(t0, env_ids[0])]))


# (capacity, period, L): overlapping, L == capacity, period 1, period > L, L == 1, period == capacity
CONFIGS = [(8, 2, 5), (8, 1, 8), (6, 3, 6), (8, 4, 3), (4, 1, 1), (6, 6, 2)]


@pytest.mark.parametrize("capacity,period,length", CONFIGS)
def test_valid_slots_and_samples_at_every_step(capacity, period, length):
    num_envs = 2
    buf, add, sample, _ = jitted(capacity, 16, length, period)
    state = buf.init(step(0, num_envs))
    assert not bool(buf.can_sample(state))
    for now in range(1, 3 * capacity + 2):
        state = add(state, step(now - 1, num_envs))
        leaves = np.asarray(tree_leaf_values(state.sum_tree, jnp.arange(state.sum_tree.shape[0] // 2)))
        expected = reference_leaves(now, capacity, period, length, num_envs)
        assert set(np.flatnonzero(leaves)) == expected, now
        np.testing.assert_array_equal(leaves[sorted(expected)], 1.0)        # uniform: every valid slot is 1
        mins = np.asarray(tree_leaf_values(state.min_tree, jnp.arange(leaves.size)))
        assert np.all(np.isinf(mins[leaves == 0])) and np.all(mins[leaves > 0] == 1.0)
        assert bool(buf.can_sample(state)) == bool(expected)
        assert int(state.pos) == now % capacity and int(state.size) == min(now, capacity)
        if expected:
            batch = sample(state, jax.random.PRNGKey(now))
            check_sequences(batch, now, capacity, period, length, num_envs)
            np.testing.assert_array_equal(np.asarray(batch.weights), 1.0)
    check_tree_consistent(state.sum_tree, np.add)
    check_tree_consistent(state.min_tree, np.minimum)


def test_stored_core_is_the_core_of_the_latest_start_row():
    capacity, period, num_envs, steps = 8, 2, 3, 13
    buf, add, _, _ = jitted(capacity, 4, 5, period)
    state = buf.init(step(0, num_envs))
    for t in range(steps):
        state = add(state, step(t, num_envs))
    for k in range(capacity // period):
        t = max(s for s in range(steps) if s % capacity == k * period)       # last write of row k * period
        np.testing.assert_array_equal(np.asarray(state.core["n"][k]), t)
        np.testing.assert_array_equal(np.asarray(state.core["h"][k]), np.stack([core_h(t, e) for e in range(3)]))


class SequenceReplayVariantsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_wraparound_shapes_and_dtypes(self):
        """capacity 8, period 2, L 5, 20 rows: sequences cross the circular boundary and stay consecutive."""
        capacity, period, length, num_envs, batch_size = 8, 2, 5, 3, 32
        buf = sequence_replay(capacity, batch_size, length, period)
        add, sample = self.variant(buf.add), self.variant(buf.sample)
        state = buf.init(step(0, num_envs))
        for t in range(20):
            state = add(state, step(t, num_envs))
        batch = sample(state, jax.random.PRNGKey(3))
        chex.assert_shape(batch.obs, (length, batch_size, 2))
        chex.assert_shape([batch.action, batch.reward, batch.terminated, batch.truncated, batch.reset],
                          (length, batch_size))
        chex.assert_shape(batch.core["h"], (batch_size, 3))
        chex.assert_shape([batch.core["n"], batch.index, batch.weights], (batch_size,))
        chex.assert_type([batch.obs, batch.reward, batch.weights, batch.core["h"]], jnp.float32)
        chex.assert_type([batch.action, batch.index, batch.core["n"]], jnp.int32)
        chex.assert_type([batch.terminated, batch.truncated, batch.reset], jnp.bool_)
        check_sequences(batch, 20, capacity, period, length, num_envs)
        # valid starts: 12 and 14 (16 is still incomplete); 14 sits at row 6 and runs through rows 6, 7, 0, 1, 2
        assert set(np.asarray(batch.obs[0, :, 0]).astype(int)) == set(reference_starts(20, capacity, period, length))
        assert any(t0 % capacity + length > capacity for t0 in np.asarray(batch.obs[0, :, 0]).astype(int)), \
            "no sampled sequence wrapped around the store"

    @chex.variants(with_jit=True, without_jit=True)
    def test_sequence_priority_by_hand(self):
        td = jnp.asarray([[1.0, -4.0, 10.0, 2.0],
                          [3.0, 2.0, 10.0, -1.0],
                          [-2.0, 0.0, 10.0, 10.0]])
        mask = jnp.asarray([[1, 1, 0, 1],
                            [1, 0, 0, 1],
                            [0, 0, 0, 0]], jnp.float32)
        # col 0: |1|, |3| -> 0.9 * 3 + 0.1 * 2; col 1: |-4| alone -> 4; col 2: nothing valid -> 0;
        # col 3: |2|, |-1| (the masked 10 is out of both max and mean) -> 0.9 * 2 + 0.1 * 1.5
        out = self.variant(sequence_priority)(td, mask)
        chex.assert_shape(out, (4,))
        chex.assert_type(out, jnp.float32)
        np.testing.assert_allclose(np.asarray(out), [2.9, 4.0, 0.0, 1.95], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(self.variant(sequence_priority)(td, mask, 0.5)),
                                   [2.5, 4.0, 0.0, 1.75], rtol=1e-6)


def test_sequence_priority_shape_checks():
    with pytest.raises(AssertionError):
        sequence_priority(jnp.zeros((3, 2)), jnp.ones((3, 4)))
    with pytest.raises(AssertionError):
        sequence_priority(jnp.zeros((3,)), jnp.ones((3,)))


def test_episode_flags_come_back_where_they_were_stored():
    capacity, period, length, num_envs = 16, 4, 8, 2
    events = {0: dict(reset=(0, 1)), 5: dict(term=(0,)), 6: dict(reset=(0,)), 9: dict(trunc=(1,)),
              10: dict(reset=(1,))}
    buf, add, sample, _ = jitted(capacity, 64, length, period)
    state = buf.init(step(0, num_envs))
    for t in range(14):
        state = add(state, step(t, num_envs, **events.get(t, {})))
    batch = sample(state, jax.random.PRNGKey(0))
    index = np.asarray(batch.index)
    assert set(index) == {0, 1, 2, 3}                     # starts 0 and 4 of both envs
    z = [0] * length
    expected = {  # slot -> (terminated, truncated, reset), by hand from `events`
        0: ([0, 0, 0, 0, 0, 1, 0, 0], z, [1, 0, 0, 0, 0, 0, 1, 0]),   # start 0, env 0
        1: (z, z, [1, 0, 0, 0, 0, 0, 0, 0]),                          # start 0, env 1
        2: ([0, 1, 0, 0, 0, 0, 0, 0], z, [0, 0, 1, 0, 0, 0, 0, 0]),   # start 4, env 0: ends mid-sequence
        3: (z, [0, 0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0]),   # start 4, env 1: truncated at t=9
    }
    for b, slot in enumerate(index):
        term, trunc, reset = expected[slot]
        np.testing.assert_array_equal(np.asarray(batch.terminated[:, b]), np.asarray(term, bool))
        np.testing.assert_array_equal(np.asarray(batch.truncated[:, b]), np.asarray(trunc, bool))
        np.testing.assert_array_equal(np.asarray(batch.reset[:, b]), np.asarray(reset, bool))


def test_prioritized_sampling_weights_and_new_slots():
    capacity, period, length, num_envs = 8, 2, 3, 2
    alpha, eps, beta0, beta_steps = 0.7, 1e-6, 0.6, 100
    buf, add, sample, update = jitted(capacity, 64, length, period, prioritized=True, alpha=alpha, beta0=beta0,
                                      beta_steps=beta_steps, eps=eps)
    state = buf.init(step(0, num_envs))
    for t in range(10):
        state = add(state, step(t, num_envs))
    assert reference_leaves(10, capacity, period, length, num_envs) == {2, 3, 4, 5, 6, 7}   # starts 2, 4, 6
    batch = sample(state, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(batch.weights), 1.0)          # all at the initial max priority
    # leaf 0 (start 8, not complete yet) is invalid: its update must be ignored
    index = jnp.asarray([2, 3, 4, 5, 6, 7, 0], jnp.int32)
    prio = np.array([0.5, -1.0, 2.0, 4.0, 0.0, 3.0, 100.0], np.float32)
    state = update(state, batch.replace(index=index), jnp.asarray(prio))
    leaves = np.asarray(tree_leaf_values(state.sum_tree, jnp.arange(8)))
    p = (np.abs(prio[:6].astype(np.float64)) + eps) ** alpha
    np.testing.assert_allclose(leaves[2:], p, rtol=1e-5)
    assert leaves[0] == 0 and leaves[1] == 0 and np.isinf(np.asarray(state.min_tree)[8])
    assert float(state.max_priority) == pytest.approx(4.0 + eps)
    check_tree_consistent(state.sum_tree, np.add)
    check_tree_consistent(state.min_tree, np.minimum)

    draws = jax.jit(jax.vmap(lambda k: sample(state, k).index))(jax.random.split(jax.random.PRNGKey(1), 1000))
    freq = np.bincount(np.asarray(draws).ravel(), minlength=8) / draws.size
    assert freq[0] == 0 and freq[1] == 0, "an invalid slot was sampled"
    np.testing.assert_allclose(freq[2:], p / p.sum(), atol=0.005)

    batch = sample(state, jax.random.PRNGKey(2))
    beta = beta0 + (1 - beta0) * min(1.0, 10 * num_envs / beta_steps)  # 10 rows x 2 envs
    probs = p / p.sum()
    w_all = (len(p) * probs) ** -beta
    ref = w_all[np.asarray(batch.index) - 2] / w_all.max()
    np.testing.assert_allclose(np.asarray(batch.weights), ref, rtol=1e-4)

    # row 2 (t=10) overwrites start 2's row: slot 1 dies; start 8 (rows 0..2) completes with the max priority
    state = add(state, step(10, num_envs))
    leaves = np.asarray(tree_leaf_values(state.sum_tree, jnp.arange(8)))
    np.testing.assert_allclose(leaves[:2], (4.0 + eps) ** alpha, rtol=1e-6)
    np.testing.assert_array_equal(leaves[2:4], 0.0)
    # a priority update that arrives for the dead slot leaves it dead
    state = update(state, batch.replace(index=jnp.asarray([2, 3], jnp.int32)), jnp.asarray([5.0, 5.0]))
    np.testing.assert_array_equal(np.asarray(tree_leaf_values(state.sum_tree, jnp.asarray([2, 3]))), 0.0)
    check_sequences(sample(state, jax.random.PRNGKey(3)), 11, capacity, period, length, num_envs)


def test_uniform_ignores_priorities_and_samples_valid_slots_evenly():
    buf, add, sample, update = jitted(8, 64, 3, 2)
    state = buf.init(step(0, 2))
    for t in range(10):
        state = add(state, step(t, 2))
    batch = sample(state, jax.random.PRNGKey(0))
    new = update(state, batch, jnp.arange(64, dtype=jnp.float32))
    chex.assert_trees_all_equal(new, state)
    draws = jax.jit(jax.vmap(lambda k: sample(state, k).index))(jax.random.split(jax.random.PRNGKey(1), 200))
    freq = np.bincount(np.asarray(draws).ravel(), minlength=8) / draws.size
    np.testing.assert_allclose(freq, [0, 0] + [1 / 6] * 6, atol=0.01)


def test_vmapped_over_seeds_with_shared_counters():
    buf = sequence_replay(8, 4, 3, 2, prioritized=True)
    example = step(0, 2)
    axes = seed_axes(buf.init(example))
    assert axes.pos is None and axes.size is None and axes.added is None and axes.sum_tree == 0
    state = jax.vmap(lambda _: buf.init(example), out_axes=axes)(jnp.arange(3))
    add = jax.jit(jax.vmap(buf.add, in_axes=(axes, None), out_axes=axes))
    for t in range(6):
        state = add(state, step(t, 2))
    assert state.pos.shape == () and int(state.added) == 6
    batch = jax.jit(jax.vmap(buf.sample, in_axes=(axes, 0)))(state, jax.random.split(jax.random.PRNGKey(0), 3))
    chex.assert_shape(batch.obs, (3, 3, 4, 2))
    prio = jnp.arange(12, dtype=jnp.float32).reshape(3, 4) + 1.0
    state = jax.jit(jax.vmap(buf.update_priorities, in_axes=(axes, 0, 0), out_axes=axes))(state, batch, prio)
    for s in range(3):
        check_tree_consistent(state.sum_tree[s], np.add)
        check_sequences(jax.tree.map(lambda x: x[s], batch), 6, 8, 2, 3, 2)
    assert float(state.max_priority[2]) > float(state.max_priority[0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(capacity=10, batch_size=4, sequence_length=5, period=4), r"capacity \(10\).*period \(4\)"),
    (dict(capacity=8, batch_size=4, sequence_length=5, period=0), r"period.*0"),
    (dict(capacity=8, batch_size=4, sequence_length=9, period=2), r"sequence_length \(9\).*capacity \(8\)"),
    (dict(capacity=8, batch_size=4, sequence_length=0, period=2), r"sequence_length.*0"),
    (dict(capacity=8, batch_size=0, sequence_length=5, period=2), r"batch_size.*0"),
    (dict(capacity=0, batch_size=4, sequence_length=1, period=1), r"capacity.*0"),
    (dict(capacity=8, batch_size=4, sequence_length=5, period=2, prioritized=True, beta0=1.5), r"beta0"),
])
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sequence_replay(**kwargs)
