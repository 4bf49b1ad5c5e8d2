"""Envs that need memory: the no-velocity variants (the full env with observation entries hidden)
and gymnax constructor arguments (DeepSea `size`, MemoryChain `num_bits`) set through env_kwargs."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.envs.base import random_actions
from angle_jax.envs.gymnax_adapter import GymnaxEnv
from angle_jax.envs.partial_obs import ObservationSubset
from angle_jax.training import build
from conftest import run_in_process

STEPS = 40


def rollout(env, actions, key):
    """`env` stepped with `actions[t]` under one jitted scan: the reset obs and the stacked TimeSteps."""
    k_reset, k_steps = jax.random.split(key)

    @jax.jit
    def run(actions, k_reset, k_steps):
        obs, state = env.reset(k_reset)

        def body(state, x):
            action, k = x
            state, ts = env.step(state, action, k)
            return state, ts

        _, steps = jax.lax.scan(body, state, (actions, jax.random.split(k_steps, actions.shape[0])))
        return obs, steps

    return jax.device_get(run(actions, k_reset, k_steps))


@pytest.mark.parametrize("name,full,keep,kwargs", [
    ("CartPoleNoVel-v1", "CartPole-v1", [0, 2], {}),  # random pushes: poles fall within 40 steps
    ("PendulumNoVel-v1", "Pendulum-v1", [0, 1], {"max_steps_in_episode": 15}),
    ("MountainCarNoVel-v0", "MountainCar-v0", [0], {"max_steps_in_episode": 15}),
])
def test_no_velocity_envs_show_the_full_envs_observations_at_the_kept_indices(name, full, keep, kwargs):
    env = registry.make_raw_env(name, 3, **kwargs)
    ref = registry.make_raw_env(full, 3, **kwargs)
    assert env.spec.name == name and env.spec.obs_shape == (len(keep),)
    assert env.spec.action_space == ref.spec.action_space
    assert env.spec.max_episode_steps == ref.spec.max_episode_steps
    actions = jax.vmap(lambda k: random_actions(ref.spec, k))(jax.random.split(jax.random.PRNGKey(1), STEPS))
    obs, steps = rollout(env, actions, jax.random.PRNGKey(7))
    ref_obs, ref_steps = rollout(ref, actions, jax.random.PRNGKey(7))
    assert obs.shape == (3, len(keep)) and steps.obs.shape == steps.next_obs.shape == (STEPS, 3, len(keep))
    np.testing.assert_allclose(obs, ref_obs[..., keep], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(steps.obs, ref_steps.obs[..., keep], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(steps.next_obs, ref_steps.next_obs[..., keep], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(steps.reward, ref_steps.reward, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(steps.terminated, ref_steps.terminated)
    np.testing.assert_array_equal(steps.truncated, ref_steps.truncated)
    assert (steps.terminated | steps.truncated).any()  # an episode ended: the reset obs is hidden too
    if kwargs:  # the inner env's parameters were set through the variant's env_kwargs
        assert env.spec.max_episode_steps == 15 and steps.truncated[14].all()


def test_observation_subset_keeps_entries_in_the_given_order_and_renders_the_full_state():
    inner = GymnaxEnv("CartPole-v1", 2)
    env = ObservationSubset(inner, (3, 0), "CartPoleSwapped-v1")
    assert env.spec.obs_shape == (2,) and env.spec.name == "CartPoleSwapped-v1" and env.keep == (3, 0)
    assert inner.spec.name == "CartPole-v1" and inner.spec.obs_shape == (4,)
    key = jax.random.PRNGKey(3)
    obs, state = env.reset(key)
    full, _ = inner.reset(key)
    np.testing.assert_array_equal(obs, np.asarray(full)[:, [3, 0]])
    np.testing.assert_array_equal(env.render(state, 1), inner.render(state, 1))


@pytest.mark.parametrize("keep,message", [
    ((), "at least one observation entry"),
    ((0, 4), "keep index 4 out of range for observations of size 4"),
    ((-1,), "keep index -1 out of range"),
    ((2, 0, 2), "keep lists index 2 more than once"),
    ((0, 1.0), "keep must be a sequence of integer indices"),
    ((True,), "keep must be a sequence of integer indices"),
    (1, "keep must be a sequence of integer indices"),
])
def test_observation_subset_refuses_a_bad_keep(keep, message):
    with pytest.raises(ValueError, match="^Bad-v0: .*" + re.escape(message)):
        ObservationSubset(GymnaxEnv("CartPole-v1", 1), keep, "Bad-v0")


def test_constructor_arguments_change_the_observation_shape():
    default = registry.make_env("DeepSea-bsuite", 2)
    small = registry.make_env("DeepSea-bsuite", 2, size=5)
    assert default.spec.obs_shape == (8, 8) and small.spec.obs_shape == (5, 5)
    assert small.spec.max_episode_steps == 5  # DeepSea's default params follow its size
    obs, _ = jax.jit(small.reset)(jax.random.PRNGKey(0))
    assert obs.shape == (2, 5, 5)
    bits = registry.make_env("MemoryChain-bsuite", 2, num_bits=3)
    assert bits.spec.obs_shape == (5,) and registry.make_env("MemoryChain-bsuite", 2).spec.obs_shape == (3,)
    assert registry.make_env("DeepSea-bsuite", 1, size=6.0).spec.obs_shape == (6, 6)  # YAML's 6.0: an int


def test_memory_length_sets_memory_chains_episode_length():
    """MemoryChain ends an episode after memory_length + 1 steps; its time limit stays max_steps_in_episode."""
    for memory_length in (5, 30):
        env = registry.make_raw_env("MemoryChain-bsuite", 2, num_bits=3, memory_length=memory_length)
        assert env.spec.obs_shape == (5,) and env.spec.max_episode_steps == 1000
        assert env.params.memory_length == memory_length
        _, steps = rollout(env, jnp.zeros((STEPS, 2), jnp.int32), jax.random.PRNGKey(0))
        assert steps.obs.shape == (STEPS, 2, 5)
        ends = np.flatnonzero(steps.terminated[:, 0])
        assert ends[0] == memory_length and steps.terminated[memory_length].all()
        assert not steps.terminated[:memory_length].any() and not steps.truncated.any()


def test_unknown_or_ill_typed_env_kwargs_name_both_kinds_of_valid_keys():
    with pytest.raises(ValueError, match=r"unknown env_kwargs key 'no_such' for DeepSea-bsuite \(valid: constructor "
                                         r"arguments: size, action_mapping_key; parameters: max_steps_in_episode, "):
        registry.make_raw_env("DeepSea-bsuite", 1, no_such=1)
    with pytest.raises(ValueError, match=r"'num_bit' for MemoryChain-bsuite; did you mean 'num_bits'\? \(valid: "
                                         r"constructor arguments: num_bits; parameters: .*memory_length"):
        registry.make_raw_env("MemoryChain-bsuite", 1, num_bit=3)
    with pytest.raises(ValueError, match="did you mean 'memory_length'"):
        registry.make_raw_env("MemoryChain-bsuite", 1, memory_lenght=3)
    with pytest.raises(ValueError, match=r"env_kwargs.size must be an integer \(like its default 8\), got 2.5"):
        registry.make_raw_env("DeepSea-bsuite", 1, size=2.5)
    with pytest.raises(ValueError, match="env_kwargs.num_bits must be a number"):
        registry.make_raw_env("MemoryChain-bsuite", 1, num_bits="three")
    with pytest.raises(ValueError, match="env_kwargs.use_minimal_action_set must be true or false"):
        registry.make_raw_env("Breakout-MinAtar", 1, use_minimal_action_set=0)
    with pytest.raises(ValueError, match="DeepSea-bsuite cannot be built with env_kwargs size=0: ZeroDivisionError"):
        registry.make_raw_env("DeepSea-bsuite", 1, size=0)
    with pytest.raises(ValueError, match="^CartPoleNoVel-v1: unknown env_kwargs key 'no_such' for CartPole-v1"):
        registry.make_raw_env("CartPoleNoVel-v1", 1, no_such=1)


def test_an_unknown_env_kwarg_on_the_command_line_stops_before_anything_is_built(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the algorithm and its programs were built")

    monkeypatch.setattr(build, "build_train", never)
    proc = run_in_process("train.py", "--algo", "dqn", "--env", "DeepSea-bsuite", "--set", "env_kwargs.no_such=1",
                          "--run-dir", str(tmp_path / "r"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "unknown env_kwargs key 'no_such' for DeepSea-bsuite" in lines[0]
    assert "constructor arguments: size" in lines[0]
    assert not (tmp_path / "r").exists()
