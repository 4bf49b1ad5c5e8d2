"""Recurrent on-policy actor-critics (PPO and A2C with agent.core): updates on collected rollouts, seeds under
vmap, both updates against a reference that steps the network one step at a time, bad input through the CLI,
and play.py on a recurrent run."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import a2c, ppo
from angle_jax.algos.minibatch import permutations
from angle_jax.algos.policy_gradient import network, score_sequences
from angle_jax.core.optim import apply_gradients, direction_optimizer
from angle_jax.networks.policies import policy_distribution
from angle_jax.training.on_policy import OnPolicyLoop, collect, make_train
from angle_jax.training.reporting import EpisodeAccumulator
from conftest import run_in_process, xla_defaults

ENV, N, T = "CartPoleNoVel-v1", 4, 12
SMALL = dict(hidden=(8,), core_size=8, rollout_length=T, anneal_lr=False)
CONFIGS = {
    "ppo": lambda core: ppo.Config(core=core, epochs=2, minibatches=2, **SMALL),
    "a2c": lambda core: a2c.Config(core=core, **SMALL),
}
MAKE = {"ppo": ppo.make, "a2c": a2c.make}
KEYS = jax.random.split(jax.random.PRNGKey(0), 2)


def close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def first_rollout(algo, env, train, key):
    """`train.init(key)` and the first rollout `collect` gathers from it."""
    carry = train.init(key)
    out = collect(algo, env, carry.agent, carry.env_state, carry.obs, carry.key, T, EpisodeAccumulator.zeros(),
                  jnp.zeros((), jnp.int32), carry.core, carry.reset)
    return carry, out


def build(name: str, core: str):
    """A recurrent algorithm (tiny config) and the on-policy loop around it."""
    env = registry.make_env(ENV, N)
    config = CONFIGS[name](core)
    algo = MAKE[name](config, env.spec)
    return env, config, algo, make_train(algo, env, OnPolicyLoop(N, T, 4))


@functools.cache
def setup(name: str, core: str):
    """A recurrent algorithm in the on-policy loop, its first carry and two consecutive rollouts (the second
    starts from a core state the first built up), and its jitted update."""
    env, config, algo, train = build(name, core)
    step = jax.jit(lambda agent, env_state, obs, key, core_, reset: collect(
        algo, env, agent, env_state, obs, key, T, EpisodeAccumulator.zeros(), jnp.zeros((), jnp.int32), core_,
        reset))
    carry = jax.jit(train.init)(KEYS[0])
    first = step(carry.agent, carry.env_state, carry.obs, carry.key, carry.core, carry.reset)
    _, env_state, obs, _, next_core, next_reset = first
    second = step(carry.agent, env_state, obs, jax.random.PRNGKey(7), next_core, next_reset)
    return env, config, algo, train, carry, first[0], second[0], jax.jit(algo.update)


@pytest.mark.parametrize("name", ["ppo", "a2c"])
@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_recurrent_update_under_jit_learns_from_a_collected_rollout(name, core):
    """Two jitted updates, on the first rollout and on the next (episode ends inside, a nonzero start core)."""
    _, _, algo, _, carry, rollout, second, update = setup(name, core)
    assert algo.memory is not None
    assert rollout.reset.shape == (T, N) and bool(np.all(rollout.reset[0]))   # every env starts an episode
    assert np.any(second.reset) and tree_diff(second.core, algo.memory.initial(N)) > 1e-3
    state = carry.agent
    for i, r in enumerate((rollout, second)):
        new, metrics = update(state, r, jax.random.PRNGKey(i))
        for k in ("loss", "policy_loss", "value_loss", "entropy"):
            assert np.isfinite(float(metrics[k])), k
        assert int(new.step) == int(state.step) + 1
        assert tree_diff(new.params, state.params) > 1e-5
        assert tree_diff(new.params["params"]["core"], state.params["params"]["core"]) > 1e-5
        state = new


@xla_defaults
def test_seeds_under_vmap_start_like_the_single_run():
    """Seed 0 of a vmapped init and first rollout of recurrent PPO equals the run with that seed alone (bit for
    bit: under XLA's default compiler settings, as the batched and the single program differ)."""
    env, _, algo, train = build("ppo", "lstm")
    net = network(algo.config, env.spec)

    def start(key):
        carry, (rollout, *_) = first_rollout(algo, env, train, key)
        outputs, values, _ = score_sequences(net, carry.agent.params, rollout)
        log_prob = policy_distribution(outputs, env.spec.discrete).log_prob(rollout.action)
        return carry.agent.params, carry.core, rollout, log_prob, values

    both = jax.jit(jax.vmap(start))(KEYS)
    single = jax.jit(start)(KEYS[0])
    seed0 = jax.tree.map(lambda x: x[0], both)
    equal(seed0[0], single[0])                                   # params
    equal(seed0[1], single[1])                                   # core state at the start
    equal(seed0[1], algo.memory.initial(N))
    for field in ("obs", "action", "reset", "reward", "terminated", "truncated", "next_obs"):
        np.testing.assert_array_equal(getattr(seed0[2], field), getattr(single[2], field), err_msg=field)
    close(seed0[3], single[3], rtol=1e-5, atol=1e-5)            # log-probs
    close(seed0[4], single[4], rtol=1e-5, atol=1e-5)            # values
    assert tree_diff(jax.tree.map(lambda x: x[1], both[0]), single[0]) > 0   # seed 1 is another run


# ---- the updates against a step-by-step reference --------------------------------------------------------

def step_by_step(apply, params, rollout, envs, core_scale):
    """Policy outputs, values and next values `[T, n]` of the envs `envs` (index array), the net's one-step `apply`
    called step after step from the rollout's stored start core times `core_scale` (0: zeros); next value t:
    V(next_obs_t) after step t's core state."""
    core = jax.tree.map(lambda c: c[envs] * core_scale, rollout.core)
    outs, values, nexts = [], [], []
    no_reset = jnp.zeros(envs.shape, bool)
    for t in range(rollout.obs.shape[0]):
        (out, value), core = apply(params, rollout.obs[t, envs], core, rollout.reset[t, envs])
        (_, next_value), _ = apply(params, rollout.next_obs[t, envs], core, no_reset)
        outs.append(out)
        values.append(value)
        nexts.append(next_value)
    stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)   # noqa: E731
    return stack(outs), jnp.stack(values), jnp.stack(nexts)


