"""Meta-gradients, auxiliary models and the meta config: correctness on small problems."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from angle_jax import registry
from angle_jax.algos import ddpg, ppo, sac, td3
from angle_jax.core.types import Algorithm, Transition
from angle_jax.config import CONFIG_DIR, RunConfig, load_config
from angle_jax.config import build_section
from angle_jax.core.optim import set_hparams
from angle_jax.meta import (MetaConfig, forecast, inner_objective, make_auxiliary, make_meta_gradient, meta_gradient,
                            risk, split_batch)
from angle_jax.training import build
from angle_jax.training.build import build_parts
from angle_jax.core.axes import seed_axes
from angle_jax.training import on_policy
from angle_jax.training.off_policy import OffPolicyLoop, make_train
from angle_jax.training.reporting import EpisodeAccumulator
from conftest import run_in_process, xla_defaults

# its module-scoped fixtures are built once: all its tests run on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("meta")


def build_meta_learner(run_config, algo, spec):
    """The meta learner of a run config whose `meta` is given as a mapping, built as the Trainer
    builds it (the mapping through the config's coercion, then `training.build.build_meta`)."""
    meta = run_config.meta if isinstance(run_config.meta, MetaConfig) else build_section(
        MetaConfig, dict(run_config.meta), "meta.")
    config = dataclasses.replace(run_config, meta=meta)
    return build.build_meta(config, algo, registry.algo_spec(config.algo), spec)


# ---- a tiny linear TD "algorithm" whose update reads traced hparams ------------------------------

@struct.dataclass
class TinyState:
    w: jax.Array
    w_target: jax.Array
    hparams: dict


def tiny_algo(gamma: float = 0.9, lr: float = 0.1) -> Algorithm:
    """Linear TD(0) with a target vector: w <- w - lr * ∇ mean((x·w - r - γ x'·w_target)²)."""

    def init(key, spec=None):
        w = 0.1 * jax.random.normal(key, (3,))
        return TinyState(w, w + 0.05, {"gamma": jnp.asarray(gamma), "lr": jnp.asarray(lr),
                                       "unused": jnp.asarray(1.5)})

    def update(state, batch, key):
        hp = state.hparams
        # Built outside the differentiated closure: constant w.r.t. w, differentiable in γ.
        target = batch.reward + hp["gamma"] * batch.next_obs @ state.w_target
        grad = jax.grad(lambda w: jnp.mean(jnp.square(batch.obs @ w - target)))(state.w)
        return state.replace(w=state.w - hp["lr"] * grad), {}

    return Algorithm(init=init, update=update, act=None, explore=None, config=None)


def tiny_objective(state, batch, key, gamma_ref=0.9):
    """TD error of the updated w with a fixed reference γ' and the (unchanged) target vector."""
    target = batch.reward + gamma_ref * batch.next_obs @ state.w_target
    return jnp.mean(jnp.square(batch.obs @ state.w - target))


def tiny_batch(key, n=16, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    obs = jax.random.normal(k1, (n, 3), dtype)
    return Transition(obs, jnp.zeros((n, 1), dtype), jax.random.normal(k3, (n,), dtype),
                      jnp.zeros((n,), jnp.bool_), jnp.zeros((n,), jnp.bool_), jax.random.normal(k2, (n, 3), dtype))


def central_differences(f, eta, h):
    out = {}
    for name in eta:
        plus = dict(eta, **{name: eta[name] + h[name]})
        minus = dict(eta, **{name: eta[name] - h[name]})
        out[name] = (f(plus) - f(minus)) / (2 * h[name])
    return out


def test_meta_gradient_matches_finite_differences_tiny():
    with jax.enable_x64(True):
        algo = tiny_algo()
        state = algo.init(jax.random.PRNGKey(0))
        state = jax.tree.map(lambda x: x.astype(jnp.float64), state)
        train, val = split_batch(tiny_batch(jax.random.PRNGKey(1), 32, jnp.float64))
        key = jax.random.PRNGKey(2)
        eta = {"gamma": jnp.float64(0.9), "lr": jnp.float64(0.1)}
        value, grads = meta_gradient(algo.update, tiny_objective, state, eta, train, val, key)
        f = jax.jit(lambda e: inner_objective(algo.update, tiny_objective, state, e, train, val, key))
        fd = central_differences(f, eta, {"gamma": 1e-5, "lr": 1e-5})
        assert np.isfinite(float(value))
        for name in eta:
            assert abs(float(grads[name])) > 1e-6
            np.testing.assert_allclose(float(grads[name]), float(fd[name]), rtol=1e-6, atol=1e-10)


def test_meta_learner_steps_against_the_gradient_and_touches_only_chosen_hparams():
    algo = tiny_algo()
    state = algo.init(jax.random.PRNGKey(0))
    batch = tiny_batch(jax.random.PRNGKey(1), 32)
    bounds = {"gamma": (0.5, 0.99), "lr": (0.01, 0.5)}
    learner = make_meta_gradient(algo, tiny_objective, params=("gamma", "lr"), meta_lr=1e-2, bounds=bounds)
    meta_state = learner.init(jax.random.PRNGKey(3), state, None)
    key = jax.random.PRNGKey(4)
    train, val = split_batch(batch)
    eta = {"gamma": state.hparams["gamma"], "lr": state.hparams["lr"]}
    _, grads = meta_gradient(algo.update, tiny_objective, state, eta, train, val, key)
    new_meta, new_state, metrics = jax.jit(learner.update)(meta_state, state, batch, key)
    for name in ("gamma", "lr"):
        moved = float(new_state.hparams[name] - state.hparams[name])
        assert np.sign(moved) == -np.sign(float(grads[name])), name
        np.testing.assert_allclose(float(metrics[f"meta/{name}"]), float(new_state.hparams[name]))
    assert float(new_state.hparams["unused"]) == 1.5
    np.testing.assert_array_equal(np.asarray(new_state.w), np.asarray(state.w))
    np.testing.assert_array_equal(np.asarray(new_state.w_target), np.asarray(state.w_target))
    assert int(new_meta.count) == 1
    assert {"meta/objective", "meta/grad_norm"} <= set(metrics)


def test_eta_stays_in_bounds_with_huge_meta_lr():
    algo = tiny_algo()
    state = algo.init(jax.random.PRNGKey(0))
    bounds = {"gamma": (0.85, 0.95), "lr": (0.05, 0.2)}
    learner = make_meta_gradient(algo, tiny_objective, params=("gamma", "lr"), meta_lr=1e6, bounds=bounds)

    def body(c, k):
        meta_state, agent = c
        k_b, k_u = jax.random.split(k)
        meta_state, agent, metrics = learner.update(meta_state, agent, tiny_batch(k_b), k_u)
        agent, _ = algo.update(agent, tiny_batch(k_b), k_u)
        return (meta_state, agent), (agent.hparams["gamma"], agent.hparams["lr"], metrics["meta/grad_norm"])

    init = (learner.init(jax.random.PRNGKey(1), state, None), state)
    _, (gammas, lrs, norms) = jax.jit(lambda c: jax.lax.scan(body, c, jax.random.split(jax.random.PRNGKey(2), 50)))(init)
    for values, (low, high) in ((gammas, bounds["gamma"]), (lrs, bounds["lr"])):
        values = np.asarray(values)
        assert np.all(np.isfinite(values))
        assert np.all(values >= np.float32(low)) and np.all(values <= np.float32(high))
    assert np.all(np.isfinite(np.asarray(norms)))


# ---- TD3, SAC and DDPG: meta-gradients against finite differences --------------------------------

def pendulum_transitions(key, n):
    """Random Pendulum-shaped transitions (obs [n, 3], action in [-1, 1]), some terminal."""
    k = jax.random.split(key, 5)
    return Transition(
        obs=jax.random.normal(k[0], (n, 3)), action=jax.random.uniform(k[1], (n, 1), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (n,)), terminated=jax.random.bernoulli(k[3], 0.2, (n,)),
        truncated=jnp.zeros((n,), jnp.bool_), next_obs=jax.random.normal(k[4], (n, 3)))


def assert_meta_gradient_matches_finite_differences(algo, objective, frozen, names=("critic_lr", "gamma"),
                                                    rel=1e-2):
    """The meta-gradient w.r.t. `names` against central differences of relative step `rel` (float32).

    The meta-gradient is a semi-gradient (the objective's bootstrap target is held fixed), so the
    differences score `frozen(base, new)`: the perturbed update `new` with the target networks of
    the unperturbed update `base`. A few updates come first, so Adam's moments are not trivial.
    Returns the agent's step count after the inner update.
    """
    env = registry.make_env("Pendulum-v1", 1)
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    batch = pendulum_transitions(k[0], 32)
    train, val = split_batch(batch)
    key = jax.random.PRNGKey(7)
    k_update, k_val = jax.random.split(key)

    @jax.jit
    def problem(init_key):
        state = algo.init(init_key, env.spec)
        state, _ = jax.lax.scan(lambda st, kk: (algo.update(st, batch, kk)[0], None), state,
                                jax.random.split(jax.random.PRNGKey(10), 3))
        eta = {n: getattr(state.hparams, n) for n in names}
        value, grads = meta_gradient(algo.update, objective, state, eta, train, val, key)
        base, _ = algo.update(state, train, k_update)

        def perturbed(e):
            new, _ = algo.update(set_hparams(state, e), train, k_update)
            return objective(frozen(base, new), val, k_val)

        points = [dict(eta, **{n: eta[n] * (1.0 + sign * rel)}) for n in names for sign in (1.0, -1.0)]
        values = jax.vmap(perturbed)(jax.tree.map(lambda *x: jnp.stack(x), *points))
        return value, grads, values, eta, base.step

    value, grads, values, eta, step = problem(k[5])
    assert np.isfinite(float(value))
    for i, n in enumerate(names):
        fd = (values[2 * i] - values[2 * i + 1]) / (2 * rel * float(eta[n]))
        assert abs(float(grads[n])) > 0, n
        np.testing.assert_allclose(float(grads[n]), float(fd), rtol=5e-2, err_msg=n)
    return step


def test_td3_meta_gradient_matches_finite_differences():
    """TD3's meta-gradient w.r.t. critic_lr and γ; γ reaches the update through the TD target,
    which `bellman_target` leaves differentiable."""
    env = registry.make_env("Pendulum-v1", 1)
    # a large critic step size so that γ's effect on the objective stands well above float32 noise
    cfg = td3.Config(actor_hidden=(8,), critic_hidden=(8,), policy_delay=2, critic_lr=3e-2)
    algo = td3.make(cfg, env.spec)
    step = assert_meta_gradient_matches_finite_differences(
        algo, algo.validation().objective,
        lambda base, new: new.replace(actor_target=base.actor_target, critic_target=base.critic_target))
    assert int(step) % cfg.policy_delay == 0  # the inner update includes an actor step


def _vmapped(train, num_seeds, num_iters):
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    axes = seed_axes(jax.eval_shape(train.init, keys[0]))
    init = jax.jit(jax.vmap(train.init, out_axes=axes))
    run = jax.jit(jax.vmap(lambda c: train.run(c, num_iters), in_axes=(axes,), out_axes=(axes, 0)))
    return run(init(keys))


@pytest.fixture(scope="module")
def td3_meta_run():
    """TD3 on Pendulum with meta-gradients (huge meta_lr) and both auxiliary models, 2 seeds by vmap."""
    env = registry.make_env("Pendulum-v1", 1)
    cfg = td3.Config(actor_hidden=(16,), critic_hidden=(16,))
    algo = td3.make(cfg, env.spec)
    bounds = {"gamma": [0.95, 0.995], "critic_lr": [1e-4, 1e-3]}
    rc = RunConfig(algo="td3", agent=cfg, auxiliary=("forecast", "risk"),
                   meta={"kind": "meta_gradient", "interval": 7, "params": ["gamma", "critic_lr"], "meta_lr": 1e3,
                         "bounds": bounds, "auxiliary": {"hidden": [16], "risk_reward_below": -4.0}})
    loop = OffPolicyLoop(num_envs=1, capacity_per_env=2000, batch_size=32, learning_starts_iters=100,
                         train_frequency=1, gradient_steps=1)
    train = make_train(algo, env, loop, meta=build_meta_learner(rc, algo, env.spec))
    carry, logs = _vmapped(train, num_seeds=2, num_iters=300)
    return carry, logs, bounds


def test_meta_interval_is_honoured_in_the_compiled_loop(td3_meta_run):
    carry, _, _ = td3_meta_run
    expected = len(range(0, 300 - 100, 7))  # learning iterations 0..199, a meta step every 7th
    np.testing.assert_array_equal(np.asarray(carry.meta.gradient.count), [expected, expected])
    np.testing.assert_array_equal(np.asarray(carry.meta.aux.count), [expected, expected])
    assert int(carry.iteration) == 300


def test_meta_loop_under_vmap_keeps_eta_in_bounds(td3_meta_run):
    carry, logs, bounds = td3_meta_run
    for name, (low, high) in bounds.items():
        values = np.asarray(getattr(carry.agent.hparams, name))
        assert values.shape == (2,)
        assert np.all(values >= np.float32(low)) and np.all(values <= np.float32(high)), (name, values)
        np.testing.assert_allclose(np.asarray(logs[f"meta/{name}"]).shape, (2,))
    # untouched hparams keep their configured values
    np.testing.assert_allclose(np.asarray(carry.agent.hparams.tau), [0.005, 0.005])
    for key in ("meta/objective", "meta/grad_norm", "aux/forecast_loss", "aux/risk_brier", "critic_loss"):
        assert np.all(np.isfinite(np.asarray(logs[key]))), key
    # seeds are independent runs
    assert not np.allclose(np.asarray(carry.agent.critic_params["params"]["VmapMLP_0"]["Dense_0"]["kernel"][0]),
                           np.asarray(carry.agent.critic_params["params"]["VmapMLP_0"]["Dense_0"]["kernel"][1]))
    # the prediction functions work on one seed's state
    aux = jax.tree.map(lambda x: x[0], carry.meta.aux)
    obs = jnp.zeros((5, 3))
    next_obs, reward = forecast(aux, obs, jnp.zeros((5, 1)))
    assert next_obs.shape == (5, 3) and reward.shape == (5,)
    p = risk(aux, obs, jnp.zeros((5, 1)))
    assert p.shape == (5,) and np.all((np.asarray(p) >= 0) & (np.asarray(p) <= 1))


# ---- auxiliary models ----------------------------------------------------------------------------

def test_auxiliary_losses_fall_on_pendulum_with_fixed_actions():
    env = registry.make_env("Pendulum-v1", 8)
    actions = jnp.linspace(-1.0, 1.0, 8)[:, None]

    def collect(key):
        obs, env_state = env.reset(key)

        def body(c, k):
            env_state, obs = c
            env_state, ts = env.step(env_state, actions, k)
            return (env_state, ts.obs), Transition(obs, actions, ts.reward, ts.terminated, ts.truncated, ts.next_obs)

        _, data = jax.lax.scan(body, (env_state, obs), jax.random.split(key, 200))
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), data)

    data = jax.jit(collect)(jax.random.PRNGKey(0))
    n = data.reward.shape[0]
    threshold = float(np.median(np.asarray(data.reward)))
    learner = make_auxiliary(env.spec, ("forecast", "risk"), hidden=(64, 64), learning_rate=3e-3,
                             risk_reward_below=threshold)

    def train(key):
        state = learner.init(key, None, env.spec)

        def body(state, k):
            idx = jax.random.randint(k, (128,), 0, n)
            state, _, metrics = learner.update(state, None, jax.tree.map(lambda x: x[idx], data), k)
            return state, metrics

        return jax.lax.scan(body, state, jax.random.split(key, 600))

    state, metrics = jax.jit(train)(jax.random.PRNGKey(1))
    first = {k: float(np.mean(v[:20])) for k, v in metrics.items()}
    last = {k: float(np.mean(v[-20:])) for k, v in metrics.items()}
    assert last["aux/forecast_loss"] < 0.2 * first["aux/forecast_loss"], (first, last)
    assert last["aux/risk_bce"] < 0.7 * first["aux/risk_bce"], (first, last)
    assert last["aux/risk_brier"] < first["aux/risk_brier"]
    assert last["aux/risk_auc"] > 0.85
    assert int(state.count) == 600


