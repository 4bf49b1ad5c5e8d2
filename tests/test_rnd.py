"""RND pieces, the module protocol, and PPO + RND composed by configuration."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import ppo, rnd
from angle_jax.config import RunConfig
from angle_jax.core import running_stats, types
from angle_jax.training import build, on_policy


def build_on_policy(cfg, env, eval_env=None):
    """The loop functions of an on-policy run config (the algorithm made once, as the Trainer does)."""
    return build.build_train(cfg, registry.algo_spec(cfg.algo), env, eval_env)[1]


def test_discounted_filter_predictor_loss_and_obs_normalisation():
    rewards = jnp.array([[1.0], [2.0], [3.0]])
    last, e = running_stats.discounted_filter(rewards, jnp.array([10.0]), 0.5)
    np.testing.assert_allclose(e[:, 0], [6.0, 5.0, 5.5])
    np.testing.assert_allclose(last, [5.5])
    pred, target = jnp.array([[1.0, 1.0], [0.0, 0.0]]), jnp.zeros((2, 2))
    np.testing.assert_allclose(rnd.intrinsic_reward(pred, target), [1.0, 0.0])
    np.testing.assert_allclose(rnd.predictor_loss(pred, target, jnp.array([True, False])), 1.0)
    np.testing.assert_allclose(rnd.predictor_loss(pred, target, jnp.array([False, True])), 0.0)
    stats = running_stats.RunningStats(jnp.array([1.0]), jnp.array([4.0]), jnp.array(10.0))
    np.testing.assert_allclose(running_stats.normalize_obs(jnp.array([[3.0], [100.0]]), stats, 5.0), [[1.0], [5.0]],
                               rtol=1e-5)


def rollout_of(states: jax.Array, T: int, N: int) -> types.Rollout:
    """A rollout whose observations cycle through `states` ([K, D], K = T * N)."""
    obs = states.reshape(T, N, -1)
    zeros = jnp.zeros((T, N))
    return types.Rollout(obs, jnp.zeros((T, N), jnp.int32), zeros, zeros.astype(bool), zeros.astype(bool),
                           obs, zeros)


def test_intrinsic_reward_falls_on_repeatedly_visited_states():
    spec = registry.make_env("MountainCar-v0", 4).spec
    module = build.make_modules(("rnd",), {"rnd": {"epochs": 2, "minibatches": 2, "learning_rate": 3e-3}}, spec)[0]
    T, N = 8, 4
    visited = jnp.stack([jnp.linspace(-0.6, -0.4, T * N), jnp.linspace(-0.01, 0.01, T * N)], -1)
    novel = jnp.stack([jnp.linspace(0.3, 0.5, T * N), jnp.linspace(0.05, 0.07, T * N)], -1)
    seen, fresh = rollout_of(visited, T, N), rollout_of(novel, T, N)

    @jax.jit
    def visit(state, key):
        state, out = module.process(state, seen)
        state, metrics = module.update(state, seen, out, key)
        return state, out.metrics["intrinsic_reward_raw"], metrics

    @jax.jit
    def probe(state):
        return module.process(state, fresh)[1].metrics["intrinsic_reward_raw"]

    state = jax.jit(module.init)(jax.random.PRNGKey(0))
    rewards = []
    for k in jax.random.split(jax.random.PRNGKey(1), 40):
        state, r, metrics = visit(state, k)
        rewards.append(float(r))
    assert np.isfinite(float(metrics["predictor_loss"])) and np.isfinite(float(metrics["value_loss"]))
    first, last = np.mean(rewards[1:4]), np.mean(rewards[-3:])
    print(f"visited: {first:.4g} -> {last:.4g}; novel: {float(probe(state)):.4g}")
    assert last < 0.2 * first
    assert float(probe(state)) > 5 * last


def test_module_outputs_reach_the_rollout():
    r = rollout_of(jnp.zeros((6, 1)), 3, 2)
    outs = [types.ModuleOutput(reward=jnp.ones((3, 2)), advantage=None),
            types.ModuleOutput(reward=None, advantage=2 * jnp.ones((3, 2))),
            types.ModuleOutput(reward=jnp.ones((3, 2)), advantage=jnp.ones((3, 2)))]
    combined = on_policy.apply_outputs(r, outs)
    np.testing.assert_allclose(combined.reward, 2.0)
    np.testing.assert_allclose(combined.advantage_bonus, 3.0)


def test_unknown_modules_and_settings_are_rejected():
    spec = registry.make_env("CartPole-v1", 2).spec
    with pytest.raises(ValueError, match=r"unknown module 'rdn' \(valid: rnd\)"):
        build.make_modules(("rdn",), {}, spec)
    with pytest.raises(ValueError, match="unknown setting.*int_coeff"):
        build.make_modules(("rnd",), {"rnd": {"int_coeff": 1.0}}, spec)
    with pytest.raises(ValueError, match="not in modules"):
        build.make_modules((), {"rnd": {}}, spec)
    with pytest.raises(ValueError, match="update_proportion"):
        build.make_modules(("rnd",), {"rnd": {"update_proportion": 2.0}}, spec)


def test_ppo_and_rnd_compose_by_configuration():
    """RunConfig.modules = ("rnd",): both learners train, both losses are logged,
    and neither module's code refers to the other."""
    cfg = RunConfig(algo="ppo", env="CartPole-v1", num_envs=2, total_steps=64, modules=("rnd",),
                    module_kwargs={"rnd": {"hidden": (16,), "critic_hidden": (16,), "embed_dim": 8,
                                           "epochs": 1, "minibatches": 2}},
                    agent=ppo.Config(rollout_length=8, epochs=1, minibatches=2, hidden=(16,)))
    train = build_on_policy(cfg, registry.make_env("CartPole-v1", 2))
    carry = train.init(jax.random.PRNGKey(0))
    assert len(carry.modules) == 1 and isinstance(carry.modules[0], rnd.RNDState)
    new, logs = jax.jit(train.run, static_argnums=1)(carry, 2)
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
              "rnd/predictor_loss", "rnd/value_loss", "rnd/intrinsic_reward", "episodes"):
        assert k in logs and np.isfinite(float(logs[k])), k

    def changed(a, b):
        return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert changed(carry.agent.params, new.agent.params) > 0
    assert changed(carry.modules[0].params["predictor"], new.modules[0].params["predictor"]) > 0
    assert changed(carry.modules[0].target_params, new.modules[0].target_params) == 0
    assert float(new.modules[0].obs_stats.count) > 1
    import inspect
    assert "rnd" not in inspect.getsource(ppo).lower()
    assert "ppo" not in inspect.getsource(rnd).lower()


