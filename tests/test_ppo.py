"""PPO / A2C pieces, networks, configs and the on-policy loop."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import a2c, ppo
from angle_jax.config import RunConfig, load_config
from angle_jax.networks.policies import policy_distribution
from angle_jax.training import build, on_policy
from angle_jax.core.axes import seed_axes

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def build_on_policy(cfg, env, eval_env=None):
    """The loop functions of an on-policy run config (the algorithm made once, as the Trainer does)."""
    return build.build_train(cfg, registry.algo_spec(cfg.algo), env, eval_env)[1]


class ClipLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_clipped_policy_loss_values_and_gradients_at_the_edges(self):
        eps = 0.2
        ratio = jnp.array([1.5, 0.5, 0.5, 1.5, 1.2, 0.8])
        adv = jnp.array([1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
        old = jnp.zeros(6)
        loss_fn = self.variant(lambda lp: ppo.ppo_policy_loss(lp, old, adv, eps))
        # per sample: -min(ρA, clip(ρ)A)
        want = np.array([-1.2, -0.5, 0.8, 1.5, -1.2, 0.8])
        np.testing.assert_allclose(loss_fn(jnp.log(ratio)), want.mean(), rtol=1e-5)
        grads = jax.grad(loss_fn)(jnp.log(ratio))
        # clipped samples (ratio beyond the edge in the advantage's direction) get no gradient
        np.testing.assert_allclose(np.asarray(grads)[[0, 2]], 0.0, atol=1e-7)
        # the others get -ρA/n
        np.testing.assert_allclose(np.asarray(grads)[[1, 3]], -np.array([0.5 * 1.0, 1.5 * -1.0]) / 6, rtol=1e-5)
        # one-sided: a ratio just inside the edge still moves
        inside = jax.grad(loss_fn)(jnp.log(ratio.at[4].set(1.19)))[4]
        assert abs(float(inside)) > 0.1

    def test_value_loss_with_and_without_clipping(self):
        v, old, ret = jnp.array([1.0]), jnp.array([0.0]), jnp.array([2.0])
        np.testing.assert_allclose(ppo.value_loss(v, old, ret), 0.5 * 1.0)
        # clipped prediction 0.2 is further from the return: the pessimistic max wins
        np.testing.assert_allclose(ppo.value_loss(v, old, ret, 0.2), 0.5 * (2.0 - 0.2) ** 2, rtol=1e-6)
        # moving away from the return: the unclipped error is larger
        np.testing.assert_allclose(ppo.value_loss(jnp.array([-1.0]), old, ret, 0.2), 0.5 * 9.0, rtol=1e-6)

    def test_kl_clip_fraction_entropy_and_normalisation(self):
        old = jnp.zeros(4)
        lp = jnp.log(jnp.array([1.0, 1.1, 1.3, 0.7]))
        np.testing.assert_allclose(ppo.clip_fraction(lp, old, 0.2), 0.5)
        ratio = np.array([1.0, 1.1, 1.3, 0.7])
        np.testing.assert_allclose(ppo.approx_kl(lp, old), np.mean(ratio - 1 - np.log(ratio)), rtol=1e-5)
        np.testing.assert_allclose(ppo.entropy_bonus(jnp.array([1.0, 3.0])), 2.0)
        a = ppo.normalize_advantages(jnp.array([1.0, 2.0, 3.0, 10.0]))
        np.testing.assert_allclose([a.mean(), a.std()], [0.0, 1.0], atol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 500, 4096, 1 << 21])
def test_permutations_are_permutations(size):
    from angle_jax.algos.minibatch import permutations

    perms = np.asarray(permutations(jax.random.PRNGKey(0), 3, size))
    assert perms.shape == (3, size) and perms.dtype == np.int32
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(size))
    assert size < 3 or len({tuple(p[:8]) for p in perms}) == 3


def test_permutations_are_uniform():
    from angle_jax.algos.minibatch import permutations

    perms = np.asarray(permutations(jax.random.PRNGKey(1), 48_000, 4))
    _, counts = np.unique(perms, axis=0, return_counts=True)
    assert len(counts) == 24 and np.all(np.abs(counts - 2000) < 250)  # ~5.6 standard deviations
    first = np.asarray(permutations(jax.random.PRNGKey(2), 20_000, 500))[:, 0]
    assert np.all(np.abs(np.bincount(first // 50, minlength=10) - 2000) < 250)


@pytest.mark.parametrize("discrete,act", [(True, "tanh"), (False, "relu"), (True, "swish")])
def test_actor_critic_with_cpu_kernels_matches_the_flax_layers(discrete, act):
    """`ActorCritic` applied through the CPU kernels' dense layers: same outputs, first- and
    second-order gradients as its flax submodules applied plainly."""
    from angle_jax.networks.policies import ActorCritic
    from angle_jax.xla_cpu import CPU

    net = ActorCritic(action_dim=2, discrete=discrete, activation=act)
    apply = CPU.bind(net.apply)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    obs = jax.random.normal(jax.random.PRNGKey(2), (6, 5, 4))

    def layers(params, obs):
        def f(m, x):
            return m.policy_outputs(m.actor_torso(x)), m.value_head(m.critic_torso(x))[..., 0]
        return net.apply(params, obs, method=f)

    def loss(apply):
        return lambda p, scale: sum(jnp.sum(jnp.sin(scale * leaf)) for leaf in jax.tree.leaves(apply(p, obs)))

    chex.assert_trees_all_close(apply(params, obs), layers(params, obs), atol=1e-6)
    chex.assert_trees_all_close(jax.grad(loss(apply))(params, 1.0), jax.grad(loss(layers))(params, 1.0),
                                atol=1e-5)

    def second(apply):  # d/d scale of |grad|^2: reverse over the hand-written backward pass
        return jax.grad(lambda s: sum(jnp.sum(g ** 2) for g in jax.tree.leaves(jax.grad(loss(apply))(params, s))))(1.0)

    np.testing.assert_allclose(second(apply), second(layers), rtol=1e-4)
    assert "custom_vjp_call" in str(jax.make_jaxpr(apply)(params, obs))


def test_a2c_loss_gradient_is_advantage_weighted():
    lp = jnp.array([-1.0, -2.0])
    adv = jnp.array([3.0, -1.0])
    v = jnp.array([0.0, 1.0])
    ret = jnp.array([1.0, 1.0])
    total, (p, vl, ent) = a2c.a2c_loss(lp, adv, v, ret, jnp.array([0.5, 0.5]), 0.5, 0.01)
    np.testing.assert_allclose(p, -(-3.0 + 2.0) / 2)
    np.testing.assert_allclose(vl, 0.5 * 0.5)
    np.testing.assert_allclose(total, p + 0.5 * vl - 0.01 * 0.5, rtol=1e-6)
    g = jax.grad(lambda x: a2c.a2c_loss(x, adv, v, ret, jnp.zeros(2), 0.5, 0.0)[0])(lp)
    np.testing.assert_allclose(g, -adv / 2)


# ---- networks and actions ---------------------------------------------------------

def test_continuous_policy_log_prob_matches_distrax_and_gaussian_formula():
    """Log-probs of (unclipped) samples match distrax.Normal per dimension and the closed form;
    `act` stays in [-1, 1] while samples may leave it, and the env copy is clipped."""
    env = registry.make_env("Pendulum-v1", 64)
    spec = env.spec
    algo = ppo.make(ppo.Config(log_std_init=0.3, rollout_length=4, minibatches=2), spec)
    net = ppo.network(algo.config, spec)

    @jax.jit
    def run(key):
        k_init, k_obs, k_act = jax.random.split(key, 3)
        state = algo.init(k_init)
        obs = jax.random.normal(k_obs, (64, *spec.obs_shape))
        mean, log_std = net.apply(state.params, obs, method=net.actor_outputs)
        action = algo.explore(state, obs, k_act)
        ours = policy_distribution((mean, log_std), False).log_prob(action)
        per_dim = distrax.Normal(mean, jnp.exp(log_std)).log_prob(action).sum(-1)
        greedy = algo.act(state, obs * 1e3)
        far = action * 10.0
        far_lp = policy_distribution((mean, log_std), False).log_prob(far)
        return mean, log_std, action, ours, per_dim, greedy, far, far_lp

    mean, log_std, action, ours, per_dim, greedy, far, far_lp = map(np.asarray, run(jax.random.PRNGKey(0)))
    np.testing.assert_allclose(log_std, 0.3)
    std = np.exp(0.3)

    def formula(a):
        return (-0.5 * ((a - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)

    np.testing.assert_allclose(ours, per_dim, rtol=1e-5)
    np.testing.assert_allclose(ours, formula(action), rtol=1e-4)
    np.testing.assert_allclose(far_lp, formula(far), rtol=1e-4)  # scored as sampled, not clipped
    assert action.shape == (64, 1) and np.max(np.abs(far)) > 1.0
    assert np.all(np.abs(greedy) <= 1.0)
    assert float(jnp.max(jnp.abs(on_policy.env_action_fn(env)(jnp.asarray(far))))) <= 1.0


def test_discrete_act_is_argmax_and_minatar_cnn_casts_uint8():
    spec = registry.make_env("Breakout-MinAtar", 2).spec
    assert spec.obs_dtype == "uint8" and len(spec.obs_shape) == 3
    algo = ppo.make(ppo.Config(torso="cnn", hidden=(32,), activation="relu", rollout_length=4, minibatches=2),
                    spec)
    net = ppo.network(algo.config, spec)
    obs = jax.random.bernoulli(jax.random.PRNGKey(1), 0.3, (2, *spec.obs_shape)).astype(jnp.uint8)

    @jax.jit
    def run(key, obs):
        state = algo.init(key)
        return state.params, *net.apply(state.params, obs), algo.act(state, obs)

    params, logits, values, greedy = run(jax.random.PRNGKey(0), obs)
    assert logits.shape == (2, spec.action_dim) and values.shape == (2,)
    np.testing.assert_array_equal(greedy, jnp.argmax(logits, -1))
    assert "Conv_0" in params["params"]["actor_torso"]["MinAtarTorso_0"]


# ---- configuration ------------------------------------------------------------------

@pytest.mark.parametrize("name,algo", [("ppo_cartpole", "ppo"), ("ppo_pendulum", "ppo"), ("ppo_minatar", "ppo"),
                                       ("a2c_cartpole", "a2c"), ("ppo_rnd_mountaincar", "ppo")])
def test_configs_parse(name, algo):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    module = registry.algo_spec(algo)
    assert cfg.algo == algo and isinstance(cfg.agent, module.Config)
    assert module.loop == "on_policy" and module.action_kind == "both"
    cfg.agent.validate(cfg.num_envs)
    if name == "ppo_rnd_mountaincar":
        assert cfg.modules == ("rnd",) and "rnd" in cfg.module_kwargs


def test_config_validation_messages():
    with pytest.raises(ValueError, match="minibatches"):
        ppo.Config(rollout_length=10, minibatches=3).validate(num_envs=4)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo.Config(clip_eps=0.0).validate()
    with pytest.raises(ValueError, match="gae_lambda"):
        ppo.Config(gae_lambda=1.5).validate()
    with pytest.raises(ValueError, match="activation"):
        a2c.Config(activation="nope").validate()
    env = registry.make_env("CartPole-v1", 4)
    bad = RunConfig(algo="ppo", env="CartPole-v1", num_envs=4, total_steps=10_000,
                    agent=ppo.Config(rollout_length=10, minibatches=3))
    with pytest.raises(ValueError, match="minibatches"):
        build_on_policy(bad, env)
    tiny = dataclasses.replace(bad, total_steps=8, agent=ppo.Config(rollout_length=8, minibatches=2))
    with pytest.raises(ValueError, match="total_steps"):
        build_on_policy(tiny, env)
    with pytest.raises(ValueError, match="unknown module 'curiosity'.*rnd"):
        build_on_policy(dataclasses.replace(bad, modules=("curiosity",), agent=ppo.Config()), env)


# ---- the loop -------------------------------------------------------------------------

def test_ppo_learns_cartpole_on_two_vmapped_seeds():
    """Two seeds in one vmapped, jitted program; both must clearly beat their untrained policy.

    About 61k env steps per seed. The run itself takes a few seconds; the bound below
    is loose because compile time depends on how busy the shared machine is.
    """
    start = time.time()
    num_envs = 4
    cfg = RunConfig(algo="ppo", env="CartPole-v1", num_envs=num_envs, total_steps=61_440,
                    agent=ppo.Config(rollout_length=128, epochs=4, minibatches=4, learning_rate=1e-3))
    train = build_on_policy(cfg, registry.make_env("CartPole-v1", num_envs), registry.make_env("CartPole-v1", 8))
    assert train.steps_per_iteration == 128 * num_envs
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    axes = seed_axes(jax.eval_shape(train.init, keys[0]))
    carry = jax.jit(jax.vmap(train.init, out_axes=axes))(keys)
    evaluate = jax.jit(jax.vmap(train.evaluate, in_axes=(axes.agent, 0)))
    before = np.asarray(evaluate(carry.agent, keys)).mean(axis=1)
    run = jax.jit(jax.vmap(lambda c: train.run(c, train.loop.num_iterations), in_axes=(axes,), out_axes=(axes, 0)))
    carry, logs = run(carry)
    after = np.asarray(evaluate(carry.agent, keys)).mean(axis=1)
    elapsed = time.time() - start
    assert carry.iteration.shape == () and int(carry.iteration) == train.loop.num_iterations
    assert carry.agent.step.shape == () and logs["episode_return_mean"].shape == (2,)
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "episodes",
              "episode_return_min", "episode_return_max", "episode_length_mean", "learning_rate"):
        assert k in logs and np.all(np.isfinite(logs[k])), k
    print(f"eval before {before} after {after}; train return {logs['episode_return_mean']}; {elapsed:.1f}s")
    assert np.all(after > 150.0) and np.all(after > 3 * before)
    assert np.all(np.asarray(logs["episode_return_mean"]) > 100.0)  # a random policy averages ~22
    assert elapsed < 180


def test_a2c_loop_runs_and_updates():
    cfg = RunConfig(algo="a2c", env="Pendulum-v1", num_envs=2, total_steps=100,
                    agent=a2c.Config(rollout_length=5, hidden=(8,)))
    train = build_on_policy(cfg, registry.make_env("Pendulum-v1", 2))
    carry = train.init(jax.random.PRNGKey(0))
    new, logs = jax.jit(train.run, static_argnums=1)(carry, 3)
    assert int(new.iteration) == 3 and int(new.agent.step) == 3
    assert all(np.isfinite(logs[k]) for k in ("policy_loss", "value_loss", "entropy"))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), carry.agent.params, new.agent.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_on_policy_loop_refuses_stateful_exploration():
    from angle_jax.core.types import Exploration

    env = registry.make_env("Pendulum-v1", 2)
    algo = a2c.make(a2c.Config(rollout_length=5, hidden=(8,)), env.spec)
    algo = algo._replace(exploration=Exploration(init=lambda key, spec: None, explore=None))
    with pytest.raises(ValueError, match="stateful exploration .* only in the off-policy loop"):
        on_policy.make_train(algo, env, on_policy.OnPolicyLoop(2, 5, 10))