# ---- configuration errors ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def td3_setup():
    env = registry.make_env("Pendulum-v1", 1)
    cfg = td3.Config(actor_hidden=(8,), critic_hidden=(8,))
    return cfg, td3.make(cfg, env.spec), env.spec


GOOD_META = {"kind": "meta_gradient", "interval": 10, "params": ["gamma", "critic_lr"], "meta_lr": 1e-3,
             "bounds": {"gamma": [0.9, 0.999]}}


@pytest.mark.parametrize("meta, auxiliary, message", [
    ({**GOOD_META, "kind": "evolution"}, (), "unknown meta.kind 'evolution'"),
    ({**GOOD_META, "params": ["gama"]}, (), "unknown meta.params entry 'gama'.*actor_lr, critic_lr, gamma"),
    ({**GOOD_META, "bounds": {"gamma": [0.995, 0.999]}}, (), "does not contain the initial value 0.99"),
    ({**GOOD_META, "bounds": {"gamma": [0.99, 0.999]}}, (), "does not contain the initial value 0.99"),
    ({**GOOD_META, "bounds": {"gamma": [0.999, 0.9]}}, (), "low < high"),
    ({**GOOD_META, "bounds": {"tau": [0.001, 0.01]}}, (), "not in meta.params"),
    ({**GOOD_META, "interval": 0}, (), "meta.interval must be a positive integer"),
    ({**GOOD_META, "interval": -3}, (), "meta.interval must be a positive integer"),
    ({**GOOD_META, "meta_lr": 0.0}, (), "meta.meta_lr must be positive"),
    ({**GOOD_META, "metalr": 1.0}, (), "unknown config key 'meta.metalr'"),
    ({}, ("forecast", "risky"), "unknown auxiliary model 'risky'"),
    ({"interval": 0}, ("forecast",), "meta.interval must be a positive integer"),
    ({"interval": 5}, (), "meta sets only an interval"),
    ({"auxiliary": {"hidden": [32]}}, (), "no auxiliary models are listed"),
])
def test_bad_meta_configs_raise_clear_errors(td3_setup, meta, auxiliary, message):
    cfg, algo, spec = td3_setup
    with pytest.raises(ValueError, match=message):
        build_meta_learner(RunConfig(algo="td3", agent=cfg, meta=meta, auxiliary=auxiliary), algo, spec)


