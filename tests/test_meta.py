"""Meta-gradients, auxiliary models and the meta config: correctness on small problems."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from angle_jax import registry
from angle_jax.algos import td3
from angle_jax.algos.base import Algorithm, Transition
from angle_jax.config import RunConfig
from angle_jax.meta import (build_meta_learner, forecast, make_auxiliary, make_meta_gradient, meta_gradient, risk,
                            td3_validation_loss)
from angle_jax.meta.meta_gradient import inner_objective, set_hparams, split_batch
from angle_jax.training.axes import seed_axes
from angle_jax.training.off_policy import OffPolicyLoop, make_train


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
    learner = make_meta_gradient(algo, None, tiny_objective, params=("gamma", "lr"), meta_lr=1e-2, bounds=bounds)
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
    learner = make_meta_gradient(algo, None, tiny_objective, params=("gamma", "lr"), meta_lr=1e6, bounds=bounds)

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


# ---- TD3 -----------------------------------------------------------------------------------------

def _differentiable_twin_q_target(next_q, reward, terminated, gamma):
    """`td3.twin_q_target` without its inner stop-gradient (the target is already outside the
    critic objective), so the target's dependence on γ and the smoothing noise is visible."""
    return reward + gamma * (1.0 - terminated.astype(jnp.float32)) * jnp.min(next_q, axis=0)


def test_td3_meta_gradient_matches_finite_differences(monkeypatch):
    """The TD3 meta-gradient w.r.t. critic_lr and γ against central differences (float32).

    The meta-gradient is a semi-gradient (the objective's bootstrap target is held fixed),
    so the finite differences are taken of the objective whose target networks are frozen
    at their values for the unperturbed η. γ is differentiable through the update only if
    the TD target is not wrapped in stop_gradient; the patched `twin_q_target` is the
    proposed form of td3.twin_q_target.
    """
    monkeypatch.setattr(td3, "twin_q_target", _differentiable_twin_q_target)
    env = registry.make_env("Pendulum-v1", 1)
    # a large critic step size so that γ's effect on the objective stands well above float32 noise
    cfg = td3.Config(actor_hidden=(8,), critic_hidden=(8,), policy_delay=2, critic_lr=3e-2)
    algo = td3.make(cfg, env.spec)
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    n = 32
    batch = Transition(
        obs=jax.random.normal(k[0], (n, 3)), action=jax.random.uniform(k[1], (n, 1), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (n,)), terminated=jax.random.bernoulli(k[3], 0.2, (n,)),
        truncated=jnp.zeros((n,), jnp.bool_), next_obs=jax.random.normal(k[4], (n, 3)))
    objective = td3_validation_loss(cfg, env.spec)
    train, val = split_batch(batch)
    key = jax.random.PRNGKey(7)
    k_update, k_val = jax.random.split(key)
    names = ("critic_lr", "gamma")
    rel = 1e-2

    @jax.jit
    def problem(init_key):
        state = algo.init(init_key, env.spec)
        # a few steps first, so that Adam's moments are not trivial
        state, _ = jax.lax.scan(lambda st, kk: (algo.update(st, batch, kk)[0], None), state,
                                jax.random.split(jax.random.PRNGKey(10), 3))
        eta = {n: getattr(state.hparams, n) for n in names}
        value, grads = meta_gradient(algo.update, objective, state, eta, train, val, key)
        base, _ = algo.update(state, train, k_update)

        def frozen(e):
            new, _ = algo.update(set_hparams(state, e), train, k_update)
            new = new.replace(actor_target=base.actor_target, critic_target=base.critic_target)
            return objective(new, val, k_val)

        points = [dict(eta, **{n: eta[n] * (1.0 + sign * rel)}) for n in names for sign in (1.0, -1.0)]
        values = jax.vmap(frozen)(jax.tree.map(lambda *x: jnp.stack(x), *points))
        return value, grads, values, eta, base.step

    value, grads, values, eta, step = problem(k[5])
    assert int(step) % cfg.policy_delay == 0  # the inner update includes an actor step
    assert np.isfinite(float(value))
    for i, n in enumerate(names):
        fd = (values[2 * i] - values[2 * i + 1]) / (2 * rel * float(eta[n]))
        assert abs(float(grads[n])) > 0, n
        np.testing.assert_allclose(float(grads[n]), float(fd), rtol=5e-2, err_msg=n)


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
    ({**GOOD_META, "metalr": 1.0}, (), "unknown key meta.metalr"),
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
    with pytest.raises(ValueError, match="algorithm 'ppo' has none"):
        build_meta_learner(RunConfig(algo="ppo", meta=GOOD_META), algo, spec)


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