def numpy_gae(r, v, nv, term, trunc, gamma, lam):
    adv, nxt = np.zeros_like(v, np.float64), np.zeros(v.shape[1])
    for t in reversed(range(len(r))):
        delta = r[t] + gamma * (1 - term[t]) * nv[t] - v[t]
        nxt = delta + gamma * lam * (1 - term[t]) * (1 - trunc[t]) * nxt
        adv[t] = nxt
    return adv, adv + v


def numpy_n_step_returns(r, nv, term, trunc, gamma):
    ret, nxt = np.zeros_like(nv, np.float64), nv[-1]
    for t in reversed(range(len(r))):
        nxt = r[t] + gamma * (1 - term[t]) * np.where(trunc[t] | (t == len(r) - 1), nv[t], nxt)
        ret[t] = nxt
    return ret


def f64(x):
    return np.asarray(x, np.float64)


@functools.cache
def references(name: str, core: str):
    """The written-out pieces of the recurrent update: `score(params, rollout, envs, core_scale)` (outputs,
    values, next values stepped one step at a time) and `grad(params, rollout, envs, core_scale, targets)`
    (gradient and metrics of the loss on the env sequences `envs`). Only the one-step apply is compiled, so
    the step-by-step loops stay loops."""
    env, config, _, _ = build(name, core)
    net, discrete = network(config, env.spec), env.spec.discrete
    apply = jax.jit(net.apply)

    def ppo_loss(params, rollout, envs, core_scale, targets):
        old_log_prob, old_values, adv, ret = (x[:, envs] for x in targets)
        out, val, _ = step_by_step(apply, params, rollout, envs, core_scale)
        d = policy_distribution(out, discrete)
        log_prob = d.log_prob(rollout.action[:, envs])
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        p_loss = ppo.ppo_policy_loss(log_prob, old_log_prob, adv, config.clip_eps)
        v_loss = ppo.value_loss(val, old_values, ret, config.vf_clip)
        entropy = jnp.mean(d.entropy())
        total = p_loss + config.vf_coef * v_loss - config.ent_coef * entropy
        return total, {"loss": total, "policy_loss": p_loss, "value_loss": v_loss, "entropy": entropy}

    def a2c_loss(params, rollout, envs, core_scale, ret):
        out, val, _ = step_by_step(apply, params, rollout, envs, core_scale)
        d = policy_distribution(out, discrete)
        adv = jax.lax.stop_gradient(ret - val + rollout.advantage_bonus)
        p_loss = -jnp.mean(d.log_prob(rollout.action) * adv)
        v_loss = 0.5 * jnp.mean(jnp.square(val - ret))
        entropy = jnp.mean(d.entropy())
        total = p_loss + config.vf_coef * v_loss - config.ent_coef * entropy
        return total, {"loss": total, "policy_loss": p_loss, "value_loss": v_loss, "entropy": entropy}

    loss = ppo_loss if name == "ppo" else a2c_loss
    return env.spec, config, functools.partial(step_by_step, apply), jax.grad(loss, has_aux=True)


