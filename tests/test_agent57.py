"""Agent57 / NGU: the two heads' targets and combined Q against hand computations, the policy index and the
intrinsic reward from the loop's observe hook into the replay and the learner (a step-by-step NumPy reference
with the family's β_j and γ_j), the memories and bandits at episode ends, the inverse-dynamics embedding
learning on a toy env, bad settings refused with one line, and a tiny train.py run.

(The bandit's switching-arm test and the episodic reward against the paper's formula live in
tests/test_bandit.py and tests/test_episodic_novelty.py.)"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from angle_jax import registry
from angle_jax.algos import agent57
from angle_jax.config import ConfigError, load_config
from angle_jax.core.types import SequenceStep
from angle_jax.networks.inverse_dynamics import InverseDynamics, inverse_dynamics_loss, sequence_pairs
from angle_jax.training.off_policy import OffPolicyLoop, make_train
from conftest import run_in_process
from test_episodic_novelty import reference_reward

EPS = 1e-3


def h64(x, eps=EPS):
    x = np.asarray(x, np.float64)
    return np.sign(x) * (np.sqrt(np.abs(x) + 1.0) - 1.0) + eps * x


def h64_inverse(y, eps=EPS):
    """h⁻¹ by solving ε s² + s − (1 + ε + |y|) = 0 for s = √(|x| + 1)."""
    y = np.asarray(y, np.float64)
    s = (-1.0 + np.sqrt(1.0 + 4.0 * eps * (1.0 + eps + np.abs(y)))) / (2.0 * eps)
    return np.sign(y) * (s * s - 1.0)


def ngu_family(n, beta_max, gamma_max, gamma_min):
    """NGU's schedules written out for N = 3 (j = 1 is the sigmoid's only middle member)."""
    assert n == 3
    betas = np.array([0.0, beta_max / (1.0 + np.exp(-10.0)), beta_max])
    gammas = np.array([gamma_max, 1.0 - np.sqrt((1.0 - gamma_max) * (1.0 - gamma_min)), gamma_min])
    return betas, gammas


# ---- the two heads ------------------------------------------------------------------------------

def test_two_head_targets_by_hand():
    """One step (U = 1, n = 1) for two sequences: the bootstrap action from the online heads combined with β of
    the bootstrap step, each head's target net valued there, each head's own reward, γ of the step's policy."""
    q_online = np.zeros((2, 2, 2, 3), np.float32)
    q_target = np.zeros((2, 2, 2, 3), np.float32)
    # sequence 0, bootstrap step 1: Q_e favours action 0, Q_i action 2; β = 0.5 makes the combination choose 2
    q_online[1, 0, 0] = [2.0, 0.0, 1.0]
    q_online[1, 0, 1] = [0.0, 0.0, 3.0]
    q_target[1, 0, 0] = [9.0, 9.0, 0.5]
    q_target[1, 0, 1] = [9.0, 9.0, 1.5]
    # sequence 1: the same heads at β = 0 choose action 0 (Q_e alone)
    q_online[1, 1] = q_online[1, 0]
    q_target[1, 1, 0] = [0.25, 9.0, 9.0]
    q_target[1, 1, 1] = [-1.0, 9.0, 9.0]
    reward = np.array([[1.0, -2.0], [0.0, 0.0]], np.float32)
    intrinsic = np.array([[0.5, 3.0], [0.0, 0.0]], np.float32)
    beta = np.array([[0.1, 0.1], [0.5, 0.0]], np.float32)
    gamma = np.array([[0.9, 0.99]], np.float32)
    never = np.zeros((2, 2), bool)
    t_e, t_i, valid = agent57.two_head_targets(jnp.asarray(q_online), jnp.asarray(q_target), jnp.asarray(reward),
                                               jnp.asarray(intrinsic), never, never, jnp.asarray(beta),
                                               jnp.asarray(gamma), 1, EPS)
    combined0 = h64(h64_inverse([2.0, 0.0, 1.0]) + 0.5 * h64_inverse([0.0, 0.0, 3.0]))
    assert int(np.argmax(combined0)) == 2
    want_e = [h64(1.0 + 0.9 * h64_inverse(0.5)), h64(-2.0 + 0.99 * h64_inverse(0.25))]
    want_i = [h64(0.5 + 0.9 * h64_inverse(1.5)), h64(3.0 + 0.99 * h64_inverse(-1.0))]
    np.testing.assert_allclose(np.asarray(t_e)[0], want_e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(t_i)[0], want_i, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(valid))


# ---- a tiny agent on DeepSea -------------------------------------------------------------------------