def test_meta_on_an_algorithm_without_validation_objective_raises(td3_setup):
    cfg, algo, spec = td3_setup
    with pytest.raises(ValueError, match=r"algorithm 'a2c' has none \(available for: ddpg, ppo, sac, td3\)"):
        build_meta_learner(RunConfig(algo="a2c", meta=GOOD_META), algo, spec)


def test_objective_options_of_another_algorithm_raise(td3_setup):
    cfg, algo, spec = td3_setup
    with pytest.raises(ValueError, match=r"meta.reference_lambda does not apply to td3 "
                                         r"\(its objective options: reference_gamma, actor_weight\)"):
        build_meta_learner(RunConfig(algo="td3", agent=cfg, meta={**GOOD_META, "reference_lambda": 0.9}), algo, spec)


def test_good_configs_build(td3_setup):
    cfg, algo, spec = td3_setup
    assert build_meta_learner(RunConfig(algo="td3", agent=cfg), algo, spec) is None
    aux_only = build_meta_learner(RunConfig(algo="td3", agent=cfg, auxiliary=("risk",)), algo, spec)
    assert aux_only.interval == 10
    both = build_meta_learner(RunConfig(algo="td3", agent=cfg, meta=GOOD_META, auxiliary=("forecast",)), algo, spec)
    assert both.interval == 10
    state = jax.eval_shape(lambda k: algo.init(k, spec), jax.random.PRNGKey(0))
    meta_state = jax.eval_shape(lambda k, s: both.init(k, s, spec), jax.random.PRNGKey(1), state)
    assert meta_state.aux.risk is None and meta_state.aux.forecast is not None
    assert set(meta_state.gradient.raw) == {"gamma", "critic_lr"}
    replaced = dataclasses.replace(cfg, gamma=0.95)
    with pytest.raises(ValueError, match="initial value 0.95"):
        build_meta_learner(RunConfig(algo="td3", agent=replaced, meta={**GOOD_META, "bounds": {"gamma": [0.96, 0.99]}}),
                           td3.make(replaced, spec), spec)


