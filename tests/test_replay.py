import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.replay import uniform_replay
from angle_jax.core.axes import seed_axes


def item(t, num_envs=3):
    """A step whose payload encodes its step index and env index."""
    return {"x": jnp.full((num_envs,), t, jnp.int32) * 10 + jnp.arange(num_envs, dtype=jnp.int32),
            "obs": jnp.full((num_envs, 2), float(t))}


class BufferTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_wraparound_overwrites_oldest(self):
        buf = uniform_replay(capacity=4, batch_size=8)
        add = self.variant(buf.add)
        state = buf.init(item(0))
        for t in range(6):
            state = add(state, item(t))
        assert int(state.pos) == 6 % 4 and int(state.size) == 4
        rows = np.asarray(state.data["x"])[:, 0] // 10
        np.testing.assert_array_equal(rows, [4, 5, 2, 3])

    @chex.variants(with_jit=True, without_jit=True)
    def test_samples_only_written_rows(self):
        buf = uniform_replay(capacity=100, batch_size=512)
        state = buf.init(item(0))
        for t in range(1, 6):  # rows hold t = 1..5 in slots 0..4; slots 5.. are zeros
            state = buf.add(state, item(t))
        batch = self.variant(buf.sample)(state, jax.random.PRNGKey(0))
        x = np.asarray(batch["x"])
        t, e = x // 10, x % 10
        assert set(t.tolist()) == {1, 2, 3, 4, 5}
        assert set(e.tolist()) == {0, 1, 2}
        np.testing.assert_array_equal(np.asarray(batch["obs"])[:, 0], t.astype(np.float32))

    def test_sampling_is_uniform_over_transitions(self):
        buf = uniform_replay(capacity=8, batch_size=40_000)
        state = buf.init(item(0, 2))
        for t in range(11):  # wrapped: all 8 rows valid
            state = buf.add(state, item(t, 2))
        x = np.asarray(buf.sample(state, jax.random.PRNGKey(1))["x"])
        counts = np.unique(x, return_counts=True)[1]
        assert len(counts) == 16
        np.testing.assert_allclose(counts / x.size, 1 / 16, atol=0.006)

    def test_can_sample_and_bad_sizes(self):
        buf = uniform_replay(capacity=4, batch_size=2)
        state = buf.init(item(0))
        assert not bool(buf.can_sample(state))
        assert bool(buf.can_sample(buf.add(state, item(1))))
        with pytest.raises(ValueError, match="capacity"):
            uniform_replay(0, 2)
        with pytest.raises(ValueError, match="batch_size"):
            uniform_replay(4, -1)

    def test_add_rejects_mismatched_item(self):
        buf = uniform_replay(capacity=4, batch_size=2)
        state = buf.init(item(0))
        with pytest.raises(AssertionError, match="replay item"):
            buf.add(state, {"x": jnp.zeros((3,), jnp.float32), "obs": jnp.zeros((3, 2))})

    def test_vmap_over_seeds_keeps_counters_shared(self):
        buf = uniform_replay(capacity=5, batch_size=4)
        seeds = 3
        state = buf.init(item(0))
        axes = seed_axes(state)
        states = jax.vmap(lambda _: buf.init(item(0)), out_axes=axes)(jnp.arange(seeds))
        add = jax.jit(jax.vmap(buf.add, in_axes=(axes, 0), out_axes=axes))
        for t in range(7):
            per_seed = jax.tree.map(lambda x: jnp.stack([x + 100 * s for s in range(seeds)]), item(t))
            states = add(states, per_seed)
        assert states.pos.shape == () and int(states.size) == 5
        x = np.asarray(states.data["x"])  # [seeds, capacity, envs]
        for s in range(seeds):
            np.testing.assert_array_equal((x[s, :, 0] - 100 * s) // 10, [5, 6, 2, 3, 4])
        samples = jax.vmap(buf.sample, in_axes=(axes, 0))(states, jax.random.split(jax.random.PRNGKey(0), seeds))
        xs = np.asarray(samples["x"])
        for s in range(seeds):
            assert np.all((xs[s] >= 100 * s) & (xs[s] < 100 * s + 100))