NUM_ENVS = 4
LOOP = OffPolicyLoop(num_envs=NUM_ENVS, capacity_per_env=16, batch_size=4, learning_starts_iters=0,
                     train_frequency=1, gradient_steps=1)
CONFIG = agent57.Config(hidden=(8,), core_size=8, head_hidden=(8,), burn_in=2, unroll=3, n_step=1, period=2,
                        target_update_interval=2, num_policies=3, beta_max=0.3, gamma_max=0.99, gamma_min=0.9,
                        bandit_window=4, memory_size=8, episodic_k=2, embed_dim=4, embed_hidden=(8,),
                        classifier_hidden=8, rnd_hidden=(8,), rnd_embed_dim=4, max_multiplier=5.0)
ITERS = 24


def deep_sea(n=NUM_ENVS):
    return registry.make_env("DeepSea-bsuite", n, size=3)   # 3-step episodes


@pytest.fixture(scope="module")
def loop():
    """The loop run one iteration at a time: the carry before every iteration and at the end."""
    env = deep_sea()
    algo = agent57.make(CONFIG, env.spec)
    train = make_train(algo, env, LOOP, env)
    run1 = jax.jit(lambda c: train.run(c, 1))
    carries = [jax.jit(train.init)(jax.random.PRNGKey(0))]
    for _ in range(ITERS):
        carries.append(run1(carries[-1])[0])
    return env, algo, jax.device_get(carries)


def test_explore_acts_on_each_env_s_combined_q_and_act_on_the_exploit_arm(loop):
    env, algo, carries = loop
    state = carries[0].agent
    state = state.replace(arm=jnp.array([0, 1, 2, 2], jnp.int32),
                          hparams=state.hparams.replace(epsilon=jnp.float32(0.0)))
    obs = jnp.asarray(carries[0].obs)
    obs = obs.at[1:].set(jax.random.uniform(jax.random.PRNGKey(5), obs[1:].shape))  # four different inputs
    core = algo.memory.initial(NUM_ENVS)
    reset = jnp.ones((NUM_ENVS,), bool)
    net = agent57.network(CONFIG, env.spec)
    one_hot = jax.nn.one_hot(state.arm, 3)
    apply = jax.jit(net.apply)
    q, _ = apply(state.params, (obs, one_hot), core, reset)
    q = np.asarray(q, np.float64)
    betas, _ = ngu_family(3, 0.3, 0.99, 0.9)
    combined = h64(h64_inverse(q[:, 0]) + betas[np.asarray(state.arm)][:, None] * h64_inverse(q[:, 1]))
    action, _ = jax.jit(algo.explore)(state, obs, core, reset, jax.random.PRNGKey(6), 0)
    np.testing.assert_array_equal(np.asarray(action), np.argmax(combined, axis=-1))
    q0, _ = apply(state.params, (obs, jax.nn.one_hot(jnp.zeros(NUM_ENVS, jnp.int32), 3)), core, reset)
    greedy, _ = jax.jit(algo.act)(state, obs, core, reset)
    np.testing.assert_array_equal(np.asarray(greedy), np.argmax(np.asarray(q0)[:, 0], axis=-1))


def row_of(i):
    return i % LOOP.capacity_per_env


def test_each_stored_step_holds_the_policy_it_was_taken_with_and_its_intrinsic_reward(loop):
    env, algo, carries = loop
    idm = agent57.embedding_network(CONFIG, env.spec)
    rnd = agent57.rnd_network(CONFIG, env.spec)
    data = carries[-1].buffer.data
    checked = 0
    for i in range(ITERS - LOOP.capacity_per_env, ITERS):
        before, after = carries[i].agent, carries[i + 1].agent
        stored = jax.tree.map(lambda d: d[row_of(i)], data)
        np.testing.assert_array_equal(stored.obs, carries[i].obs)
        np.testing.assert_array_equal(stored.action.policy, before.arm)          # the arm it acted with
        done = np.asarray(stored.terminated | stored.truncated)
        # the intrinsic reward of the successor, for the steps whose successor is the next carry's obs
        obs, nxt = np.asarray(carries[i].obs, np.float32), np.asarray(carries[i + 1].obs, np.float32)
        emb = np.asarray(idm.apply(before.embed_params, obs, method=idm.embed), np.float64)
        emb_next = np.asarray(idm.apply(before.embed_params, nxt, method=idm.embed), np.float64)
        mem = np.array(before.memory.embeddings, np.float64)
        count = np.array(before.memory.count)
        mem[np.arange(NUM_ENVS), count % CONFIG.memory_size] = emb                # x_t added first
        r_ep, _, _ = reference_reward(mem, count + 1, before.memory.dist_mean, before.memory.dist_count, emb_next,
                                      CONFIG.episodic_k, CONFIG.cluster_distance, CONFIG.kernel_epsilon,
                                      CONFIG.pseudo_count, CONFIG.similarity_max)
        norm = np.clip((nxt - after.obs_stats.mean) / np.sqrt(after.obs_stats.var + 1e-8), -5, 5)
        err = np.mean((np.asarray(rnd.apply(before.rnd_params, norm)) -
                       np.asarray(rnd.apply(before.rnd_target_params, norm))) ** 2, axis=-1)
        alpha = 1.0 + (err - after.error_stats.mean) / np.sqrt(after.error_stats.var + 1e-8)
        want = r_ep * np.clip(alpha, 1.0, CONFIG.max_multiplier)
        np.testing.assert_allclose(stored.action.intrinsic[~done], want[~done], rtol=2e-4)
        checked += int(np.sum(~done))
        # the memory: emptied where the episode ended, one more embedding elsewhere
        np.testing.assert_array_equal(after.memory.count, np.where(done, 0, count + 1))
    assert checked >= 20