# ---- SAC and DDPG --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sac", "ddpg"])
def test_sac_ddpg_meta_gradients_match_finite_differences(name):
    """critic_lr and γ meta-gradients of SAC and DDPG (shared TD objective) against central
    differences in float32. As for TD3, the objective's target is held fixed, so the finite
    differences move only the critic parameters the perturbed update produced."""
    module = {"sac": sac, "ddpg": ddpg}[name]
    env = registry.make_env("Pendulum-v1", 1)
    cfg = module.Config(actor_hidden=(8,), critic_hidden=(8,), critic_lr=3e-2)
    algo = module.make(cfg, env.spec)
    assert_meta_gradient_matches_finite_differences(
        algo, algo.validation().objective,
        lambda base, new: base.replace(critic_params=new.critic_params))


@pytest.mark.parametrize("name", ["sac", "ddpg"])
def test_sac_ddpg_meta_learners_build_and_step(name):
    module = {"sac": sac, "ddpg": ddpg}[name]
    env = registry.make_env("Pendulum-v1", 1)
    cfg = module.Config(actor_hidden=(8,), critic_hidden=(8,))
    algo = module.make(cfg, env.spec)
    rc = RunConfig(algo=name, agent=cfg, meta={"kind": "meta_gradient", "params": ["gamma", "critic_lr"],
                                               "actor_weight": 0.5, "meta_lr": 1e-2})
    learner = build_meta_learner(rc, algo, env.spec)
    batch = pendulum_transitions(jax.random.PRNGKey(3), 16)

    @jax.jit
    def step(key):
        # a few updates first: from fresh Adam moments the inner step is sign(g), flat in η
        state = algo.init(key, env.spec)
        state, _ = jax.lax.scan(lambda st, kk: (algo.update(st, batch, kk)[0], None), state,
                                jax.random.split(jax.random.PRNGKey(10), 3))
        return state, learner.update(learner.init(key, state, env.spec), state, batch, jax.random.PRNGKey(2))

    state, (meta_state, new_state, metrics) = step(jax.random.PRNGKey(0))
    assert int(meta_state.gradient.count) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(new_state.hparams.gamma) != float(state.hparams.gamma)