def reference_ppo_update(core, state, rollout, key, groups=None, core_scale=1.0):
    """PPO's recurrent update written out: GAE in NumPy, then each minibatch's env sequences stepped one step at
    a time from their stored start core; `groups(epoch)` overrides the env sets of the minibatches."""
    spec, config, score, grad = references("ppo", core)
    tx = direction_optimizer(config.max_grad_norm, eps=config.adam_eps)
    outputs, values, next_values = score(state.params, rollout, jnp.arange(N), core_scale)
    old_log_prob = policy_distribution(outputs, spec.discrete).log_prob(rollout.action)
    adv, ret = numpy_gae(f64(rollout.reward), f64(values), f64(next_values), f64(rollout.terminated),
                         f64(rollout.truncated), config.gamma, config.gae_lambda)
    targets = (old_log_prob, values, jnp.asarray(adv, jnp.float32), jnp.asarray(ret, jnp.float32))
    perms = np.asarray(permutations(jax.random.split(key)[0], config.epochs, N))
    size = N // config.minibatches
    params, opt_state, metrics = state.params, state.opt_state, []
    for epoch in range(config.epochs):
        envs_of = groups(epoch) if groups else [perms[epoch][i * size:(i + 1) * size]
                                                  for i in range(config.minibatches)]
        for envs in envs_of:
            grads, m = grad(params, rollout, jnp.asarray(envs, jnp.int32), core_scale, targets)
            params, opt_state = apply_gradients(tx, params, opt_state, grads, config.learning_rate)
            metrics.append(m)
    return params, jax.tree.map(lambda *x: float(np.mean(x)), *metrics)


def reference_a2c_update(core, state, rollout, core_scale=1.0):
    """A2C's recurrent update written out: all env sequences stepped one step at a time from the stored start
    core, n-step returns in NumPy from the next values of the true successors, one gradient step."""
    _, config, score, grad = references("a2c", core)
    tx = direction_optimizer(config.max_grad_norm, eps=config.adam_eps)
    everyone = jnp.arange(N)
    _, _, next_values = score(state.params, rollout, everyone, core_scale)
    ret = numpy_n_step_returns(f64(rollout.reward), f64(next_values), f64(rollout.terminated),
                               np.asarray(rollout.truncated), config.gamma)
    grads, metrics = grad(state.params, rollout, everyone, core_scale, jnp.asarray(ret, jnp.float32))
    params, _ = apply_gradients(tx, state.params, state.opt_state, grads, config.learning_rate)
    return params, jax.tree.map(float, metrics)


def warmed_up(name, core):
    """The state after one update on the first rollout (Adam's moments no longer fresh, so the next step's size
    follows the gradient's), the second rollout (a nonzero start core, episode ends inside) and the update."""
    _, _, _, _, carry, first, second, update = setup(name, core)
    state, _ = update(carry.agent, first, jax.random.PRNGKey(1))
    return state, second, update


