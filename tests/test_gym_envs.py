"""Gymnasium (`gym:<id>`) and stable-retro (`retro:<game>`) envs through the host-env adapter:
the adapter against the envs stepped by hand, learning through it, train/resume/play, the
one-line refusals, and Retro's preprocessing on Airstriker (its ROM ships with stable-retro).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium", reason="gym: envs need gymnasium (pip install 'angle_jax[gym]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from angle_jax import registry  # noqa: E402
from angle_jax.config import ConfigError, load_config  # noqa: E402
from angle_jax.envs import gym_adapter, gym_make  # noqa: E402
from angle_jax.envs.base import Box, Discrete  # noqa: E402
from conftest import REPO, run_in_process, run_script, scan_rollout, xla_default_env  # noqa: E402

try:
    import stable_retro  # noqa: F401
    HAVE_RETRO = True
except ImportError:
    HAVE_RETRO = False
needs_retro = pytest.mark.skipif(not HAVE_RETRO, reason="stable-retro is not installed (pip install 'angle_jax[retro]')")

# Trainer runs and subprocess workers: keep these tests on one xdist worker
pytestmark = pytest.mark.xdist_group("gym_envs")


def reference_rollout(env_id, n, seed, actions, **make_kwargs):
    """The same envs stepped by hand: env i reset with seed + i, reset unseeded after each end."""
    envs = [gym.make(env_id, **make_kwargs) for _ in range(n)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    out = {k: [] for k in ("obs", "reward", "terminated", "truncated", "next_obs")}
    for a in actions:
        out["obs"].append(obs.copy())
        nxt, rew, term, trunc = [], [], [], []
        for i, e in enumerate(envs):
            o, r, te, tr, _ = e.step(a[i])
            nxt.append(o), rew.append(r), term.append(te), trunc.append(tr)
            if te or tr:
                o, _ = e.reset()
            obs[i] = o
        out["next_obs"].append(np.stack(nxt))
        out["reward"].append(rew), out["terminated"].append(term), out["truncated"].append(trunc)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.timeout(120)
def test_cartpole_matches_gymnasium_stepped_by_hand(vector="sync"):
    """(The async vector env, one worker process per env, is what the Retro tests run.)"""
    n, steps = 3, 120
    env = registry.make_raw_env("gym:CartPole-v1", n, vector=vector, max_episode_steps=25)
    try:
        assert env.spec.action_space == Discrete(2) and env.spec.obs_shape == (4,)
        assert env.spec.max_episode_steps == 25 and env.vmappable is False
        actions = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (steps, n), 0, 2, dtype=jnp.int32))
        key = jax.random.PRNGKey(7)
        obs, ts = scan_rollout(env, jnp.asarray(actions), key)
    finally:
        env.close()
    seed = int(gym_adapter.reset_seed(key))
    ref = reference_rollout("CartPole-v1", n, seed, actions, max_episode_steps=25)
    np.testing.assert_array_equal(obs, ref["obs"])
    np.testing.assert_array_equal(ts.next_obs, ref["next_obs"])
    np.testing.assert_array_equal(ts.reward, ref["reward"])
    np.testing.assert_array_equal(ts.terminated, ref["terminated"])
    np.testing.assert_array_equal(ts.truncated, ref["truncated"])
    # several episode ends of both kinds, and at each the next obs is the reset one, not the final one
    assert ts.terminated.sum() >= 3 and ts.truncated.sum() >= 1
    done = ts.terminated | ts.truncated
    assert not np.any(np.all(ts.obs[done] == ts.next_obs[done], axis=-1))


@pytest.mark.timeout(120)
def test_box_actions_are_rescaled_from_minus_one_one_and_match_by_hand():
    n, steps = 2, 40
    env = registry.make_env("gym:Pendulum-v1", n, max_episode_steps=15)
    try:
        assert env.spec.action_space == Box.symmetric((1,))
        assert env.unwrapped.spec.action_space == Box((-2.0,), (2.0,), (1,))
        actions = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (steps, n, 1), minval=-1, maxval=1))
        key = jax.random.PRNGKey(5)
        obs, ts = scan_rollout(env, jnp.asarray(actions), key)
    finally:
        env.unwrapped.close()
    ref = reference_rollout("Pendulum-v1", n, int(gym_adapter.reset_seed(key)), 2.0 * actions, max_episode_steps=15)
    np.testing.assert_allclose(obs, ref["obs"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ts.reward, ref["reward"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ts.truncated, ref["truncated"])
    assert ts.truncated.sum() == 2 * n  # two time-limit ends per env in 40 steps
    # EpisodeStatistics sees whole episodes
    assert np.all(ts.info["episode_length"][ts.truncated] == 15)


@pytest.mark.timeout(60)
def test_bad_names_and_settings_are_one_line_and_say_what_to_do():
    cases = {
        "gym:CartPol-v1": "did you mean 'gym:CartPole-v1'",
        "gym:": "needs an env id",
        "retro:Airstriker": "did you mean 'retro:Airstriker-Genesis-v0'" if HAVE_RETRO else "pip install",
    }
    for name, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(None, algo="ppo", env=name)
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="cannot be vmapped"):
        load_config(None, algo="ppo", env="gym:CartPole-v1", seeds=2)


@pytest.mark.timeout(60)
def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(gym_make, "_have", lambda module: module not in ("stable_retro", "ale_py"))
    with pytest.raises(gym_make.HostEnvNameError, match=r"pip install 'angle_jax\[retro\]'"):
        gym_make.check("retro:Airstriker-Genesis-v0")
    with pytest.raises(gym_make.HostEnvNameError, match="pip install ale-py"):
        gym_make.check("gym:ALE/Pong-v5")


@pytest.mark.timeout(240)
def test_ppo_learns_cartpole_through_the_adapter_and_resumes_and_plays(tmp_path):
    run = tmp_path / "ppo_gym"
    args = ["--algo", "ppo", "--env", "gym:CartPole-v1", "--no-preset", "--run-dir", str(run),
            "--set", "num_envs=4", "--set", "log_interval=4096", "--set", "checkpoint_interval=8192",
            "--set", "eval_episodes=4", "--set", "progress=false", "--set", "tensorboard=false"]
    proc = run_in_process("train.py", *args, "--total-steps", "24576")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    # random CartPole play lasts ~22 steps; PPO through the host env learns well past it in 24k steps
    assert summary["final_eval_return_mean"] > 100, summary
    assert summary["final_eval_return_mean"] > 2 * first["episode_return_mean"]
    resumed = run_in_process("train.py", "--resume", str(run), "--total-steps", "32768")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["total_steps"] == 32768
    gif = tmp_path / "cartpole.gif"
    played = run_in_process("play.py", "--checkpoint", str(run), "--episodes", "2", "--video", str(gif),
                            "--max-steps", "60")
    assert played.returncode == 0, played.stderr
    assert "mean return over 2 episodes" in played.stdout and gif.stat().st_size > 0


@pytest.mark.timeout(60)
def test_cli_refusals_exit_2_with_one_line(tmp_path):
    cases = [
        ["--algo", "ppo", "--env", "gym:NoSuchEnv-v9"],
        ["--algo", "ppo", "--env", "gym:CartPole-v1", "--seeds", "2"],
        ["--algo", "ppo", "--env", "gym:CartPole-v1", "--set", "env_kwargs.vector=fast"],
        ["--algo", "ppo", "--env", "gym:CartPole-v1", "--set", "env_kwargs.bogus=1"],
        ["--algo", "td3", "--env", "gym:CartPole-v1"],
    ]
    if HAVE_RETRO:
        cases += [["--algo", "ppo", "--env", "retro:SonicTheHedgehog-Genesis"],
                  ["--algo", "ppo", "--env", "retro:Airstriker-Genesis-v0", "--set", "env_kwargs.actions=[[JUMP]]"]]
    for i, case in enumerate(cases):
        proc = run_in_process("train.py", *case, "--run-dir", str(tmp_path / f"r{i}"), "--total-steps", "2048")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (case, proc.stderr)
        assert not (tmp_path / f"r{i}").exists()


# ---- Retro -----------------------------------------------------------------------

@needs_retro
@pytest.mark.timeout(60)
def test_missing_rom_says_how_to_import_it():
    if "SonicTheHedgehog-Genesis-v0" in _games_with_roms():
        pytest.skip("this machine has the Sonic ROM imported")
    with pytest.raises(registry.UnknownNameError, match=r"python -m stable_retro.import DIR"):
        registry.make_env("retro:SonicTheHedgehog-Genesis", 2)


def _games_with_roms():
    import stable_retro

    out = []
    for g in ("SonicTheHedgehog-Genesis-v0",):
        try:
            stable_retro.data.get_romfile_path(g)
            out.append(g)
        except FileNotFoundError:
            pass
    return out


@needs_retro
@pytest.mark.timeout(180)
def test_airstriker_stacks_lives_and_game_ends():
    """84x84 grayscale stacks, a button-combination action set, episodic life: lives terminate,
    `episode_end` only at the real game end, a fresh episode starts with its frame repeated."""
    combos = [[], ["B"], ["LEFT", "B"], ["RIGHT", "B"]]
    n, steps = 2, 420
    env = registry.make_env("retro:Airstriker-Genesis-v0", n, actions=combos, episodic_life=True,
                            reward_clip=True)
    inner = env.unwrapped
    try:
        assert inner.vector == "async"
        assert env.spec.obs_shape == (4, 84, 84) and env.spec.obs_dtype == "uint8"
        assert env.spec.action_space == Discrete(4)
        actions = jax.random.randint(jax.random.PRNGKey(0), (steps, n), 0, 4, dtype=jnp.int32)
        obs, ts = scan_rollout(env, actions, jax.random.PRNGKey(0))
        frame = inner.render(None, 0)
    finally:
        inner.close()
    assert obs.shape == (steps, n, 4, 84, 84) and obs.dtype == np.uint8
    assert frame.shape == (224, 320, 3)
    assert set(np.unique(ts.reward)) <= {-1.0, 0.0, 1.0}          # clipped for training
    assert ts.info["raw_reward"].max() > 1                           # game points kept for statistics
    lives_lost = ts.terminated & ~ts.info["episode_end"]
    assert lives_lost.sum() >= 2                                     # each life ends a learning episode
    # a new stack continues the previous one by one frame, or starts with one frame repeated
    for t in range(1, steps):
        for i in range(n):
            if ts.terminated[t - 1, i] | ts.truncated[t - 1, i]:
                assert np.all(obs[t, i] == obs[t, i, -1:])
            else:
                np.testing.assert_array_equal(obs[t, i, :3], obs[t - 1, i, 1:])


@needs_retro
@pytest.mark.timeout(300)
def test_ppo_runs_on_airstriker_through_episode_ends(tmp_path):
    """A few hundred steps of PPO with the Nature CNN on stacked 84x84 frames, the time limit
    short enough that every env ends episodes inside the run. (In a process of its own with XLA's
    default compiler settings: the suite's -O0 setting makes the CNN's convolutions minutes slow.)"""
    run = tmp_path / "ppo_retro"
    proc = run_script(
        "train.py", "--config", str(REPO / "configs/ppo_retro.yaml"), "--run-dir", str(run), "--total-steps", "384",
        "--set", "num_envs=2", "--set", "log_interval=128", "--set", "eval_episodes=1",
        "--set", "env_kwargs.max_episode_steps=50", "--set", "agent.rollout_length=64",
        "--set", "agent.minibatches=2", "--set", "agent.hidden=[64]", "--set", "progress=false",
        "--set", "tensorboard=false", env=xla_default_env(), timeout=280)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 384
    assert sum(r.get("episodes", 0) for r in rows) >= 4
    spec = json.loads((run / "spec.json").read_text())
    assert spec["obs_shape"] == [4, 84, 84] and spec["obs_dtype"] == "uint8"
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["final_eval_return_mean"])
