"""envpool adapter, name mapping, frame-deduplicated replay and the Nature CNN.

Small rollouts (2-3 envs, a few hundred steps, 2 threads); every test has a timeout
because a misused envpool can block forever.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

envpool = pytest.importorskip("envpool")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from angle_jax import registry  # noqa: E402
from angle_jax.core.types import Transition  # noqa: E402
from angle_jax.envs import envpool_adapter as ea  # noqa: E402
from angle_jax.envs.base import Discrete  # noqa: E402
from angle_jax.envs.wrappers import EpisodeStatistics  # noqa: E402
from angle_jax.replay.frames import bytes_per_transition, frame_replay, rebuild_stacks  # noqa: E402
from conftest import scan_rollout  # noqa: E402

# its module-scoped fixtures are built once: all its tests run on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("envpool")

THREADS = 2


def rollout(env, num_steps: int, seed: int = 0):
    """Random-action rollout inside one jit(lax.scan); returns numpy arrays, time-major."""
    spec = env.spec
    actions = jax.random.randint(jax.random.PRNGKey(seed), (num_steps, spec.num_envs), 0, spec.action_space.n,
                                 dtype=jnp.int32)
    obs, ts = scan_rollout(env, actions, jax.random.PRNGKey(seed))
    return obs, np.asarray(actions), ts


@pytest.fixture(scope="module")
def breakout():
    """Breakout with episodic life: lives end every few dozen random steps."""
    env = ea.EnvpoolEnv("Breakout-v5", 3, seed=3, num_threads=THREADS, episodic_life=True, reward_clip=True)
    return env, rollout(env, 300)


# ---- names -----------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_names_map_to_envpool_with_standard_preprocessing():
    task, kw = ea.resolve_name("BreakoutNoFrameskip-v4")
    assert task == "Breakout-v5"
    assert kw["noop_max"] == 30 and kw["frame_skip"] == 4 and kw["stack_num"] == 4
    assert (kw["img_height"], kw["img_width"], kw["gray_scale"]) == (84, 84, True)
    assert kw["episodic_life"] and kw["reward_clip"] and kw["max_episode_steps"] * 4 == 108_000
    assert ea.resolve_name("Pong-v5") == ("Pong-v5", {})
    assert ea.resolve_name("HalfCheetah-v4") == ("HalfCheetah-v4", {})
    names = registry.env_names()
    for n in ("Pong-v5", "Breakout-v5", "PongNoFrameskip-v4", "BreakoutNoFrameskip-v4", "Hopper-v4"):
        assert n in names
    assert "CartPole-v1" not in ea.envpool_names()  # gymnax keeps its own names


@pytest.mark.timeout(60)
def test_static_lists_match_envpool_registry():
    live = set(envpool.list_all_envs())
    assert {f"{g}-v5" for g in ea.ATARI_GAMES} <= live
    assert set(ea.MUJOCO_IDS) <= live


@pytest.mark.timeout(60)
def test_bad_names_suggest():
    with pytest.raises(registry.UnknownNameError, match="PongNoFrameskip-v4"):
        ea.resolve_name("PongNoFrameskip-v5")
    with pytest.raises(registry.UnknownNameError, match="Breakout-v5"):
        registry.make_raw_env("Breakuot-v5", 2)


@pytest.mark.timeout(120)
def test_registration_does_not_import_envpool_and_missing_envpool_is_clear():
    code = (
        "import sys\n"
        "from angle_jax import registry\n"
        "assert 'Pong-v5' in registry.env_names()\n"
        "assert 'envpool' not in sys.modules, 'registration imported envpool'\n"
        "sys.modules['envpool'] = None\n"  # as if not installed
        "import importlib.util\n"
        "importlib.util.find_spec = lambda name, *a: None\n"
        "try:\n"
        "    registry.make_raw_env('Pong-v5', 2)\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'angle_jax[atari]'\" in str(e), e\n"
        "    print('OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


# ---- adapter ---------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_spec_shapes_dtypes_and_jit_step():
    env = registry.make_raw_env("Pong-v5", 2, num_threads=THREADS)
    spec = env.spec
    assert env.backend == "xla"
    assert spec.obs_shape == (4, 84, 84) and spec.obs_dtype == "uint8"
    assert spec.action_space == Discrete(6) and spec.max_episode_steps == 27_000
    obs, state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == jnp.uint8
    state, ts = jax.jit(env.step)(state, jnp.zeros(2, jnp.int32), jax.random.PRNGKey(1))
    assert ts.obs.shape == ts.next_obs.shape == (2, 4, 84, 84) and ts.obs.dtype == jnp.uint8
    assert ts.reward.dtype == jnp.float32 and ts.reward.shape == (2,)
    assert ts.terminated.dtype == ts.truncated.dtype == jnp.bool_
    assert ts.info["raw_reward"].shape == (2,) and ts.info["episode_end"].dtype == jnp.bool_


@pytest.mark.timeout(180)
def test_scan_rollout_protocol_semantics(breakout):
    env, (obs, act, ts) = breakout
    done = ts.terminated | ts.truncated
    end = ts.info["episode_end"]
    assert done.sum() >= 6, "rollout should cross several life boundaries"
    assert end.sum() >= 1, "rollout should finish at least one game"
    # obs the agent acts on next: the successor, or the reset stack where an episode ended
    cont = ~done
    assert np.array_equal(ts.obs[cont], ts.next_obs[cont])
    assert np.array_equal(obs[1:], ts.obs[:-1])
    life = done & ~end
    game = end
    # a lost life: envpool moves the final stack on by one frame; a new game repeats its first frame
    assert np.array_equal(ts.obs[life][:, :3], ts.next_obs[life][:, 1:])
    g = ts.obs[game]
    assert np.all(g == g[:, :1])
    assert not np.array_equal(ts.obs[game], ts.next_obs[game])
    # episode_end only at real game ends; every game end is a done step
    assert np.all(done[end])


@pytest.mark.timeout(180)
def test_matches_plain_envpool_reference(breakout):
    """The adapter's transitions equal a plain envpool pool's, with its reset steps taken out."""
    env, (obs, act, ts) = breakout
    t_max, n = act.shape
    ref = envpool.make("Breakout-v5", env_type="gymnasium", num_envs=n, num_threads=THREADS, seed=3,
                       episodic_life=True, reward_clip=True)
    first, _ = ref.reset()
    assert np.array_equal(first, obs[0])
    ptr = np.zeros(n, int)
    pending = np.zeros(n, bool)
    seq = [[] for _ in range(n)]  # per env: (next_obs, reward, term, trunc, reset_obs or None)
    while ptr.min() < t_max:
        a = np.array([act[min(ptr[i], t_max - 1), i] for i in range(n)], np.int32)
        o, r, te, tr, _ = ref.step(a)
        for i in range(n):
            if pending[i]:
                if seq[i] and seq[i][-1][4] is None:
                    seq[i][-1] = seq[i][-1][:4] + (o[i],)
            elif ptr[i] < t_max:
                seq[i].append((o[i], r[i], te[i], tr[i], None))
                ptr[i] += 1
        pending = (te | tr) & ~pending
    for i in range(n):
        for t in range(t_max):
            nxt, r, te, tr, reset_obs = seq[i][t]
            assert np.array_equal(ts.next_obs[t, i], nxt), (i, t)
            assert ts.reward[t, i] == r and ts.terminated[t, i] == te and ts.truncated[t, i] == tr
            if te or tr:
                if reset_obs is not None:
                    assert np.array_equal(ts.obs[t, i], reset_obs), (i, t)
            else:
                assert np.array_equal(ts.obs[t, i], nxt)
    ref.close()


@pytest.mark.timeout(180)
def test_clipped_training_reward_and_unclipped_game_return():
    """MsPacman pays 10 per pellet: training reward is clipped, logged returns are not."""
    env = EpisodeStatistics(ea.EnvpoolEnv("MsPacmanNoFrameskip-v4", 2, seed=1, num_threads=THREADS))
    n_steps = 400
    obs, act, ts = rollout(env, n_steps, seed=1)
    raw, rew = ts.info["raw_reward"], ts.reward
    assert raw.max() >= 10.0 and set(np.unique(rew)) <= {-1.0, 0.0, 1.0}
    assert np.array_equal(np.sign(raw), rew)
    # running return sums raw rewards over the whole game, across lives
    done_life = ts.terminated & ~ts.info["episode_end"]
    assert done_life.sum() >= 1
    ep_ret = ts.info["episode_return"]
    assert np.array_equal(ts.info["episode_done"], ts.info["episode_end"])
    for i in range(2):
        running = 0.0
        for t in range(n_steps):
            running += raw[t, i]
            assert ep_ret[t, i] == pytest.approx(running)
            if ts.info["episode_end"][t, i]:
                running = 0.0


@pytest.mark.timeout(180)
def test_callback_backend_matches_xla():
    a = ea.EnvpoolEnv("Breakout-v5", 2, seed=5, num_threads=THREADS, episodic_life=True)
    b = ea.EnvpoolEnv("Breakout-v5", 2, seed=5, num_threads=THREADS, episodic_life=True, backend="callback")
    assert b.backend == "callback"
    _, _, ta = rollout(a, 80, seed=2)
    _, _, tb = rollout(b, 80, seed=2)
    assert (ta.terminated | ta.truncated).any()
    for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb)):
        assert np.array_equal(x, y)


@pytest.mark.timeout(120)
def test_mujoco_spec_and_backend_choice():
    env = ea.EnvpoolEnv("HalfCheetah-v4", 2, num_threads=THREADS)
    spec = env.spec
    assert spec.obs_shape == (17,) and spec.obs_dtype == "float32"
    assert spec.action_space.shape == (6,) and spec.action_space.low == (-1.0,) * 6
    assert env.backend == ("xla" if jax.config.jax_enable_x64 else "callback")
    obs, state = env.reset(jax.random.PRNGKey(0))
    state, ts = jax.jit(env.step)(state, jnp.zeros((2, 6), jnp.float32), jax.random.PRNGKey(0))
    assert ts.obs.dtype == jnp.float32 and ts.obs.shape == (2, 17) and "raw_reward" not in ts.info
    if not jax.config.jax_enable_x64:
        with pytest.raises(RuntimeError, match="JAX_ENABLE_X64"):
            ea.EnvpoolEnv("HalfCheetah-v4", 2, num_threads=THREADS, backend="xla")


# ---- frame replay ----------------------------------------------------------------

def _fill(buffer, obs, act, ts):
    t_max = act.shape[0]
    ex = Transition(obs[0], act[0], ts.reward[0], ts.terminated[0], ts.truncated[0], ts.next_obs[0])
    state = buffer.init(ex)
    add = jax.jit(buffer.add)
    for t in range(t_max):
        state = add(state, Transition(obs[t], act[t], ts.reward[t], ts.terminated[t], ts.truncated[t],
                                      ts.next_obs[t]))
    return state


def _check_all_rows(state, obs, ts, skip_oldest: int):
    """Rebuilt obs / next_obs of every stored (row, env) equal the env's own stacks."""
    capacity, n = state.reward.shape
    t_max = obs.shape[0]
    size = int(state.size)
    first_t = t_max - size + skip_oldest
    ts_idx = np.arange(first_t, t_max)
    rows = np.repeat(ts_idx % capacity, n)
    envs = np.tile(np.arange(n), len(ts_idx))
    o = np.asarray(rebuild_stacks(state, jnp.asarray(rows), jnp.asarray(envs), successor=False))
    x = np.asarray(rebuild_stacks(state, jnp.asarray(rows), jnp.asarray(envs), successor=True))
    t_rep = np.repeat(ts_idx, n)
    assert np.array_equal(o, obs[t_rep, envs])
    assert np.array_equal(x, ts.next_obs[t_rep, envs])


