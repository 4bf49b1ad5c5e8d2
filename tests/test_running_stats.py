"""Running statistics and the on-policy observation / reward normalisation built on them: against NumPy,
across data-parallel shares, through PPO and A2C updates, acting and bad input."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import a2c, ppo
from angle_jax.algos.policy_gradient import network, normalize_rollout
from angle_jax.core import running_stats
from angle_jax.core.running_stats import RunningStats, discounted_filter
from angle_jax.envs.base import Discrete, EnvSpec
from angle_jax.training.on_policy import OnPolicyLoop, collect, make_train
from angle_jax.training.reporting import EpisodeAccumulator


class RunningStatsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_running_stats_match_numpy_over_all_batches(self):
        rng = np.random.default_rng(0)
        batches = [rng.normal(3.0, 2.0, size=(n, 2)).astype(np.float32) for n in (5, 17, 40)]
        stats = RunningStats.create((2,))
        update = self.variant(lambda s, b: s.update(b))
        for b in batches:
            stats = update(stats, b)
        everything = np.concatenate(batches)
        np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-3)
        np.testing.assert_allclose(stats.var, everything.var(0), rtol=1e-3)

    def test_data_parallel_shares_give_the_statistics_of_the_whole_batch(self):
        rng = np.random.default_rng(1)
        prior = RunningStats.create((3,)).update(rng.normal(size=(8, 3)).astype(np.float32))
        batch = rng.normal(-1.0, 3.0, size=(4, 6, 3)).astype(np.float32)  # 4 devices x 6 samples
        shared = jax.vmap(lambda b: prior.update(b, axis_name="data"), axis_name="data")(batch)
        whole = prior.update(batch.reshape(-1, 3))
        for field in ("mean", "var", "count"):
            for device in range(4):
                np.testing.assert_allclose(getattr(shared, field)[device], getattr(whole, field), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_discounted_filter_restarts_after_episode_ends_like_a_numpy_loop(self):
        rng = np.random.default_rng(2)
        rewards = rng.normal(size=(9, 3)).astype(np.float32)
        done = rng.random((9, 3)) < 0.3
        carry = np.array([1.0, -2.0, 0.5], np.float32)
        last, sums = self.variant(discounted_filter)(rewards, carry, 0.9, done)
        e, expected = carry.copy(), np.zeros_like(rewards)
        for t in range(9):
            e = 0.9 * e + rewards[t]
            expected[t] = e
            e = np.where(done[t], 0.0, e)
        np.testing.assert_allclose(sums, expected, rtol=1e-5)
        np.testing.assert_allclose(last, e, rtol=1e-5)

    def test_normalize_obs_and_scale_by_std(self):
        stats = RunningStats(jnp.array([1.0]), jnp.array([4.0]), jnp.array(10.0))
        np.testing.assert_allclose(running_stats.normalize_obs(jnp.array([[3.0], [100.0]]), stats, 5.0),
                                   [[1.0], [5.0]], rtol=1e-5)
        scalar = RunningStats(jnp.array(3.0), jnp.array(4.0), jnp.array(10.0))
        # no centring: a reward keeps its sign and zero stays zero
        np.testing.assert_allclose(running_stats.scale_by_std(jnp.array([-3.0, 0.0, 4.0, 100.0]), scalar, 10.0),
                                   [-1.5, 0.0, 2.0, 10.0], rtol=1e-5)


# ---- through the on-policy agents ----------------------------------------------------

ENV, N, T = "CartPole-v1", 4, 16
NORM = dict(hidden=(8,), rollout_length=T, anneal_lr=False, normalize_obs=True, normalize_reward=True)


def collected(name: str, core: str = "none"):
    """An agent with normalisation, its loop carry and one collected rollout."""
    env = registry.make_env(ENV, N)
    config = (ppo.Config(epochs=2, minibatches=2, core=core, core_size=8, **NORM) if name == "ppo"
              else a2c.Config(core=core, core_size=8, **NORM))
    algo = (ppo.make if name == "ppo" else a2c.make)(config, env.spec)
    train = make_train(algo, env, OnPolicyLoop(N, T, 4))
    carry = jax.jit(train.init)(jax.random.PRNGKey(0))
    rollout = collect(algo, env, carry.agent, carry.env_state, carry.obs, carry.key, T, EpisodeAccumulator.zeros(),
                      jnp.zeros((), jnp.int32), carry.core, carry.reset)[0]
    return config, algo, carry.agent, rollout


@pytest.mark.parametrize("name", ["ppo", "a2c"])
def test_update_folds_the_rollout_into_the_statistics(name):
    config, algo, state, rollout = collected(name)
    new, _ = jax.jit(algo.update)(state, rollout, jax.random.PRNGKey(1))
    obs = np.asarray(rollout.obs, np.float64).reshape(-1, 4)
    # prior: mean 0, var 1, count 1e-4; then the batch of T * N observations
    n, c = obs.shape[0], 1e-4
    mean = obs.mean(0) * n / (n + c)
    var = (1.0 * c + obs.var(0) * n + obs.mean(0) ** 2 * c * n / (n + c)) / (n + c)
    np.testing.assert_allclose(new.norm.obs.mean, mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new.norm.obs.var, var, rtol=1e-4, atol=1e-6)
    # the discounted returns of each env restart after its episode ends
    e, returns = np.zeros(N), []
    done = np.asarray(rollout.terminated | rollout.truncated)
    for t in range(T):
        e = config.gamma * e + np.asarray(rollout.reward[t])
        returns.append(e.copy())
        e = np.where(done[t], 0.0, e)
    np.testing.assert_allclose(new.norm.discounted, e, rtol=1e-5)
    returns = np.concatenate(returns)
    np.testing.assert_allclose(new.norm.returns.mean, returns.mean() * n / (n + c), rtol=1e-4)
    assert int(new.step) == 1


def test_learning_sees_normalised_inputs_and_acting_uses_the_state_statistics():
    config, algo, state, rollout = collected("ppo")
    # statistics from some other batch, so normalisation is not the identity
    stats = RunningStats.create((4,)).update(jnp.asarray(np.random.default_rng(3).normal(2.0, 0.1, (32, 4)),
                                                         jnp.float32))
    state = state.replace(norm=state.norm.replace(obs=stats))
    seen, _ = normalize_rollout(config, state.norm, rollout, state.hparams.gamma)
    expected = np.clip((np.asarray(rollout.obs) - np.asarray(stats.mean)) / np.sqrt(np.asarray(stats.var) + 1e-8),
                       -config.obs_clip, config.obs_clip)
    np.testing.assert_allclose(seen.obs, expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(seen.reward))) <= config.reward_clip
    # acting applies the same normalisation to the raw observation
    net = network(config, registry.make_env(ENV, N).spec)
    obs = rollout.obs[0]
    logits = net.apply(state.params, jnp.asarray(expected[0], jnp.float32), method=net.actor_outputs)
    np.testing.assert_array_equal(algo.act(state, obs), jnp.argmax(logits, -1))
    raw = net.apply(state.params, obs, method=net.actor_outputs)
    assert not np.allclose(raw, logits)  # the test can tell normalised from raw input


def test_recurrent_ppo_with_normalisation_updates():
    _, algo, state, rollout = collected("ppo", core="lstm")
    new, metrics = jax.jit(algo.update)(state, rollout, jax.random.PRNGKey(1))
    assert np.isfinite(float(metrics["loss"].mean()))
    assert not np.allclose(new.norm.obs.mean, state.norm.obs.mean)


def test_normalize_obs_refuses_image_frames():
    spec = EnvSpec("frames", (4, 84, 84), "uint8", Discrete(4), 2, 1000)
    with pytest.raises(ValueError, match="uint8 frames"):
        ppo.make(ppo.Config(normalize_obs=True), spec)
    ppo.make(ppo.Config(normalize_reward=True), spec)  # reward normalisation is fine on frames
