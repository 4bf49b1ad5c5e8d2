"""Bad input stops with one line on stderr and exit code 2 before anything compiles or is written,
and nothing a user has is damaged: config sections checked against their schemas, non-finite
floats, sizes against int32 and memory, work vectorised over seeds, resume that keeps the run."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

import train
from angle_jax import checkpoint as ckpt
from angle_jax.config import ConfigError, load_config
from conftest import REPO, TINY_TD3, run_in_process

pytestmark = pytest.mark.xdist_group("bad_input")

BASE = ["--algo", "td3", "--env", "Pendulum-v1"]


def refused(tmp_path, *args):
    """train.py in process with a run dir that must stay absent: (exit code, stderr)."""
    proc = run_in_process("train.py", *BASE, "--run-dir", str(tmp_path / "r"), *args)
    assert not (tmp_path / "r").exists(), "a refused command wrote the run directory"
    return proc.returncode, proc.stderr


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_a_section_that_is_not_a_mapping_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("agent: 5\n")
    code, err = refused(tmp_path, "--config", str(cfg))
    assert code == 2 and "agent must be a mapping of algorithm settings, got 5" in one_line(err)
    cfg.write_text("meta: 5\n")
    code, err = refused(tmp_path, "--config", str(cfg))
    assert code == 2 and "meta must be a mapping of settings" in one_line(err)


@pytest.mark.parametrize("setting,message", [
    ("env_kwargs.no_such_key_xyz=1", "unknown env_kwargs key 'no_such_key_xyz' for Pendulum-v1 (valid: "),
    ("env_kwargs.max_sped=1", "did you mean 'max_speed'"),
    ("env_kwargs.max_speed=fast", "env_kwargs.max_speed must be a number"),
    ("env_kwargs.max_speed=.nan", "env_kwargs.max_speed must be a finite number"),
    ("env_kwargs.max_steps_in_episode=10.5", "env_kwargs.max_steps_in_episode must be an integer"),
])
def test_env_kwargs_are_checked_against_the_envs_parameters(tmp_path, setting, message):
    code, err = refused(tmp_path, "--set", setting)
    assert code == 2 and message in one_line(err)


def test_a_replay_that_int32_cannot_index_or_memory_cannot_hold_is_refused_with_its_size(tmp_path):
    code, err = refused(tmp_path, "--set", "buffer_size=100000000000")
    assert code == 2 and "buffer_size must be at most 2,147,483,647 in size (it is held in int32)" in one_line(err)
    code, err = refused(tmp_path, "--set", "buffer_size=2000000000")
    line = one_line(err)
    assert code == 2 and "the run's state needs" in line and "GiB" in line and "of memory available on cpu" in line


@pytest.mark.parametrize("value", [".nan", "inf", "-inf", "nan"])
def test_non_finite_floats_are_refused(tmp_path, value):
    code, err = refused(tmp_path, "--set", f"agent.actor_lr={value}")
    assert code == 2 and "agent.actor_lr must be a finite number" in one_line(err)


def test_non_finite_module_settings_are_refused():
    with pytest.raises(ConfigError, match="int_coef must be a finite number"):
        from angle_jax import registry
        from angle_jax.training.build import make_modules

        make_modules(("rnd",), {"rnd": {"int_coef": float("nan")}}, registry.make_env("CartPole-v1", 2).spec)


def test_impossibly_many_seeds_are_refused_at_once_with_the_limit(tmp_path):
    start = time.perf_counter()
    code, err = refused(tmp_path, "--seeds", "100000000")
    line = one_line(err)
    assert code == 2 and "100,000,000 run(s)" in line and "memory available" in line
    assert time.perf_counter() - start < 30  # the keys of all seeds are never built one by one


def test_run_keys_are_one_vectorised_draw_equal_to_each_seed_s_key():
    import jax
    import numpy as np

    from angle_jax import parallel

    keys = parallel.run_keys(7, 3, 2)
    expected = np.stack([np.asarray(jax.random.PRNGKey(7 + s)) for s in range(3)] * 2)
    np.testing.assert_array_equal(np.asarray(keys), expected)
    start = time.perf_counter()
    assert parallel.run_keys(0, 1_000_000, 1).shape == (1_000_000, 2)
    assert time.perf_counter() - start < 10


def test_a_refused_resume_leaves_the_run_as_it_was(trained_run, tmp_path):
    ref_dir, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = run_in_process("train.py", "--resume", str(run), "--set", "agent.critic_hidden=[32,32]")
    assert proc.returncode == 2 and "cannot be applied to a run's checkpoints" in one_line(proc.stderr)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # nothing written or rewritten
    again = run_in_process("train.py", "--resume", str(run))  # the run still resumes and plays
    assert again.returncode == 0, again.stderr
    played = run_in_process("play.py", "--checkpoint", str(run), "--episodes", "1")
    assert played.returncode == 0, played.stderr


def test_resuming_a_multi_seed_run_splits_the_host_into_devices_as_its_first_run_did(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("seeds: 2\nsweep: {critic_lr: [0.001, 0.0003]}\ndata_parallel: 1\n")
    args = train.parse_args(["--resume", str(tmp_path)])
    assert train._host_devices_wanted(args) == 4
    cfg.write_text("not: [valid")
    assert train._host_devices_wanted(args) == 1  # unreadable: the config check says why, later


def test_divergence_before_any_checkpoint_says_none_was_written(tmp_path):
    args = [*BASE, "--no-preset", "--run-dir", str(tmp_path / "r")]
    for o in TINY_TD3 + ["agent.critic_lr=1e30", "agent.actor_lr=1e30", "learning_starts=100", "log_interval=3000"]:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 3, proc.stderr
    assert "no checkpoint had been written" in proc.stderr and "last good checkpoint" not in proc.stderr


def test_play_falls_back_to_an_older_checkpoint_when_the_newest_is_damaged(trained_run, tmp_path):
    ref_dir, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    (run / "params.ckpt").unlink()
    newest = sorted((run / "checkpoints").glob("ckpt_*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    proc = run_in_process("play.py", "--checkpoint", str(run), "--episodes", "1")
    assert proc.returncode == 0, proc.stderr
    assert "trying the previous checkpoint" in proc.stderr and "mean return over 1 episodes" in proc.stdout
    for f in (run / "checkpoints").glob("ckpt_*.ckpt"):
        f.write_bytes(b"garbage")
    proc = run_in_process("play.py", "--checkpoint", str(run), "--episodes", "1")
    assert proc.returncode == 2 and "none of its" in proc.stderr.strip().splitlines()[-1]


def test_every_error_path_of_train_and_play_in_a_fresh_process(trained_run, tmp_path):
    """Every refused command, run by train.py / play.py's `main` in one fresh interpreter: exit code
    2, exactly one line on stderr, no traceback, and no run directory written."""
    run_dir, _ = trained_run
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "cli_error_paths.py"), str(run_dir), str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) >= 40
    for r in results:
        assert r["code"] == 2, r
        assert len(r["stderr"]) == 1 and not r["traceback"], r
        assert not r["wrote"], r