# ---- PPO: γ and λ --------------------------------------------------------------------------------

def tiny_ppo(num_envs=2, rollout_length=8, **overrides):
    env = registry.make_env("CartPole-v1", num_envs)
    cfg = ppo.Config(**{**dict(rollout_length=rollout_length, epochs=2, minibatches=2, hidden=(8,),
                                anneal_lr=False, learning_rate=1e-2), **overrides})
    return env, cfg, ppo.make(cfg, env.spec)


def ppo_rollout(env, algo, state, length, key):
    obs, env_state = env.reset(key)
    rollout, *_ = on_policy.collect(algo, env, state, env_state, obs, jax.random.fold_in(key, 1), length,
                                    EpisodeAccumulator.zeros(), jnp.int32(0))
    return rollout


def as_float64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def test_ppo_advantages_are_differentiable_in_gamma_and_lambda():
    """`score_rollout` holds the network outputs constant but not γ, λ: without that the
    meta-gradient through PPO's update would be exactly zero."""
    env, cfg, algo = tiny_ppo()
    state = algo.init(jax.random.PRNGKey(0), env.spec)
    rollout = jax.jit(lambda s: ppo_rollout(env, algo, s, 8, jax.random.PRNGKey(1)))(state)
    net = ppo.network(cfg, env.spec)

    def total(gamma, lam):
        return jnp.sum(ppo.score_rollout(net, env.spec, state.params, rollout, gamma, lam).advantage)

    dg, dl = jax.grad(total, argnums=(0, 1))(jnp.float32(0.99), jnp.float32(0.95))
    assert abs(float(dg)) > 1e-3 and abs(float(dl)) > 1e-3
    batch = ppo.score_rollout(net, env.spec, state.params, rollout, jnp.float32(0.99), jnp.float32(0.95))
    assert batch.advantage.shape == (16,) and batch.obs.shape == (16, 4)