def test_orthogonal_init_matches_flax_and_never_batches_its_qr():
    """Same bits as flax's orthogonal initialiser, with and without (nested) vmap; under vmap
    every QR is of one matrix (a batched LAPACK QR can deadlock XLA:CPU's thread pool)."""
    import flax.linen as nn

    from angle_jax.networks.initializers import orthogonal

    ours, ref = orthogonal(2.0), nn.initializers.orthogonal(2.0)
    keys = jax.random.split(jax.random.PRNGKey(3), 6).reshape(2, 3, 2)
    for shape in [(5, 7), (7, 5), (2, 3, 4)]:
        batched = lambda init: jax.vmap(jax.vmap(lambda k: init(k, shape, jnp.float32)))(keys)  # noqa: E731
        np.testing.assert_array_equal(batched(ours), batched(ref))
        np.testing.assert_array_equal(ours(keys[0, 0], shape), ref(keys[0, 0], shape))
    hlo = jax.jit(jax.vmap(lambda k: ours(k, (8, 8)))).lower(keys[0]).compile().as_text()
    qr_calls = [line for line in hlo.splitlines() if 'custom_call_target="lapack_' in line]
    assert all("num_batch_dims" not in line or 'num_batch_dims="0"' in line for line in qr_calls), qr_calls


def test_two_vmapped_ppo_rnd_seeds_on_one_device_initialise_and_train():
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    config = load_config(CONFIG_DIR / "ppo_rnd_mountaincar.yaml",
                         ["tensorboard=false", "progress=false", "num_envs=4", "log_interval=64",
                          "agent.rollout_length=16", "agent.hidden=[16]", "module_kwargs.rnd.hidden=[16]",
                          "module_kwargs.rnd.critic_hidden=[16]", "module_kwargs.rnd.embed_dim=8"],
                         seeds=2, total_steps=128)
    trainer = Trainer(config, devices=jax.devices()[:1])
    assert trainer.runs == 2 and trainer.mesh is None
    logs = list(trainer())
    assert len(logs) == 2
    for name in ("policy_loss", "value_loss", "rnd/predictor_loss", "rnd/value_loss", "rnd/intrinsic_reward"):
        values = logs[-1]["per_seed"][name]
        assert len(values) == 2 and np.all(np.isfinite(values)), (name, values)
    assert logs[-1]["per_seed"]["rnd/predictor_loss"][0] != logs[-1]["per_seed"]["rnd/predictor_loss"][1]
