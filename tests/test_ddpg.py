"""DDPG: target, every-step actor and target updates, OU noise, and convergence on a one-step problem."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import ddpg
from angle_jax.algos.base import Transition
from angle_jax.envs.base import Box, EnvSpec

SPEC = registry.make_env("Pendulum-v1", 1).spec
SMALL = ddpg.Config(actor_hidden=(8,), critic_hidden=(8,))
BANDIT = EnvSpec("bandit", (1,), "float32", Box((-1.0,), (1.0,), (1,)), 1, 1)


def best_action(obs):
    """The optimum of the one-step problem below: a*(s) = 0.6 s - 0.2."""
    return 0.6 * obs - 0.2


def bandit_batch(key, n=128):
    """One-step episodes: reward -(a - a*(s))², every transition terminal."""
    k_obs, k_act = jax.random.split(key)
    obs = jax.random.uniform(k_obs, (n, 1), minval=-1.0, maxval=1.0)
    action = jax.random.uniform(k_act, (n, 1), minval=-1.0, maxval=1.0)
    reward = -jnp.sum(jnp.square(action - best_action(obs)), axis=-1)
    return Transition(obs, action, reward, jnp.ones(n, bool), jnp.zeros(n, bool), jnp.zeros_like(obs))


def batch(n=16, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return Transition(jax.random.normal(k[0], (n, 3)), jax.random.uniform(k[1], (n, 1), minval=-1, maxval=1),
                      jax.random.normal(k[2], (n,)), jnp.zeros(n, bool), jnp.zeros(n, bool),
                      jax.random.normal(k[3], (n, 3)))


class PiecesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_q_target_hand_computed_with_termination(self):
        next_q = jnp.array([[2.0, -1.0, 4.0]])
        target = self.variant(ddpg.q_target)(next_q, jnp.array([1.0, 0.5, 0.0]), jnp.array([False, True, False]), 0.5)
        np.testing.assert_allclose(target, [1.0 + 0.5 * 2.0, 0.5, 0.5 * 4.0])
        with pytest.raises(AssertionError):
            ddpg.q_target(jnp.zeros((2, 3)), jnp.zeros(3), jnp.zeros(3, bool), 0.5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ou_noise_without_diffusion_decays_geometrically(self):
        step = self.variant(ddpg.ou_noise_step)
        x = jnp.array([[1.0, -2.0]])
        out = step(x, jax.random.PRNGKey(0), 0.15, 0.0, 0.5)
        np.testing.assert_allclose(out, x * (1 - 0.15 * 0.5), rtol=1e-6)

    @chex.variants(with_jit=True)
    def test_ou_noise_stationary_law_and_correlation(self):
        theta, sigma, dt = 0.15, 0.2, 1.0

        def run(key):
            def body(x, k):
                x = ddpg.ou_noise_step(x, k, theta, sigma, dt)
                return x, x
            _, xs = jax.lax.scan(body, jnp.zeros((4096,)), jax.random.split(key, 300))
            return xs

        xs = np.asarray(self.variant(run)(jax.random.PRNGKey(1)))[100:]  # past the burn-in
        # Euler-Maruyama OU: x' = (1 - θ dt) x + σ sqrt(dt) ε, stationary variance σ² dt / (1 - (1 - θ dt)²)
        std = sigma * np.sqrt(dt / (1 - (1 - theta * dt) ** 2))
        assert abs(xs.mean()) < 0.01
        np.testing.assert_allclose(xs.std(), std, rtol=0.03)
        lag1 = np.mean(xs[1:] * xs[:-1]) / np.mean(xs * xs)
        np.testing.assert_allclose(lag1, 1 - theta * dt, atol=0.02)

    def test_ou_exploration_is_clipped(self):
        a = ddpg.ou_exploration(jnp.array([[0.9, -0.9]]), jnp.array([[0.5, 0.05]]))
        np.testing.assert_allclose(a, [[1.0, -0.85]], rtol=1e-6)


def changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_update_moves_actor_critic_and_both_targets():
    algo = ddpg.make(ddpg.Config(actor_hidden=(8,), critic_hidden=(8,), tau=0.5), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    assert jax.tree.leaves(state.critic_params)[0].shape[0] == 1  # a single critic
    update = jax.jit(algo.update)
    for i in range(1, 4):
        new, metrics = update(state, batch(seed=i), jax.random.PRNGKey(i))
        for name in ("actor_params", "critic_params", "actor_target", "critic_target"):
            assert changed(getattr(state, name), getattr(new, name)), (i, name)
        chex.assert_trees_all_close(new.actor_target, jax.tree.map(
            lambda o, t: t + 0.5 * (o - t), new.actor_params, state.actor_target), rtol=1e-6)
        assert np.isfinite(float(metrics["actor_loss"]))
        state = new
    assert int(state.step) == 3


def test_act_is_the_actor_and_explore_adds_gaussian_noise_of_the_configured_scale():
    algo = ddpg.make(ddpg.Config(actor_hidden=(8,), critic_hidden=(8,), exploration_noise=0.05), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    obs = jax.random.normal(jax.random.PRNGKey(1), (4096, 3))
    greedy = algo.act(state, obs)
    np.testing.assert_array_equal(greedy, ddpg.networks(SMALL, SPEC)[0].apply(state.actor_params, obs))
    noise = np.asarray(algo.explore(state, obs, jax.random.PRNGKey(2), 0) - greedy)
    inside = np.abs(np.asarray(greedy)) < 0.8  # away from the clipping bounds
    np.testing.assert_allclose(noise[inside].std(), 0.05, rtol=0.05)
    assert abs(noise[inside].mean()) < 0.005


def test_refuses_discrete_env_and_bad_config():
    with pytest.raises(ValueError, match="continuous actions"):
        ddpg.make(SMALL, registry.make_env("CartPole-v1", 1).spec)
    with pytest.raises(ValueError, match="exploration_noise"):
        ddpg.make(ddpg.Config(exploration_noise=-1.0), SPEC)


def test_converges_to_the_known_optimum_of_a_one_step_problem():
    algo = ddpg.make(ddpg.Config(actor_hidden=(32, 32), critic_hidden=(32, 32), actor_lr=1e-3, critic_lr=3e-3,
                                 tau=0.05), BANDIT)

    @jax.jit
    def train(key):
        k_init, k_steps = jax.random.split(key)

        def body(state, k):
            return algo.update(state, bandit_batch(k), k)

        return jax.lax.scan(body, algo.init(k_init, BANDIT), jax.random.split(k_steps, 1500))

    obs = jnp.linspace(-1.0, 1.0, 21)[:, None]
    state0 = algo.init(jax.random.split(jax.random.PRNGKey(0))[0], BANDIT)
    start_error = jnp.abs(algo.act(state0, obs) - best_action(obs))
    state, metrics = train(jax.random.PRNGKey(0))
    error = jnp.abs(algo.act(state, obs) - best_action(obs))
    assert float(start_error.max()) > 0.5, start_error
    # the policy's argmax is as good as the small critic's fit of -(a - a*)²
    assert float(error.mean()) < 0.08 and float(error.max()) < 0.15, error
    # terminal transitions: the critic regresses onto the reward, which is at most 0 at the optimum
    assert float(metrics["critic_loss"][-1]) < 0.01
