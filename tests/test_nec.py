"""NEC: N-step returns written to the dictionary against a Python queue, the update, acting, seeds under
vmap, train.py end to end (summary, the dictionary in params.ckpt), bad settings, a learning smoke test."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import play
from angle_jax import registry, xla_cpu
from angle_jax.algos import nec
from angle_jax.config import load_config
from angle_jax.core.axes import seed_axes
from angle_jax.core.types import Transition
from angle_jax.envs.base import Box, Discrete, EnvSpec
from angle_jax.episodic import dnd
from angle_jax.training.off_policy import OffPolicyLoop, make_train
from conftest import run_in_process

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SPEC = EnvSpec("vec", (4,), "float32", Discrete(2), num_envs=2, max_episode_steps=50)
TINY = nec.Config(hidden=(8,), key_size=4, k=3, capacity=64, n_step=3, replay_size=64, batch_size=8,
                  learning_rate=1e-2, epsilon_decay_steps=100)


def step(t, reward, terminated, truncated, action):
    """A vectorised step whose obs name (t, env); leaves [E]."""
    e = len(reward)
    obs = np.stack([np.full(e, t, np.float32), np.arange(e, dtype=np.float32), np.zeros(e, np.float32),
                    np.zeros(e, np.float32)], axis=1)
    return Transition(jnp.asarray(obs), jnp.asarray(action, jnp.int32), jnp.asarray(reward, jnp.float32),
                      jnp.asarray(terminated), jnp.asarray(truncated), jnp.asarray(obs + 0.5))


def reference_queue(rewards, terminated, truncated, n, gamma, q_boot):
    """Per call t, per env: (step index written, G) or None, from a FIFO per env that takes one
    step per call and gives back its oldest when due (N steps seen, or its episode ended)."""
    steps, envs = rewards.shape
    queues = [[] for _ in range(envs)]
    out = []
    for t in range(steps):
        row = []
        for e in range(envs):
            q = queues[e]
            q.append(t)
            ends = [i for i, j in enumerate(q) if terminated[j, e] or truncated[j, e]]
            if len(q) < n and not ends:
                row.append(None)
                continue
            m = min(n, ends[0] + 1) if ends else n
            window = q[:m]
            g = sum(gamma ** i * rewards[j, e] for i, j in enumerate(window))
            if not terminated[window[-1], e]:
                g += gamma ** m * q_boot
            row.append((q.pop(0), g))
            assert len(q) <= n - 1
        out.append(row)
    return out


def test_nstep_returns_written_match_a_python_queue_with_terminal_truncation_and_bootstrap():
    """A zero embedding puts every key at 0; k entries of value c pre-filled per action are then every
    lookup's neighbours (ties go to the lowest slots), so the bootstrap max_a Q is the constant
    max c, and the writes (no match radius) land after them in order: env 0 first, one per env per call."""
    n, gamma, k = 3, 0.9, 3
    config = dataclasses.replace(TINY, n_step=n, gamma=gamma, k=k, match_radius=-1.0, alpha=1.0)
    algo = nec.make(config, SPEC)
    state = algo.init(jax.random.PRNGKey(0))
    state = state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
    prefill = jnp.asarray([[2.0] * k, [5.0] * k])
    table = state.dnd.replace(values=state.dnd.values.at[:, :k].set(prefill), size=jnp.full((2,), k, jnp.int32),
                              last_used=state.dnd.last_used.at[:, :k].set(0))
    state = state.replace(dnd=table)
    q_boot = 5.0
    steps = 12
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(steps, 2)).astype(np.float32)
    actions = rng.integers(0, 2, size=(steps, 2))
    terminated = np.zeros((steps, 2), bool)
    truncated = np.zeros((steps, 2), bool)
    terminated[4, 0] = True                       # env 0: an episode of 5 steps ends (no bootstrap)
    truncated[9, 0] = True                        # env 0: an episode of 5 steps is cut (bootstrap from next_obs)
    terminated[1, 1] = True                       # env 1: episodes of 2 and 1 steps, then a 1-step truncation
    terminated[2, 1] = True
    truncated[3, 1] = True
    observe = jax.jit(algo.observe)
    rows = []
    for t in range(steps):
        state = observe(state, step(t, rewards[t], terminated[t], truncated[t], actions[t]), jax.random.PRNGKey(t))
        rows.append(jax.tree.map(np.asarray, jax.tree.map(lambda x: x[t], state.replay.data)))
        assert np.all(np.asarray(state.pending.count) <= n - 1)
    ref = reference_queue(rewards, terminated, truncated, n, gamma, q_boot)
    written = {0: [], 1: []}
    for t, row in enumerate(ref):
        for e, item in enumerate(row):
            got = rows[t]
            assert bool(got.valid[e]) == (item is not None), (t, e)
            if item is None:
                continue
            j, g = item
            assert got.obs[e, 0] == j and got.obs[e, 1] == e and got.action[e] == actions[j, e], (t, e)
            np.testing.assert_allclose(got.ret[e], g, rtol=1e-5, atol=1e-5)
            written[int(actions[j, e])].append(g)
    for a in (0, 1):
        count = len(written[a])
        assert int(state.dnd.size[a]) == k + count
        np.testing.assert_allclose(np.asarray(state.dnd.values[a, k:k + count]), written[a], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(state.dnd.values[a, :k]), np.asarray(prefill[a]))
    # every step of the two ended episodes of env 0 was written; the third is still pending
    assert [row[0][0] for row in ref if row[0] is not None] == list(range(10))
    assert int(state.pending.count[0]) == 2 and int(state.pending.count[1]) == 2


def filled_state(algo, seed=0, entries=20):
    """An initial state whose dictionary holds random entries (keys near the embeddings of random obs)."""
    state = algo.init(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    obs = jnp.asarray(rng.normal(size=(entries, 4)), jnp.float32)
    h = nec.embedding_network(TINY, SPEC).apply(state.params, obs)
    table = dnd.write(state.dnd, h, jnp.asarray(rng.integers(0, 2, entries)), jnp.asarray(rng.normal(size=entries)),
                      0.1, 0.0)
    return state.replace(dnd=table), obs


def test_update_lowers_the_loss_on_a_fixed_batch_and_moves_params_keys_and_values():
    algo = nec.make(TINY, SPEC)
    state, obs = filled_state(algo)
    rng = np.random.default_rng(1)
    batch = nec.NECBatch(obs[:8] + 0.1, jnp.asarray(rng.integers(0, 2, 8), jnp.int32),
                         jnp.asarray(rng.normal(size=8) * 3, jnp.float32), jnp.asarray([True] * 7 + [False]))
    update = jax.jit(algo.update)
    first, m0 = update(state, batch, jax.random.PRNGKey(0))
    s = first
    for i in range(30):
        s, m = update(s, batch, jax.random.PRNGKey(i))
    assert float(m["loss"]) < 0.5 * float(m0["loss"]), (float(m0["loss"]), float(m["loss"]))
    assert int(s.step) == 31 and float(m0["dnd_size"]) == 10.0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), first.params, state.params)
    assert all(jax.tree.leaves(changed))
    assert bool(jnp.any(first.dnd.values != state.dnd.values)) and bool(jnp.any(first.dnd.keys != state.dnd.keys))
    # a batch of invalid items is no update at all
    empty, m_empty = update(state, batch.replace(valid=jnp.zeros(8, bool)), jax.random.PRNGKey(0))
    assert float(m_empty["loss"]) == 0.0
    chex.assert_trees_all_equal(empty.params, state.params)
    chex.assert_trees_all_equal(empty.dnd.keys, state.dnd.keys)
    chex.assert_trees_all_equal(empty.dnd.values, state.dnd.values)


def test_act_is_the_argmax_of_the_lookup_and_explore_follows_epsilon():
    algo = nec.make(TINY, SPEC)
    state, obs = filled_state(algo, seed=2)
    queries = obs + 0.3 * jax.random.normal(jax.random.PRNGKey(3), obs.shape)
    h = nec.embedding_network(TINY, SPEC).apply(state.params, queries)
    q, _ = dnd.lookup(state.dnd, h, TINY.k, TINY.delta)
    a = jax.jit(algo.act)(state, queries)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(jnp.argmax(q, -1)))
    assert len(set(np.asarray(a).tolist())) == 2
    greedy = jax.jit(algo.explore)(state, queries, jax.random.PRNGKey(0), jnp.int32(10_000))   # ε = 0.01
    assert np.mean(np.asarray(greedy) == np.asarray(a)) >= 0.9
    # an empty dictionary: every Q is 0, the greedy action is action 0
    empty = algo.init(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(algo.act(empty, queries)), 0)


def test_vmap_over_two_seeds_equals_the_single_run_of_seed_0():
    algo = nec.make(dataclasses.replace(TINY, n_step=1), SPEC)
    tr = step(0, np.array([1.0, -1.0]), np.array([False, True]), np.array([False, False]), np.array([0, 1]))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)

    def start(key):
        s = algo.observe(algo.init(key), tr, key)
        return algo.update(s, None, jax.random.fold_in(key, 1))[0]

    axes = seed_axes(jax.eval_shape(algo.init, keys[0]))
    both = jax.jit(jax.vmap(start, out_axes=axes))(keys)
    one = jax.jit(start)(keys[0])
    assert int(one.replay.size) == 1 and int(one.dnd.size.sum()) == 2 and int(one.step) == 1
    assert both.step.shape == () and both.replay.pos.shape == ()
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(both)):
        y = np.asarray(y)
        y = y[0] if y.ndim > np.ndim(x) else y
        np.testing.assert_allclose(np.asarray(x), y, rtol=2e-5, atol=2e-6)


def test_minatar_grids_use_the_minatar_cnn_and_observe_update_act_run():
    spec = EnvSpec("grid", (10, 10, 4), "uint8", Discrete(3), num_envs=2, max_episode_steps=50)
    algo = nec.make(dataclasses.replace(TINY, n_step=1), spec)
    state = algo.init(jax.random.PRNGKey(0))
    assert "MinAtarTorso_0" in state.params["params"]
    assert state.pending.obs.shape == (1, 2, 10, 10, 4) and state.pending.obs.dtype == jnp.uint8
    obs = jax.random.bernoulli(jax.random.PRNGKey(1), 0.2, (2, 10, 10, 4)).astype(jnp.uint8)
    tr = Transition(obs, jnp.asarray([0, 2], jnp.int32), jnp.ones(2), jnp.zeros(2, bool), jnp.zeros(2, bool), obs)
    state = jax.jit(algo.observe)(state, tr, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(state.dnd.size), [1, 0, 1])
    state, metrics = jax.jit(algo.update)(state, None, jax.random.PRNGKey(3))
    assert np.isfinite(float(metrics["loss"]))
    assert jax.jit(algo.act)(state, obs).shape == (2,)


def test_config_checks_registry_presets_and_wrong_action_space():
    assert "nec" in registry.algo_names() and registry.algo_spec("nec").loop == "off_policy"
    assert registry.presets()[("nec", "CartPole-v1")] == "nec_cartpole.yaml"
    assert registry.presets()[("nec", "Breakout-MinAtar")] == "nec_minatar.yaml"
    run = load_config(CONFIGS / "nec_cartpole.yaml")
    assert run.algo == "nec" and isinstance(run.agent, nec.Config)
    assert (run.agent.key_size, run.agent.k, run.agent.n_step, run.agent.alpha) == (64, 50, 50, 0.1)
    assert load_config(CONFIGS / "nec_minatar.yaml").env == "Breakout-MinAtar"
    a = load_config(CONFIGS / "nec_atari.yaml").agent
    assert (a.key_size, a.k, a.capacity, a.alpha, a.delta, a.n_step) == (128, 50, 500_000, 0.1, 1e-3, 100)
    for changes, message in [(dict(k=65), "k \\(neighbours\\) must be in \\[1, capacity=64\\]"),
                             (dict(key_size=0), "key_size must be at least 1"), (dict(alpha=0.0), "alpha"),
                             (dict(alpha=1.5), "alpha"), (dict(delta=0.0), "delta"), (dict(n_step=0), "n_step"),
                             (dict(epsilon_end=0.5, epsilon_start=0.1), "must not exceed")]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(TINY, **changes).validate()
    cont = EnvSpec("cont", (3,), "float32", Box.symmetric((1,)), 1, 10)
    with pytest.raises(ValueError, match="discrete actions"):
        nec.make(TINY, cont)


TINY_RUN = ["--set", "total_steps=800", "--set", "learning_starts=100", "--set", "eval_episodes=2",
            "--set", "log_interval=400", "--set", "checkpoint_interval=400", "--set", "progress=false",
            "--set", "agent.capacity=64", "--set", "agent.k=4", "--set", "agent.key_size=8",
            "--set", "agent.hidden=[16]", "--set", "agent.replay_size=400", "--set", "agent.n_step=5"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nec_runs") / "nec"
    proc = run_in_process("train.py", "--algo", "nec", "--env", "CartPole-v1", "--run-dir", str(run_dir), *TINY_RUN)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


def test_train_py_runs_nec_and_params_ckpt_holds_the_dictionary(tiny_run):
    run_dir, proc = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "nec" and summary["total_steps"] == 800
    assert "final eval" in proc.stdout
    config = load_config(run_dir / "config.yaml")
    env = registry.make_env(config.env, config.num_envs)
    algo = nec.make(config.agent, env.spec, kernels=xla_cpu.select(config.kernels, "cpu"))  # as the run made it
    agent = play.load_agent(run_dir, None, algo, config)
    size = np.asarray(agent.dnd.size)
    assert size.shape == (1, 2) and size.sum() > 0 and (size <= 64).all()
    assert int(np.asarray(agent.replay.size)) > 0
    from angle_jax import checkpoint as ckpt
    last = ckpt.CheckpointManager(run_dir / "checkpoints").path_for(800)
    full = play._agent_from_checkpoint(last, agent, config)
    chex.assert_trees_all_equal(full.dnd, agent.dnd)


def test_resume_from_the_middle_checkpoint_is_bit_identical(tiny_run, tmp_path):
    """The dictionary, the pending windows and NEC's replay are in the checkpointed agent state."""
    import shutil

    from angle_jax import checkpoint as ckpt
    ref_dir, _ = tiny_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(ref_dir, run_dir)
    manager = ckpt.CheckpointManager(run_dir / "checkpoints")
    assert manager.all_steps() == [400, 800]
    manager.path_for(800).unlink()
    for name in ("params.ckpt", "summary.json"):
        (run_dir / name).unlink()
    proc = run_in_process("train.py", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert ckpt.read_meta(run_dir / "params.ckpt")[1] == ckpt.read_meta(ref_dir / "params.ckpt")[1]


@pytest.mark.parametrize("setting,message", [
    ("agent.k=100", "agent.k (neighbours) must be in [1, capacity=64], got 100"),
    ("agent.alpha=0", "agent.alpha (tabular learning rate) must be in (0, 1], got 0.0"),
    ("agent.delta=0", "agent.delta (kernel constant) must be positive and finite, got 0.0"),
    ("agent.key_size=0", "agent.key_size must be at least 1, got 0"),
])
def test_bad_settings_through_the_cli_exit_2_with_one_line_and_write_nothing(tmp_path, setting, message):
    run_dir = tmp_path / "r"
    proc = run_in_process("train.py", "--algo", "nec", "--env", "CartPole-v1", "--run-dir", str(run_dir),
                          "--set", "agent.capacity=64", "--set", setting)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and message in lines[0], proc.stderr
    assert not run_dir.exists()


def test_nec_learns_cartpole_quickly():
    """3,000 env steps: the greedy policy of an empty dictionary (always action 0, return ~9) becomes far
    better (seeds 0-2 reached 103-170 under the suite's compiler settings; 41-161 after 2,000 steps)."""
    env, eval_env = registry.make_env("CartPole-v1", 4), registry.make_env("CartPole-v1", 8)
    config = nec.Config(hidden=(32,), key_size=16, k=8, capacity=256, n_step=10, replay_size=2000, batch_size=32,
                        learning_rate=1e-3, epsilon_decay_steps=1000)
    train = make_train(nec.make(config, env.spec), env, OffPolicyLoop(4, 1, 1, 25, 1, 1), eval_env)
    carry = jax.jit(train.init)(jax.random.PRNGKey(0))
    evaluate = jax.jit(train.evaluate)
    before = float(evaluate(carry.agent, jax.random.PRNGKey(1)).mean())
    carry, logs = jax.jit(train.run, static_argnums=1)(carry, 750)
    after = float(evaluate(carry.agent, jax.random.PRNGKey(1)).mean())
    assert int(carry.iteration) == 750 and np.isfinite(float(logs["loss"]))
    assert int(carry.agent.replay.pos) == 750 % 500      # observe ran once per vectorised step (500 rows)
    assert before < 15 and after > 60, (before, after)


def test_observe_is_refused_by_the_on_policy_loop():
    from angle_jax.algos import ppo
    from angle_jax.training import on_policy

    env = registry.make_env("CartPole-v1", 2)
    algo = ppo.make(ppo.Config(), env.spec)._replace(observe=lambda state, transition, key: state)
    with pytest.raises(ValueError, match="only in the off-policy loop"):
        on_policy.make_train(algo, env, on_policy.OnPolicyLoop(2, 8, 1))