@pytest.mark.timeout(180)
def test_frame_replay_rebuilds_breakout_stacks_across_lives_and_games(breakout):
    env, (obs, act, ts) = breakout
    state = _fill(frame_replay(400, 32), obs, act, ts)
    _check_all_rows(state, obs, ts, skip_oldest=0)
    # wrapped store: every row but the K oldest keeps its full history
    state = _fill(frame_replay(120, 32), obs, act, ts)
    _check_all_rows(state, obs, ts, skip_oldest=4)


@pytest.mark.timeout(180)
def test_frame_replay_rebuilds_pong_stacks_and_samples():
    env = ea.EnvpoolEnv("Pong-v5", 2, seed=0, num_threads=THREADS)
    obs, act, ts = rollout(env, 250)
    buffer = frame_replay(300, 16, n_step=3)
    state = _fill(buffer, obs, act, ts)
    _check_all_rows(state, obs, ts, skip_oldest=0)
    batch = jax.jit(buffer.sample)(state, jax.random.PRNGKey(0))
    assert batch.obs.shape == (16, 4, 84, 84) and batch.obs.dtype == jnp.uint8
    assert batch.rewards.shape == (16, 3) and batch.action.dtype == jnp.int32
    rows, envs = np.asarray(batch.index) // 2, np.asarray(batch.index) % 2
    assert np.array_equal(np.asarray(batch.obs), obs[rows, envs])
    assert bool(buffer.can_sample(state)) and buffer.update_priorities is None


