import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import td3
from angle_jax.core.optim import polyak_update
from angle_jax.core.types import Transition

SPEC = registry.make_env("Pendulum-v1", 1).spec
SMALL = td3.Config(actor_hidden=(8,), critic_hidden=(8,))


class PiecesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_twin_q_target_hand_computed(self):
        next_q = jnp.array([[1.0, 5.0, -2.0], [3.0, 4.0, -1.0]])
        reward = jnp.array([0.5, 1.0, 2.0])
        terminated = jnp.array([False, True, False])
        target = self.variant(td3.twin_q_target)(next_q, reward, terminated, 0.9)
        np.testing.assert_allclose(target, [0.5 + 0.9 * 1.0, 1.0, 2.0 + 0.9 * -2.0], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_truncated_step_bootstraps_terminated_does_not(self):
        next_q = jnp.full((2, 2), 10.0)
        # A truncated transition is stored with terminated=False: it bootstraps.
        target = self.variant(td3.twin_q_target)(next_q, jnp.zeros(2), jnp.array([False, True]), 0.5)
        np.testing.assert_allclose(target, [5.0, 0.0])

    def test_target_policy_smoothing_is_clipped(self):
        a = jnp.zeros((10_000, 2))
        out = td3.target_policy_smoothing(a, jax.random.PRNGKey(0), 1.0, 0.3)
        assert float(jnp.max(jnp.abs(out))) <= 0.3 + 1e-6
        edge = td3.target_policy_smoothing(jnp.ones((1000, 1)), jax.random.PRNGKey(1), 0.5, 0.5)
        assert float(edge.max()) <= 1.0 and float(edge.min()) >= 0.5

    def test_critic_and_actor_losses(self):
        q = jnp.array([[1.0, 2.0], [3.0, 0.0]])
        np.testing.assert_allclose(td3.critic_loss(q, jnp.array([1.0, 1.0])), (0 + 1) / 2 + (4 + 1) / 2)
        np.testing.assert_allclose(td3.actor_loss(jnp.array([1.0, 3.0])), -2.0)
        with pytest.raises(AssertionError):
            td3.critic_loss(q, jnp.ones(3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_polyak(self):
        online, target = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.0, 4.0])}
        out = self.variant(polyak_update)(online, target, 0.25)
        np.testing.assert_allclose(out["w"], [0.25, 3.5])


def batch(n=16, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return Transition(jax.random.normal(k[0], (n, 3)), jax.random.uniform(k[1], (n, 1), minval=-1, maxval=1),
                      jax.random.normal(k[2], (n,)), jnp.zeros(n, bool), jnp.zeros(n, bool),
                      jax.random.normal(k[3], (n, 3)))


def changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("delay", [1, 3])
def test_actor_and_targets_update_only_every_policy_delay_steps(delay):
    algo = td3.make(td3.Config(actor_hidden=(8,), critic_hidden=(8,), policy_delay=delay), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    update = jax.jit(algo.update)
    for i in range(1, 7):
        new, metrics = update(state, batch(seed=i), jax.random.PRNGKey(i))
        should = i % delay == 0
        assert changed(state.critic_params, new.critic_params)
        assert changed(state.actor_params, new.actor_params) == should, i
        assert changed(state.actor_target, new.actor_target) == should, i
        assert changed(state.critic_target, new.critic_target) == should, i
        assert bool(jnp.isnan(metrics["actor_loss"])) != should
        state = new
    assert int(state.step) == 6


def test_act_is_deterministic_and_explore_stays_in_bounds():
    algo = td3.make(SMALL, SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
    np.testing.assert_array_equal(algo.act(state, obs), algo.act(state, obs))
    state = state.replace(hparams=state.hparams.replace(exploration_noise=jnp.float32(5.0)))
    a = algo.explore(state, obs, jax.random.PRNGKey(2), 0)
    assert a.shape == (64, 1) and float(jnp.abs(a).max()) <= 1.0
    assert not np.array_equal(a, algo.act(state, obs))


def test_same_seed_same_params_different_seed_different_params():
    algo = td3.make(SMALL, SPEC)

    def run(seed):
        s = algo.init(jax.random.PRNGKey(seed), SPEC)
        for i in range(3):
            s, _ = jax.jit(algo.update)(s, batch(seed=i), jax.random.PRNGKey(seed * 100 + i))
        return s

    a, b, c = run(0), run(0), run(1)
    assert not changed(a, b)
    assert changed(a, c)


def test_refuses_discrete_env_and_bad_config():
    with pytest.raises(ValueError, match="continuous actions"):
        td3.make(SMALL, registry.make_env("CartPole-v1", 1).spec)
    with pytest.raises(ValueError, match="policy_delay"):
        td3.make(td3.Config(policy_delay=0), SPEC)
    with pytest.raises(ValueError, match="tau"):
        td3.make(td3.Config(tau=0.0), SPEC)
