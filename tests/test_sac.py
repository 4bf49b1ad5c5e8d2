"""SAC: tanh-Gaussian log-probs, soft targets, temperature, losses, the agent and a learning check."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import sac
from angle_jax.core.types import Transition
from angle_jax.core.axes import seed_axes
from angle_jax.training.off_policy import OffPolicyLoop, make_train

SPEC = registry.make_env("Pendulum-v1", 1).spec
SMALL = sac.Config(actor_hidden=(8,), critic_hidden=(8,))


def batch(n=16, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return Transition(jax.random.normal(k[0], (n, 3)), jax.random.uniform(k[1], (n, 1), minval=-1, maxval=1),
                      jax.random.normal(k[2], (n,)), jnp.zeros(n, bool), jnp.zeros(n, bool),
                      jax.random.normal(k[3], (n, 3)))


def reference_log_prob(u, mean, std, h=1e-5):
    """log density of y = tanh(u), u ~ N(mean, diag std²), by change of variables with a
    central finite-difference Jacobian of the whole vector map (float64)."""
    u, mean, std = (np.asarray(v, np.float64) for v in (u, mean, std))
    log_base = np.sum(-0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi))
    dim = u.shape[0]
    jac = np.zeros((dim, dim))
    for j in range(dim):
        e = np.zeros(dim)
        e[j] = h
        jac[:, j] = (np.tanh(u + e) - np.tanh(u - e)) / (2 * h)
    return log_base - np.log(abs(np.linalg.det(jac)))


class PiecesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_tanh_log_prob_matches_change_of_variables(self):
        key = jax.random.PRNGKey(0)
        mean = jnp.array([[0.3, -1.2, 0.0], [1.5, 0.4, -0.7]])
        log_std = jnp.array([[-0.5, 0.2, -1.0], [0.0, -2.0, 0.3]])
        sample = self.variant(lambda m, s, k: sac.squashed_gaussian(m, s).sample_and_log_prob(seed=k))
        action, log_prob = sample(mean, log_std, key)
        assert action.shape == (2, 3) and log_prob.shape == (2,)
        assert float(jnp.max(jnp.abs(action))) < 1.0
        rescored = self.variant(lambda m, s, a: sac.squashed_gaussian(m, s).log_prob(a))(mean, log_std, action)
        for i in range(2):
            u = np.arctanh(np.asarray(action[i], np.float64))
            want = reference_log_prob(u, mean[i], np.exp(np.asarray(log_std[i], np.float64)))
            np.testing.assert_allclose(float(log_prob[i]), want, rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(float(rescored[i]), want, rtol=1e-3, atol=1e-2)

    @chex.variants(with_jit=True, without_jit=True)
    def test_soft_target_hand_computed(self):
        next_q = jnp.array([[1.0, 5.0, -2.0], [3.0, 4.0, -1.0]])
        log_prob = jnp.array([-1.0, 0.5, 2.0])
        reward = jnp.array([0.5, 1.0, 2.0])
        terminated = jnp.array([False, True, False])
        target = self.variant(sac.soft_q_target)(next_q, log_prob, reward, terminated, 0.9, 0.2)
        np.testing.assert_allclose(target, [0.5 + 0.9 * (1.0 + 0.2), 1.0, 2.0 + 0.9 * (-2.0 - 0.4)], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_soft_target_moves_by_minus_gamma_alpha_log_prob(self):
        k = jax.random.split(jax.random.PRNGKey(1), 4)
        next_q = jax.random.normal(k[0], (2, 32))
        log_prob = 3.0 * jax.random.normal(k[1], (32,))
        reward = jax.random.normal(k[2], (32,))
        terminated = jax.random.bernoulli(k[3], 0.3, (32,))
        gamma = 0.97
        target = self.variant(sac.soft_q_target)
        delta = target(next_q, log_prob, reward, terminated, gamma, 0.7) - target(
            next_q, log_prob, reward, terminated, gamma, 0.2)
        expected = np.where(terminated, 0.0, -gamma * (0.7 - 0.2) * np.asarray(log_prob))
        np.testing.assert_allclose(delta, expected, rtol=1e-5, atol=1e-5)
        assert np.any(np.abs(expected) > 0.5)

    def test_soft_target_shapes_are_checked(self):
        with pytest.raises(AssertionError):
            sac.soft_q_target(jnp.zeros((2, 4)), jnp.zeros(3), jnp.zeros(4), jnp.zeros(4, bool), 0.9, 0.1)

    @chex.variants(with_jit=True, without_jit=True)
    def test_temperature_gradient_sign(self):
        grad = self.variant(jax.grad(sac.temperature_loss))
        log_alpha = jnp.float32(np.log(0.5))
        # entropy = -mean log π = -1.5 is below the target -1: descent must raise α
        low = grad(log_alpha, jnp.array([1.0, 2.0]), -1.0)
        # entropy = +1 is above the target -1: descent must lower α
        high = grad(log_alpha, jnp.array([-1.0, -1.0]), -1.0)
        assert float(low) < 0 and float(high) > 0
        np.testing.assert_allclose([low, high], [-(1.5 - 1.0), -(-1.0 - 1.0)], rtol=1e-6)

    def test_actor_loss_uses_min_over_critics_and_entropy(self):
        q = jnp.array([[1.0, 4.0], [2.0, 3.0]])
        log_prob = jnp.array([-1.0, 1.0])
        np.testing.assert_allclose(sac.sac_actor_loss(q, log_prob, 0.5), ((-0.5 - 1.0) + (0.5 - 3.0)) / 2)
        np.testing.assert_allclose(sac.sac_critic_loss(q, jnp.array([1.0, 3.0])), (0 + 1) / 2 + (1 + 0) / 2)


@pytest.mark.parametrize("target_entropy, grows", [(10.0, True), (-50.0, False)])
def test_update_moves_temperature_towards_target_entropy(target_entropy, grows):
    algo = sac.make(sac.Config(actor_hidden=(8,), critic_hidden=(8,), target_entropy=target_entropy,
                               alpha_lr=1e-2, init_alpha=0.3), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    np.testing.assert_allclose(jnp.exp(state.log_alpha), 0.3, rtol=1e-6)
    update = jax.jit(algo.update)
    for i in range(3):
        state, metrics = update(state, batch(seed=i), jax.random.PRNGKey(i))
    alpha = float(jnp.exp(state.log_alpha))
    assert (alpha > 0.3) == grows and alpha != pytest.approx(0.3), alpha
    assert np.isfinite(float(metrics["critic_loss"])) and np.isfinite(float(metrics["actor_loss"]))


def test_default_target_entropy_and_fixed_alpha():
    algo = sac.make(sac.Config(actor_hidden=(8,), critic_hidden=(8,), alpha_lr=0.0), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    assert float(state.hparams.target_entropy) == -1.0  # -|A| for Pendulum
    new, _ = jax.jit(algo.update)(state, batch(), jax.random.PRNGKey(1))
    assert float(new.log_alpha) == float(state.log_alpha)


def test_update_changes_everything_it_should_and_tracks_the_critic_target():
    algo = sac.make(sac.Config(actor_hidden=(8,), critic_hidden=(8,), tau=0.25), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    new, metrics = jax.jit(algo.update)(state, batch(), jax.random.PRNGKey(1))
    for name in ("actor_params", "critic_params", "critic_target"):
        old_leaves, new_leaves = jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(new, name))
        assert any(not np.array_equal(a, b) for a, b in zip(old_leaves, new_leaves)), name
    expected = jax.tree.map(lambda o, t: t + 0.25 * (o - t), new.critic_params, state.critic_target)
    chex.assert_trees_all_close(new.critic_target, expected, rtol=1e-6)
    assert jax.tree.leaves(state.critic_params)[0].shape[0] == 2  # twin critics
    assert int(new.step) == 1 and set(metrics) >= {"alpha", "entropy", "critic_loss", "actor_loss"}
    assert seed_axes(state).step is None


def test_act_is_tanh_of_mean_and_explore_samples_in_bounds():
    algo = sac.make(SMALL, SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    obs = jax.random.normal(jax.random.PRNGKey(1), (256, 3))
    mean, _ = sac.networks(SMALL, SPEC)[0].apply(state.actor_params, obs)
    np.testing.assert_allclose(algo.act(state, obs), jnp.tanh(mean), rtol=1e-6)
    a = algo.explore(state, obs, jax.random.PRNGKey(2), 0)
    b = algo.explore(state, obs, jax.random.PRNGKey(3), 0)
    assert a.shape == (256, 1) and float(jnp.abs(a).max()) <= 1.0
    assert not np.allclose(a, b) and not np.allclose(a, algo.act(state, obs))


def test_refuses_discrete_env_and_bad_config():
    with pytest.raises(ValueError, match="continuous actions"):
        sac.make(SMALL, registry.make_env("CartPole-v1", 1).spec)
    with pytest.raises(ValueError, match="init_alpha"):
        sac.make(sac.Config(init_alpha=0.0), SPEC)
    with pytest.raises(ValueError, match="log_std_min"):
        sac.make(sac.Config(log_std_min=1.0, log_std_max=0.0), SPEC)


def test_sac_improves_pendulum_on_small_budget():
    env, eval_env = registry.make_env("Pendulum-v1", 1), registry.make_env("Pendulum-v1", 8)
    cfg = sac.Config(actor_hidden=(32, 32), critic_hidden=(32, 32), actor_lr=3e-3, critic_lr=3e-3,
                     alpha_lr=3e-3, tau=0.02)
    loop = OffPolicyLoop(num_envs=1, capacity_per_env=10_000, batch_size=64, learning_starts_iters=500,
                         train_frequency=1, gradient_steps=1)
    train = make_train(sac.make(cfg, env.spec), env, loop, eval_env)
    key, eval_key = jax.random.PRNGKey(3), jax.random.PRNGKey(7)
    evaluate = jax.jit(train.evaluate)
    before = float(evaluate(jax.jit(train.init)(key).agent, eval_key).mean())
    carry, logs = jax.jit(train.train, static_argnums=1)(key, 4000)
    after = float(evaluate(carry.agent, eval_key).mean())
    assert int(carry.iteration) == 4000 and float(logs["episodes"]) == 20
    # A random-init policy scores about -1200 to -1500; a learning SAC is near -200 by now.
    assert after > before + 500 and after > -400, (before, after)
    assert 0.0 < float(logs["alpha"]) < 1.0