@pytest.mark.parametrize("policy_loss", ["clipped", "pg"])
def test_ppo_meta_gradient_matches_finite_differences(policy_loss):
    """∂J/∂(γ, λ) through one whole PPO update (2 epochs x 2 minibatches, Adam, gradient
    clipping) against central differences of the same deterministic function, in float64."""
    env, cfg, algo = tiny_ppo()
    state = algo.init(jax.random.PRNGKey(0), env.spec)
    rollout = jax.jit(lambda s: ppo_rollout(env, algo, s, 16, jax.random.PRNGKey(1)))(state)
    # two real updates first, so that Adam's moments are not trivial
    for i in range(2):
        state, _ = jax.jit(algo.update)(state, rollout, jax.random.PRNGKey(10 + i))
    validation = algo.validation(policy_loss=policy_loss)
    h = 1e-5
    with jax.enable_x64(True):
        state64, rollout64 = as_float64(state), as_float64(rollout)
        key = jax.random.PRNGKey(3)

        @jax.jit
        def problem(eta):
            train, val = split_batch(rollout64)
            val = validation.prepare(state64, val)
            value, grads = meta_gradient(algo.update, validation.objective, state64, eta, train, val, key)

            def f(e):
                return inner_objective(algo.update, validation.objective, state64, e, train, val, key)

            points = [dict(eta, **{n: eta[n] + sign * h}) for n in names for sign in (1.0, -1.0)]
            values = jax.vmap(f)(jax.tree.map(lambda *x: jnp.stack(x), *points))
            return value, grads, values

        names = ("gamma", "gae_lambda")
        value, grads, values = problem({"gamma": jnp.float64(0.99), "gae_lambda": jnp.float64(0.95)})
    assert value.dtype == jnp.float64 and np.isfinite(float(value))
    for i, n in enumerate(names):
        fd = (float(values[2 * i]) - float(values[2 * i + 1])) / (2 * h)
        assert abs(float(grads[n])) > 1e-4, n
        np.testing.assert_allclose(float(grads[n]), fd, rtol=1e-6, err_msg=n)


@pytest.fixture(scope="module")
def ppo_meta_run():
    """PPO on CartPole with meta-gradients on γ and λ (huge meta_lr), 2 seeds by vmap, one
    compiled iteration at a time so η can be read after every iteration."""
    env, cfg, _ = tiny_ppo(num_envs=2, rollout_length=8, hidden=(16,))
    bounds = {"gamma": [0.95, 0.995], "gae_lambda": [0.8, 0.99]}
    rc = RunConfig(algo="ppo", env="CartPole-v1", num_envs=2, total_steps=16 * 10, agent=cfg,
                   meta=MetaConfig(kind="meta_gradient", interval=3, meta_lr=1e3, bounds=bounds))
    train = build.build_train(rc, registry.algo_spec("ppo"), env)[1]
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    axes = seed_axes(jax.eval_shape(train.init, keys[0]))
    carry = jax.jit(jax.vmap(train.init, out_axes=axes))(keys)
    step = jax.jit(jax.vmap(lambda c: train.run(c, 1), in_axes=(axes,), out_axes=(axes, 0)))
    history = [(carry.agent.hparams, carry.meta.gradient.count)]
    all_logs = []
    for _ in range(10):
        carry, logs = step(carry)
        history.append((carry.agent.hparams, carry.meta.gradient.count))
        all_logs.append(logs)
    return carry, history, all_logs, bounds


def test_ppo_meta_interval_is_honoured_in_the_on_policy_loop(ppo_meta_run):
    carry, history, all_logs, _ = ppo_meta_run
    assert int(carry.iteration) == 10
    np.testing.assert_array_equal(np.asarray(carry.meta.gradient.count), [4, 4])  # iterations 0, 3, 6, 9
    for i in range(10):
        (hp_before, count_before), (hp_after, count_after) = history[i], history[i + 1]
        meta_step = i % 3 == 0
        np.testing.assert_array_equal(np.asarray(count_after - count_before), [int(meta_step)] * 2, err_msg=str(i))
        assert np.isfinite(np.asarray(all_logs[i]["meta/gamma"])).all() == meta_step, i
        if not meta_step:  # η only changes in a meta step
            for name in ("gamma", "gae_lambda"):
                np.testing.assert_array_equal(np.asarray(getattr(hp_after, name)), np.asarray(getattr(hp_before, name)))
    # the first meta step moved η (from 0.99, 0.95) in both seeds
    assert np.all(np.asarray(history[1][0].gamma) != np.float32(0.99))
    assert np.all(np.asarray(history[1][0].gae_lambda) != np.float32(0.95))