@pytest.mark.timeout(60)
def test_frame_replay_bytes_per_transition():
    n = 4
    ex = Transition(jnp.zeros((n, 4, 84, 84), jnp.uint8), jnp.zeros(n, jnp.int32), jnp.zeros(n), jnp.zeros(n, bool),
                    jnp.zeros(n, bool), jnp.zeros((n, 4, 84, 84), jnp.uint8))
    state = jax.eval_shape(frame_replay(10_000, 32).init, ex)
    per = bytes_per_transition(state)
    assert per <= 7_500, per
    naive = 2 * 4 * 84 * 84
    assert naive / per > 7


# ---- network ---------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_nature_cnn_on_uint8_stacks():
    from angle_jax.networks.cnn import NatureCNN

    net = NatureCNN()
    x = jnp.full((3, 4, 84, 84), 255, jnp.uint8)
    params = net.init(jax.random.PRNGKey(0), x)
    y = net.apply(params, x)
    assert y.shape == (3, 512) and y.dtype == jnp.float32
    kernel = params["params"]["Conv_0"]["kernel"]
    assert kernel.shape == (8, 8, 4, 32)
    # scaled inside: uint8 255 channels-first and float 1.0 channels-last give the same features
    y2 = NatureCNN(channels_first=False).apply(params, jnp.ones((3, 84, 84, 4), jnp.float32))
    assert np.allclose(np.asarray(y), np.asarray(y2), atol=1e-5)
    assert NatureCNN(features=None).apply(params, x[:1]).shape == (1, 3136)
