import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.envs.base import Box, Discrete


def rollout(env, steps, action_fn, seed=0):
    key = jax.random.PRNGKey(seed)
    obs, state = env.reset(key)
    step = jax.jit(env.step)
    out = []
    for t in range(steps):
        key, k = jax.random.split(key)
        state, ts = step(state, action_fn(t), k)
        out.append(jax.device_get(ts))
    return out


def test_pendulum_truncates_at_time_limit_and_keeps_final_obs():
    env = registry.make_env("Pendulum-v1", 2)
    assert env.spec.max_episode_steps == 200 and isinstance(env.spec.action_space, Box)
    steps = rollout(env, 201, lambda t: jnp.zeros((2, 1)))
    for t, ts in enumerate(steps):
        assert not ts.terminated.any()
        assert ts.truncated.all() == (t == 199)
    last = steps[199]
    # The stored next_obs is the true final state (unit circle), obs is the reset one.
    assert not np.allclose(last.next_obs, last.obs)
    np.testing.assert_allclose(np.linalg.norm(last.next_obs[:, :2], axis=1), 1.0, atol=1e-5)
    assert last.info["episode_done"].all()
    np.testing.assert_array_equal(last.info["episode_length"], [200, 200])
    np.testing.assert_allclose(last.info["episode_return"], sum(s.reward for s in steps[:200]), rtol=1e-5)
    # The next step continues from the reset observation.
    np.testing.assert_allclose(steps[200].info["episode_length"], [1, 1])


def test_cartpole_terminates_and_resets():
    env = registry.make_env("CartPole-v1", 4)
    assert env.spec.action_space == Discrete(2)
    steps = rollout(env, 60, lambda t: jnp.ones((4,), jnp.int32))
    terminated = np.stack([s.terminated for s in steps])
    assert terminated.any(axis=0).all()  # always pushing right falls over
    assert not np.stack([s.truncated for s in steps]).any()
    t, e = np.argwhere(terminated)[0]
    assert steps[t].info["episode_done"][e]
    assert steps[t + 1].info["episode_length"][e] == 1


def test_action_rescaling_reaches_box_bounds():
    env = registry.make_env("Pendulum-v1", 1)
    assert env.spec.action_space == Box.symmetric((1,))
    np.testing.assert_allclose(env.env.to_env_action(jnp.array([[-1.0], [0.0], [1.0], [3.0]])),
                               [[-2.0], [0.0], [2.0], [2.0]])


@pytest.mark.parametrize("name", ["MountainCarContinuous-v0", "Acrobot-v1", "Breakout-MinAtar", "MountainCar-v0"])
def test_gymnax_envs_available_by_name(name):
    env = registry.make_env(name, 3)
    obs, state = env.reset(jax.random.PRNGKey(0))
    assert obs.shape == (3, *env.spec.obs_shape)
    assert obs.dtype == jnp.dtype(env.spec.obs_dtype)
    if name.endswith("MinAtar"):
        assert obs.dtype == jnp.uint8
    action = jax.vmap(lambda k: jnp.zeros(env.spec.action_space.shape, env.spec.action_space.dtype))(
        jax.random.split(jax.random.PRNGKey(1), 3))
    state, ts = env.step(state, action, jax.random.PRNGKey(2))
    assert ts.reward.shape == (3,) and ts.terminated.dtype == jnp.bool_


def test_unknown_env_suggests_close_names():
    with pytest.raises(registry.UnknownNameError, match="did you mean 'Pendulum-v1'"):
        registry.make_env("Pendulm-v1", 1)