def test_ppo_meta_under_vmap_keeps_gamma_and_lambda_in_bounds(ppo_meta_run):
    carry, history, all_logs, bounds = ppo_meta_run
    for name, (low, high) in bounds.items():
        values = np.stack([np.asarray(getattr(hp, name)) for hp, _ in history[1:]])
        assert values.shape == (10, 2)
        assert np.all(values >= np.float32(low)) and np.all(values <= np.float32(high)), (name, values)
        np.testing.assert_allclose(np.asarray(all_logs[-1][f"meta/{name}"]), values[-1])
    # seeds are independent runs (own rollouts, own meta-objectives); untouched hparams keep their values
    objective = np.asarray(all_logs[0]["meta/objective"])
    assert objective.shape == (2,) and objective[0] != objective[1]
    np.testing.assert_allclose(np.asarray(carry.agent.hparams.clip_eps), [0.2, 0.2])
    for logs in all_logs[::3]:
        for key in ("meta/objective", "meta/grad_norm", "policy_loss", "value_loss"):
            assert np.all(np.isfinite(np.asarray(logs[key]))), key
        np.testing.assert_array_equal(np.asarray(logs["meta/skipped"]), [0.0, 0.0])


@pytest.fixture(scope="module")
def ppo_setup():
    env, cfg, algo = tiny_ppo(num_envs=2, rollout_length=8)
    return cfg, algo, env.spec


PPO_META = {"kind": "meta_gradient", "interval": 2, "params": ["gamma", "gae_lambda"]}


@pytest.mark.parametrize("meta, auxiliary, message", [
    ({**PPO_META, "params": ["lambda"]}, (),
     "unknown meta.params entry 'lambda': ppo hyperparameters are learning_rate, gamma, gae_lambda, clip_eps"),
    ({**PPO_META, "actor_weight": 1.0}, (),
     r"meta.actor_weight does not apply to ppo \(its objective options: reference_gamma, reference_lambda, "
     r"policy_loss\)"),
    ({**PPO_META, "policy_loss": "ppo2"}, (), "meta.policy_loss must be one of clipped, pg, got 'ppo2'"),
    ({**PPO_META, "reference_lambda": 1.5}, (), r"meta.reference_lambda must be in \[0, 1\]"),
    ({**PPO_META, "bounds": {"gae_lambda": [0.96, 1.0]}}, (), "does not contain the initial value 0.95"),
    (PPO_META, ("forecast",), "auxiliary models \\(forecast\\) .* only with off-policy algorithms; ppo is on-policy"),
])
def test_bad_ppo_meta_configs_raise_clear_errors(ppo_setup, meta, auxiliary, message):
    cfg, algo, spec = ppo_setup
    with pytest.raises(ValueError, match=message):
        build_meta_learner(RunConfig(algo="ppo", agent=cfg, meta=meta, auxiliary=auxiliary), algo, spec)


def test_ppo_meta_needs_minibatches_to_divide_half_the_rollout():
    env, cfg, algo = tiny_ppo(num_envs=1, rollout_length=6, minibatches=2)  # 6 steps split, 3 do not
    with pytest.raises(ValueError, match=r"agent.minibatches \(2\) must divide num_envs \* \(rollout_length // 2\)"):
        build_meta_learner(RunConfig(algo="ppo", agent=cfg, meta=PPO_META), algo, env.spec)


def test_ppo_meta_defaults_learn_gamma_and_lambda(ppo_setup):
    cfg, algo, spec = ppo_setup
    learner = build_meta_learner(RunConfig(algo="ppo", agent=cfg, meta={"kind": "meta_gradient"}), algo, spec)
    state = jax.eval_shape(lambda k: algo.init(k, spec), jax.random.PRNGKey(0))
    meta_state = jax.eval_shape(lambda k, s: learner.init(k, s, spec), jax.random.PRNGKey(1), state)
    assert set(meta_state.gradient.raw) == {"gamma", "gae_lambda"}
    assert learner.interval == 10


def test_meta_settings_from_the_command_line_and_the_ppo_meta_config():
    path = CONFIG_DIR / "ppo_meta_cartpole.yaml"
    config = load_config(path, ["meta.interval=2", "meta.bounds.gamma=[0.95,0.995]", "total_steps=2048"])
    assert config.meta.interval == 2 and config.meta.params == ("gamma", "gae_lambda")
    assert config.meta.bounds == {"gamma": [0.95, 0.995], "gae_lambda": [0.5, 1.0]}
    train = build_parts(config).train
    carry = jax.eval_shape(train.init, jax.random.PRNGKey(0))
    assert set(carry.meta.gradient.raw) == {"gamma", "gae_lambda"}


