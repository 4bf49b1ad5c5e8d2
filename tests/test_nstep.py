"""n-step windows from the time-major store: cuts at episode ends and at the write position."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.core.types import Transition
from angle_jax.core.returns import nstep_return
from angle_jax.core.types import as_nstep_batch
from angle_jax.replay.nstep import gather_nstep, nstep_replay

GAMMA = 0.9


def step_item(t, num_envs, term=(), trunc=()):
    """Vectorised step at global time t: obs = 10 t + env, next_obs = obs + 0.5, reward = t + 1 + 100 env."""
    envs = np.arange(num_envs)
    obs = (10.0 * t + envs)[:, None].astype(np.float32)
    return Transition(
        obs=jnp.asarray(obs),
        action=jnp.asarray(envs % 2, jnp.int32),
        reward=jnp.asarray(t + 1.0 + 100.0 * envs, jnp.float32),
        terminated=jnp.asarray([e in term for e in envs]),
        truncated=jnp.asarray([e in trunc for e in envs]),
        next_obs=jnp.asarray(obs + 0.5),
    )


@functools.lru_cache(maxsize=None)
def jitted_buffer(capacity, batch_size, n_step):
    buf = nstep_replay(capacity, batch_size, n_step)
    return buf, jax.jit(buf.add), jax.jit(buf.sample)


def filled(capacity, num_envs, steps, events, n_step=3):
    """A buffer after `steps` adds; events[t] = (terminated envs, truncated envs)."""
    buf, add, _ = jitted_buffer(capacity, 8, n_step)
    state = buf.init(step_item(0, num_envs))
    for t in range(steps):
        term, trunc = events.get(t, ((), ()))
        state = add(state, step_item(t, num_envs, term, trunc))
    return buf, state


def r(t, env):
    return t + 1.0 + 100.0 * env


# Capacity 6, 8 writes: rows hold t = 6, 7, 2, 3, 4, 5 and the write position is row 2.
# env 0 terminates at t=3 and is truncated at t=6; env 1 never ends.
EVENTS = {3: ((0,), ()), 6: ((), (0,))}
CASES = [
    # (start t, env, mask, terminated, bootstrap t) -- hand-derived from the layout above
    (2, 1, [1, 1, 1], False, 4),   # full window
    (2, 0, [1, 1, 0], True, 3),    # termination at t=3: no bootstrap
    (3, 0, [1, 0, 0], True, 3),    # terminates on its first step
    (5, 0, [1, 1, 0], False, 6),   # truncation at t=6: bootstrap from its true final obs
    (4, 1, [1, 1, 1], False, 6),   # reads across the circular wrap (rows 4, 5, 0)
    (6, 1, [1, 1, 0], False, 7),   # t=8 is not written: cut at the write position
    (7, 1, [1, 0, 0], False, 7),   # newest row
]


class NStepHandTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_windows_match_hand_computed(self):
        _, state = filled(6, 2, 8, EVENTS)
        assert int(state.pos) == 2 and int(state.size) == 6
        starts = np.array([c[0] for c in CASES])
        envs = jnp.asarray([c[1] for c in CASES], jnp.int32)
        rows = jnp.asarray(starts % 6, jnp.int32)
        batch = self.variant(gather_nstep, static_argnums=4)(state.data, state.pos, rows, envs, 3)
        returns, discount = self.variant(nstep_return)(batch.rewards, batch.mask, batch.terminated,
                                                       jnp.float32(GAMMA))
        batch, returns, discount = jax.tree.map(np.asarray, (batch, returns, discount))
        for i, (t0, env, mask, term, boot_t) in enumerate(CASES):
            np.testing.assert_array_equal(np.asarray(batch.mask[i]), mask, err_msg=f"case {i}")
            expect_rewards = [r(t0 + k, env) if m else 0.0 for k, m in enumerate(mask)]
            np.testing.assert_allclose(np.asarray(batch.rewards[i]), expect_rewards, err_msg=f"case {i}")
            assert bool(batch.terminated[i]) == term, f"case {i}"
            assert float(batch.next_obs[i, 0]) == 10.0 * boot_t + env + 0.5, f"case {i}"
            assert float(batch.obs[i, 0]) == 10.0 * t0 + env, f"case {i}"
            steps = sum(mask)
            expect_return = sum(GAMMA ** k * r(t0 + k, env) for k in range(steps))
            expect_discount = 0.0 if term else GAMMA ** steps
            np.testing.assert_allclose(float(returns[i]), expect_return, rtol=1e-6, err_msg=f"case {i}")
            np.testing.assert_allclose(float(discount[i]), expect_discount, rtol=1e-6, err_msg=f"case {i}")
        np.testing.assert_array_equal(np.asarray(batch.index), np.asarray(rows * 2 + envs))
        np.testing.assert_array_equal(np.asarray(batch.weights), np.ones(len(CASES)))

    def test_not_full_buffer_never_reads_unwritten_rows(self):
        _, state = filled(6, 2, 3, {})
        batch = jax.jit(gather_nstep, static_argnums=4)(state.data, state.pos, jnp.asarray([0, 1, 2]),
                                                     jnp.asarray([0, 1, 0]), 3)
        np.testing.assert_array_equal(np.asarray(batch.mask), [[1, 1, 1], [1, 1, 0], [1, 0, 0]])
        np.testing.assert_array_equal(np.asarray(batch.next_obs[:, 0]), [20.5, 21.5, 20.5])


def reference_window(data, pos, size, capacity, row, env, n):
    """Plain-Python n-step window, walking forward in time from (row, env)."""
    newest = (pos - 1) % capacity
    rewards, mask = [0.0] * n, [0.0] * n
    last = row
    for k in range(n):
        rk = (row + k) % capacity
        if k > 0 and (rk == (newest + 1) % capacity or rk >= size):
            break
        rewards[k], mask[k], last = float(data.reward[rk, env]), 1.0, rk
        if data.terminated[rk, env] or data.truncated[rk, env]:
            break
        if rk == newest:
            break
    return rewards, mask, bool(data.terminated[last, env]), float(data.next_obs[last, env, 0])


@pytest.mark.parametrize("steps", [7, 23])
def test_sampled_windows_match_reference(steps):
    """Random episode ends, partly full and wrapped buffers: sampled windows equal a loop reference."""
    capacity, num_envs, n = 10, 3, 4
    rng = np.random.default_rng(steps)
    buf, add, sample = jitted_buffer(capacity, 64, n)
    state = buf.init(step_item(0, num_envs))
    for t in range(steps):
        term = tuple(np.flatnonzero(rng.random(num_envs) < 0.15))
        trunc = tuple(e for e in np.flatnonzero(rng.random(num_envs) < 0.1) if e not in term)
        state = add(state, step_item(t, num_envs, term, trunc))
    batch = jax.tree.map(np.asarray, sample(state, jax.random.PRNGKey(3)))
    data = jax.tree.map(np.asarray, state.data)
    pos, size = int(state.pos), int(state.size)
    for i in range(64):
        row, env = divmod(int(batch.index[i]), num_envs)
        assert row < size
        rewards, mask, term, boot = reference_window(data, pos, size, capacity, row, env, n)
        np.testing.assert_allclose(np.asarray(batch.rewards[i]), rewards)
        np.testing.assert_array_equal(np.asarray(batch.mask[i]), mask)
        assert bool(batch.terminated[i]) == term
        assert float(batch.next_obs[i, 0]) == boot


def test_one_step_is_plain_td_target():
    item = step_item(4, 2, term=(1,))
    b = as_nstep_batch(item)
    returns, discount = nstep_return(b.rewards, b.mask, b.terminated, jnp.float32(GAMMA))
    np.testing.assert_allclose(np.asarray(returns), np.asarray(item.reward))
    np.testing.assert_allclose(np.asarray(discount), [GAMMA, 0.0])


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="n_step"):
        nstep_replay(10, 4, 0)
    with pytest.raises(ValueError, match="cannot exceed"):
        nstep_replay(3, 4, 5)