def test_ppo_minibatches_are_whole_env_sequences_from_their_stored_start_core():
    """Two epochs of two minibatches (2 of the 4 envs each) equal the update written out over the same env sets."""
    core = "lstm"
    state, rollout, update = warmed_up("ppo", core)
    key = jax.random.PRNGKey(3)
    new, metrics = update(state, rollout, key)
    params, ref = reference_ppo_update(core, state, rollout, key)
    for k in ("loss", "policy_loss", "value_loss", "entropy"):
        np.testing.assert_allclose(float(metrics[k]), ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    close(new.params, params, rtol=1e-4, atol=1e-6)
    moved = tree_diff(new.params, state.params)
    # the same check tells apart a zero start core, and minibatches of other env pairs
    epochs = references("ppo", core)[1].epochs
    perms = np.asarray(permutations(jax.random.split(key)[0], epochs, N))
    pairings = [[(0, 1), (2, 3)], [(0, 2), (1, 3)], [(0, 3), (1, 2)]]

    def other_pairs(epoch):
        used = {frozenset(perms[epoch][:2].tolist()), frozenset(perms[epoch][2:].tolist())}
        return next(p for p in pairings if {frozenset(g) for g in p} != used)

    for variant in (dict(core_scale=0.0), dict(groups=other_pairs)):
        wrong, _ = reference_ppo_update(core, state, rollout, key, **variant)
        assert tree_diff(wrong, new.params) > 1e-2 * moved, variant


def test_a2c_update_equals_stepping_the_network_over_the_rollout():
    """One gradient step over all T x N steps equals the update written out; a zero start core would not."""
    core = "gru"
    state, rollout, update = warmed_up("a2c", core)
    new, metrics = update(state, rollout, jax.random.PRNGKey(3))
    params, ref = reference_a2c_update(core, state, rollout)
    for k in ("loss", "policy_loss", "value_loss", "entropy"):
        np.testing.assert_allclose(float(metrics[k]), ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    close(new.params, params, rtol=1e-4, atol=1e-6)
    wrong, _ = reference_a2c_update(core, state, rollout, core_scale=0.0)
    assert tree_diff(wrong, new.params) > 1e-2 * tree_diff(new.params, state.params)


def test_feed_forward_a2c_is_unchanged_by_the_recurrent_path():
    """Without a core: no memory, the MLP's parameters, and one update equal to the loss written out flat."""
    env = registry.make_env(ENV, N)
    config = a2c.Config(**{**SMALL, "hidden": (8, 8)})
    algo = a2c.make(config, env.spec)
    state = algo.init(KEYS[0])
    assert algo.memory is None and "core" not in state.params["params"]
    _, _, _, _, _, rollout, _, _ = setup("a2c", "lstm")
    rollout = rollout.replace(core=None, reset=None)
    new, metrics = jax.jit(algo.update)(state, rollout, KEYS[1])
    net = network(config, env.spec)
    next_values = net.apply(state.params, rollout.next_obs, method=net.value)
    ret = numpy_n_step_returns(f64(rollout.reward), f64(next_values), f64(rollout.terminated),
                               np.asarray(rollout.truncated), config.gamma)
    out, val = net.apply(state.params, rollout.obs)
    d = policy_distribution(out, env.spec.discrete)
    adv = ret - np.asarray(val, np.float64)
    np.testing.assert_allclose(float(metrics["policy_loss"]), -np.mean(np.asarray(d.log_prob(rollout.action)) * adv),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["value_loss"]), 0.5 * np.mean((np.asarray(val) - ret) ** 2), rtol=1e-4)
    assert tree_diff(new.params, state.params) > 0


# ---- the command line ------------------------------------------------------------------------------------

RECURRENT_PPO = ["--algo", "ppo", "--env", ENV, "--set", "agent.core=lstm"]   # its preset: 8 envs, 1 minibatch, observation and reward normalisation


@pytest.mark.parametrize("args,pattern", [
    (["--set", "num_envs=6", "--set", "agent.minibatches=4"], ("minibatches (4)", "num_envs (6)")),
    (["--set", "agent.core=rnn"], ("agent.core must be one of none, lstm, gru", "'rnn'")),
    (["--set", "meta.kind=meta_gradient", "--set", "meta.params=[gamma]"], ("meta-gradients", "recurrent")),
])
def test_bad_recurrent_ppo_settings_exit_2_before_compiling(tmp_path, monkeypatch, args, pattern):
    """One line on stderr, exit code 2, no run directory, and no training program traced (no `lax.scan`)."""
    traced = []
    scan = jax.lax.scan
    monkeypatch.setattr(jax.lax, "scan", lambda *a, **k: traced.append(1) or scan(*a, **k))
    run_dir = tmp_path / "r"
    proc = run_in_process("train.py", *RECURRENT_PPO, *args, "--run-dir", str(run_dir))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(p in lines[0] for p in pattern), lines[0]
    assert not run_dir.exists()
    assert not traced   # no training program was built


def test_play_py_runs_a_recurrent_ppo_agent(tmp_path):
    """play.py carries the core state of a tiny recurrent PPO run (the preset: observation and reward
    statistics in its state) through its episodes, with a video; 3 episodes where the run had 2 envs learning
    in 2 minibatches of whole env sequences."""
    run_dir = tmp_path / "ppo_lstm"
    proc = run_in_process(
        "train.py", *RECURRENT_PPO, "--run-dir", str(run_dir), "--set", "num_envs=2", "--set", "total_steps=64",
        "--set", "agent.rollout_length=16", "--set", "agent.minibatches=2", "--set", "agent.epochs=1",
        "--set", "agent.hidden=[8]", "--set", "agent.core_size=8", "--set", "eval_episodes=2",
        "--set", "progress=false", "--set", "tensorboard=false")
    assert proc.returncode == 0, proc.stderr
    video = tmp_path / "play.gif"
    proc = run_in_process("play.py", "--checkpoint", str(run_dir), "--episodes", "3", "--video", str(video))
    assert proc.returncode == 0, proc.stderr
    returns = [float(line.split("return")[1].split()[0]) for line in proc.stdout.splitlines()
               if line.startswith("episode ")]
    assert len(returns) == 3 and all(r > 0 for r in returns), proc.stdout
    assert "mean return over 3 episodes" in proc.stdout and video.is_file()