def test_train_py_runs_ppo_with_meta_gradients_and_logs_gamma_and_lambda(tmp_path):
    import json

    run_dir = tmp_path / "ppo_meta"
    proc = run_in_process(
        "train.py", "--algo", "ppo", "--env", "CartPole-v1", "--seeds", "2", "--run-dir", str(run_dir),
        "--set", "meta.kind=meta_gradient", "--set", "meta.params=[gamma,gae_lambda]", "--set", "meta.interval=2",
        "--set", "meta.meta_lr=0.1", "--set", "num_envs=2", "--set", "total_steps=256", "--set", "log_interval=64",
        "--set", "eval_episodes=2", "--set", "agent.rollout_length=16", "--set", "agent.epochs=1",
        "--set", "agent.minibatches=2", "--set", "agent.hidden=[8]", "--set", "progress=true",
        "--set", "tensorboard=false")
    assert proc.returncode == 0, proc.stderr
    assert "meta-learned gamma: per seed [" in proc.stdout and "meta-learned gae_lambda" in proc.stdout
    assert "gae_lambda 0.9" in proc.stdout  # the progress line shows the learned values
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for entry in lines:  # 2 iterations per chunk, a meta step every 2nd: every chunk has one
        for name in ("meta/gamma", "meta/gae_lambda"):
            assert entry[name] is not None and len(entry["per_seed"][name]) == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    learned = summary["meta_hparams"]
    assert set(learned) == {"gamma", "gae_lambda"} and len(learned["gamma"]) == 2
    assert all(0.9 <= g <= 0.9999 for g in learned["gamma"]) and all(0.0 <= v <= 1.0 for v in learned["gae_lambda"])
    assert learned["gamma"] != [0.99, 0.99]


def test_td3_meta_gradient_is_finite_with_dead_relu_units():
    """A ReLU critic with units that never fire has exactly-zero gradient entries; the
    meta-gradient through Adam's sqrt(v) must still be finite (the step is not skipped)."""
    env = registry.make_env("Pendulum-v1", 1)
    cfg = td3.Config(actor_hidden=(32, 32), critic_hidden=(32, 32), activation="relu")
    algo = td3.make(cfg, env.spec)
    learner = build_meta_learner(RunConfig(algo="td3", agent=cfg, meta={
        "kind": "meta_gradient", "interval": 10, "params": ["gamma", "critic_lr"], "meta_lr": 1e-3,
        "bounds": {"gamma": [0.9, 0.999]}}), algo, env.spec)
    key = jax.random.PRNGKey(0)
    state = algo.init(key, env.spec)
    # Kill the first critic layer's units for every input: their gradients are exactly zero.
    state = state.replace(critic_params=jax.tree_util.tree_map_with_path(
        lambda path, x: x - 100.0 if "Dense_0" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path)
        else x, state.critic_params))
    b = 64
    batch = Transition(jax.random.normal(key, (b, 3)), jax.random.uniform(key, (b, 1), minval=-1, maxval=1),
                       jax.random.normal(key, (b,)), jnp.zeros(b, bool), jnp.zeros(b, bool),
                       jax.random.normal(jax.random.fold_in(key, 1), (b, 3)))
    for i in range(3):
        state, _ = algo.update(state, batch, jax.random.fold_in(key, i))
    _, new_state, metrics = jax.jit(learner.update)(learner.init(key, state, env.spec), state, batch, key)
    assert float(metrics["meta/skipped"]) == 0.0
    assert np.isfinite(float(metrics["meta/grad_norm"])) and float(metrics["meta/grad_norm"]) > 0.0
    assert float(new_state.hparams.gamma) != float(state.hparams.gamma)


@xla_defaults
def test_td3_critic_update_is_the_critic_half_of_update():
    # The meta-gradient's inner step for TD3 (no actor term): same critic, optimizer and step as the
    # full update, actor and targets untouched; build_meta_learner picks it only without an actor term.
    env = registry.make_env("Pendulum-v1", 1)
    cfg = td3.Config(actor_hidden=(16, 16), critic_hidden=(16, 16), policy_delay=1)
    algo = td3.make(cfg, env.spec)
    critic_update = algo.validation().update
    key = jax.random.PRNGKey(4)
    state = algo.init(key, env.spec)
    batch = pendulum_transitions(key, 32)
    full, _ = jax.jit(algo.update)(state, batch, key)
    half, metrics = jax.jit(critic_update)(state, batch, key)
    for a, b in zip(jax.tree.leaves((full.critic_params, full.critic_opt, full.step)),
                    jax.tree.leaves((half.critic_params, half.critic_opt, half.step))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves((state.actor_params, state.actor_target, state.critic_target)),
                    jax.tree.leaves((half.actor_params, half.actor_target, half.critic_target))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(jax.tree.leaves(full.actor_params)[0]),
                           np.asarray(jax.tree.leaves(state.actor_params)[0]))  # the full update did move the actor
    assert set(metrics) == {"critic_loss", "q_mean"}
    assert algo.validation().update is not None
    assert algo.validation(actor_weight=0.5).update is None