def test_bandits_go_round_the_arms_then_record_each_episode_s_extrinsic_return(loop):
    _, _, carries = loop
    final = carries[-1].agent.controller
    ends = np.zeros(NUM_ENVS, int)
    returns, intrinsic = np.zeros(NUM_ENVS), np.zeros(NUM_ENVS)
    for i in range(ITERS):
        before, after = carries[i].agent, carries[i + 1].agent
        stored = jax.tree.map(lambda d: d[row_of(i)], carries[i + 1].buffer.data)
        done = np.asarray(stored.terminated | stored.truncated)
        returns += np.asarray(stored.reward, np.float64)
        intrinsic += np.asarray(stored.action.intrinsic, np.float64)
        for e in np.flatnonzero(done):
            slot = ends[e] % CONFIG.bandit_window
            assert after.controller.arms[e, slot] == before.arm[e]
            np.testing.assert_allclose(after.controller.returns[e, slot], returns[e], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(after.last_return[e], [returns[e], intrinsic[e]], rtol=1e-5, atol=1e-6)
            if ends[e] + 1 < CONFIG.num_policies:                       # arms never tried come first, in order
                assert after.arm[e] == ends[e] + 1
            ends[e] += 1
            returns[e] = intrinsic[e] = 0.0
        np.testing.assert_array_equal(after.arm[~done], before.arm[~done])   # no switch inside an episode
    np.testing.assert_array_equal(final.count, ends)
    assert ends.min() >= CONFIG.num_policies + 1                             # past the round-robin


def step_by_step(apply, params, obs, policy, core, reset):
    qs = []
    for t in range(obs.shape[0]):
        q, core = apply(params, (obs[t], jax.nn.one_hot(policy[t], CONFIG.num_policies)), core, reset[t])
        qs.append(q)
    return np.asarray(jnp.stack(qs), np.float64)


def test_the_learner_uses_each_step_s_policy_with_its_beta_and_gamma(loop):
    """The loss of an update on a sampled batch, from `net.apply` one step at a time with each stored step's
    one-hot j, the family's β_j and γ_j written out in NumPy, and the targets computed by hand."""
    env, algo, carries = loop
    buffer = algo.make_buffer(LOOP)
    batch = jax.device_get(jax.jit(buffer.sample)(carries[-1].buffer, jax.random.PRNGKey(11)))
    assert batch.policy.shape == batch.intrinsic.shape == batch.reward.shape
    assert len(np.unique(batch.policy)) >= 2 and np.any(batch.reset[1:])
    state = carries[ITERS - 1].agent        # 23 updates: the target (copied every 2) differs from the online net
    _, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(0))
    net = agent57.network(CONFIG, env.spec)
    apply = jax.jit(net.apply)
    q_on = step_by_step(apply, state.params, batch.obs, batch.policy, batch.core, batch.reset)
    q_tg = step_by_step(apply, state.target_params, batch.obs, batch.policy, batch.core, batch.reset)
    betas, gammas = ngu_family(3, CONFIG.beta_max, CONFIG.gamma_max, CONFIG.gamma_min)
    bi, U, B = CONFIG.burn_in, CONFIG.unroll, LOOP.batch_size
    td = np.zeros((2, U, B))
    valid = np.zeros((U, B), bool)
    for u in range(U):
        t = bi + u
        for b in range(B):
            j, j_next = batch.policy[t, b], batch.policy[t + 1, b]
            combined = h64(h64_inverse(q_on[t + 1, b, 0]) + betas[j_next] * h64_inverse(q_on[t + 1, b, 1]))
            a_next = np.argmax(combined)
            valid[u, b] = batch.terminated[t, b] or not batch.truncated[t, b]
            for head, r in ((0, batch.reward[t, b]), (1, batch.intrinsic[t, b])):
                boot = 0.0 if batch.terminated[t, b] else gammas[j] * h64_inverse(q_tg[t + 1, b, head, a_next])
                td[head, u, b] = h64(r + boot) - q_on[t, b, head, batch.action[t, b]]
    count = np.maximum(valid.sum(0), 1)
    losses = [np.mean(batch.weights * (0.5 * td[h] ** 2 * valid).sum(0) / count) for h in (0, 1)]
    np.testing.assert_allclose(float(metrics["loss_extrinsic"]), losses[0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(metrics["loss_intrinsic"]), losses[1], rtol=1e-4, atol=1e-7)
    # with another stored policy the same batch gives another loss (j is an input and picks β_j, γ_j)
    other = batch.replace(policy=(batch.policy + 1) % CONFIG.num_policies)
    _, moved = jax.jit(algo.update)(state, other, jax.random.PRNGKey(0))
    assert abs(float(moved["loss"]) - float(metrics["loss"])) > 1e-6


def test_ngu_keeps_env_i_on_policy_i_mod_n_across_episode_ends():
    env = deep_sea()
    algo = agent57.make(agent57.NGUConfig(**{**vars(CONFIG), "meta_controller": False}), env.spec)
    state = algo.init(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(state.arm, [0, 1, 2, 0])
    obs, _ = env.reset(jax.random.PRNGKey(1))
    done = jnp.array([True, False, True, True])
    step = SequenceStep(obs, jnp.zeros(NUM_ENVS, jnp.int32), jnp.ones(NUM_ENVS), done, jnp.zeros(NUM_ENVS, bool),
                        jnp.ones(NUM_ENVS, bool), algo.memory.initial(NUM_ENVS))
    after, tagged = jax.jit(algo.observe)(state, step, obs, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(after.arm, [0, 1, 2, 0])
    np.testing.assert_array_equal(tagged.policy, [0, 1, 2, 0])
    np.testing.assert_array_equal(after.memory.count, [0, 1, 0, 0])
    np.testing.assert_array_equal(after.episode_return[:, 0], [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(after.last_return[:, 0], [1.0, 0.0, 1.0, 1.0])
    assert registry.algo_spec("ngu").Config().meta_controller is False


# ---- the inverse-dynamics embedding ---------------------------------------------------------------

def test_inverse_dynamics_embedding_learns_which_action_was_taken_on_cartpole():
    """Random-action CartPole steps: the push (left/right) shows in the velocity change only, so the classifier
    must read it from f(x_t) and f(x_{t+1}); its loss falls from ln 2 to well below."""
    env = registry.make_env("CartPole-v1", 64)
    obs, state = env.reset(jax.random.PRNGKey(0))

    def collect(c, k):
        state, obs = c
        a = jax.random.randint(k, (64,), 0, 2)
        state, ts = env.step(state, a, jax.random.fold_in(k, 1))
        return (state, ts.obs), (obs, a, ts.next_obs, ts.done)

    _, (x, a, x_next, done) = jax.lax.scan(collect, (state, obs), jax.random.split(jax.random.PRNGKey(1), 8))
    x, a, x_next = x.reshape(-1, 4), a.reshape(-1), x_next.reshape(-1, 4)
    net = InverseDynamics(num_actions=2, obs_shape=(4,), embed_dim=8, hidden=(32,), classifier_hidden=32)
    params = net.init(jax.random.PRNGKey(2), x[:1], x_next[:1])
    tx = optax.adam(3e-3)

    def train(params):
        def step(c, _):
            params, opt = c
            loss, g = jax.value_and_grad(lambda p: inverse_dynamics_loss(net.apply(p, x, x_next), a))(params)
            updates, opt = tx.update(g, opt)
            return (optax.apply_updates(params, updates), opt), loss

        return jax.lax.scan(step, (params, tx.init(params)), None, length=300)[1]

    losses = np.asarray(jax.jit(train)(params))
    assert abs(losses[0] - np.log(2)) < 0.05
    assert losses[-10:].mean() < 0.35 and losses[-10:].mean() < 0.5 * losses[0]
    assert net.apply(params, x[:3], method=net.embed).shape == (3, 8)


def test_inverse_dynamics_pairs_leave_out_episode_starts_and_the_loss_by_hand():
    obs = jnp.arange(5.0)[:, None, None] * jnp.ones((5, 2, 3))
    action = jnp.array([[0, 1], [1, 1], [0, 0], [1, 0], [1, 1]])
    reset = jnp.array([[True, True], [False, False], [True, False], [False, False], [False, True]])
    x, x_next, a, same = sequence_pairs(obs, action, reset)
    assert x.shape == x_next.shape == (4, 2, 3)
    np.testing.assert_array_equal(x_next[:, 0, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(same, [[True, True], [False, True], [True, True], [True, False]])
    logits = jnp.array([[0.0, np.log(3.0)], [2.0, 2.0]])
    # −log(1/4) for the first (action 0 against odds 1:3), the second masked out
    np.testing.assert_allclose(float(inverse_dynamics_loss(logits, jnp.array([0, 1]), jnp.array([True, False]))),
                               np.log(4.0), rtol=1e-6)


# ---- bad input ---------------------------------------------------------------------------------

BASE = ["algo=agent57", "env=DeepSea-bsuite"]


@pytest.mark.parametrize("settings,message", [
    (["agent.num_policies=4", "agent.betas=[0.0,0.1,0.2]"], "agent.betas must list num_policies = 4 values, got 3"),
    (["agent.num_policies=2", "agent.gammas=[0.99,1.0]"], "agent.gammas must be in (0, 1), got 1.0 at index 1"),
    (["agent.num_policies=2", "agent.betas=[0.0,-0.5]"], "agent.betas must be finite and >= 0, got -0.5"),
    (["agent.gamma_max=1.0"], "agent.gamma_max must be in (0, 1), got 1.0"),
    (["agent.gamma_min=0.999", "agent.gamma_max=0.99"], "agent.gamma_min (0.999) must not exceed gamma_max"),
    (["agent.memory_size=5", "agent.episodic_k=10"], "agent.memory_size (5) must be at least episodic_k (10)"),
    (["agent.bandit_epsilon=1.5"], "agent.bandit_epsilon must be in [0, 1], got 1.5"),
    (["agent.bandit_window=0"], "agent.bandit_window must be >= 1"),
    (["agent.max_multiplier=0.5"], "agent.max_multiplier (L) must be >= 1"),
    (["agent.period=0"], "agent.period must be >= 1"),
])
def test_bad_settings_are_refused_naming_the_setting(settings, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + settings)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_train_py_refuses_bad_settings_with_one_line_and_code_2(tmp_path):
    for args, message in [
        (["--set", "agent.num_policies=3", "--set", "agent.gammas=[0.9,0.99]"], "agent.gammas must list"),
        (["--env", "Pendulum-v1"], "continuous actions"),
        (["--set", "buffer_size=64"], "a stored sequence"),
    ]:
        env = [] if "--env" in args else ["--env", "DeepSea-bsuite"]
        proc = run_in_process("train.py", "--algo", "agent57", *env, *args, "--run-dir", str(tmp_path / "r"))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert message in lines[0], lines[0]
        assert not (tmp_path / "r").exists()


# ---- train.py end to end ----------------------------------------------------------------------------

def test_train_py_runs_agent57_on_a_tiny_budget(tmp_path):
    run = tmp_path / "run"
    tiny = ["total_steps=256", "num_envs=4", "buffer_size=256", "batch_size=4", "learning_starts=64",
            "log_interval=128", "eval_episodes=2", "progress=false", "plots=false", "tensorboard=false",
            "env_kwargs.size=4", "agent.hidden=[8]", "agent.core_size=8", "agent.head_hidden=[8]",
            "agent.burn_in=2", "agent.unroll=4", "agent.n_step=2", "agent.period=4", "agent.num_policies=3",
            "agent.memory_size=8", "agent.episodic_k=2", "agent.embed_dim=4", "agent.embed_hidden=[8]",
            "agent.classifier_hidden=8", "agent.rnd_hidden=[8]", "agent.rnd_embed_dim=4"]
    args = ["--algo", "agent57", "--env", "DeepSea-bsuite", "--run-dir", str(run)]
    for item in tiny:
        args += ["--set", item]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    learned = [r for r in rows if "embed_loss" in r]
    assert learned and all(np.isfinite(r["loss"]) and r["intrinsic_reward"] > 0 for r in learned)
    assert all(abs(sum(r[f"policy_share_{j}"] for j in range(3)) - 1.0) < 1e-5 for r in learned)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algo"] == "agent57" and len(summary["final_eval_returns"][0]) == 2
