"""Trainer generator, TensorBoard output, checkpoints, resume after SIGKILL, divergence guard, play.py."""
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from angle_jax import checkpoint as ckpt
from angle_jax.config import ConfigError, load_config
from angle_jax.training.trainer import DivergenceError, Trainer
from conftest import REPO, TINY_TD3, run_in_process, run_script, xla_defaults

# its module-scoped fixtures are built once: all its tests run on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("trainer")


def test_generator_yields_one_dict_per_chunk_with_expected_keys(tmp_path):
    config = load_config(overrides=TINY_TD3 + ["seeds=2", "total_steps=1500", "log_interval=500",
                                               "eval_interval=1000"], algo="td3", env="Pendulum-v1")
    out = list(Trainer(config, tmp_path)())
    assert [d["step"] for d in out] == [500, 1000, 1500]
    for d in out:
        for key in ("steps_per_s", "episodes", "episode_return_mean", "episode_return_min",
                    "episode_return_max", "episode_length_mean", "per_seed"):
            assert key in d, key
        assert len(d["per_seed"]["episode_return_mean"]) == 2
    assert "critic_loss" in out[-1] and np.isfinite(out[-1]["critic_loss"])
    assert "eval_return_mean" in out[1] and "eval_return_mean" not in out[0]
    assert len(out[1]["eval_return_per_seed"]) == 2
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_every_chunk_length_compiles_before_the_first_step():
    # 1,300 steps in chunks of 500: lengths 500 and 300, both compiled (beside init) up front.
    config = load_config(overrides=TINY_TD3 + ["total_steps=1300", "log_interval=500", "eval_interval=0"],
                         algo="td3", env="Pendulum-v1")
    trainer = Trainer(config)
    trainer.carry = trainer.init_carry()
    assert trainer.programs._init_compiled is not None
    assert sorted(trainer.programs._runs) == sorted({trainer.chunk_iters, trainer.total_iters % trainer.chunk_iters})
    compile_s = trainer.compile_s
    out = list(trainer())
    assert [d["step"] for d in out][-1] >= 1300
    assert trainer.compile_s == compile_s  # nothing left to compile during training


def test_evaluation_compiles_up_front_when_the_run_evaluates_as_it_goes():
    # its compile counts in compile_s, not in the training time
    config = load_config(overrides=TINY_TD3 + ["total_steps=1000", "log_interval=500", "eval_interval=500",
                                               "eval_episodes=2"], algo="td3", env="Pendulum-v1")
    trainer = Trainer(config)
    trainer.carry = trainer.init_carry()
    assert trainer.programs._evaluate_compiled is not None
    out = list(trainer())
    assert [d["step"] for d in out] == [500, 1000] and all("eval_return_mean" in d for d in out)
    assert trainer.programs._evaluate._cache_size() == 0  # the lazily compiled path was never taken
    np.testing.assert_array_equal(trainer.evaluate(), trainer.programs._evaluate(trainer.carry.agent, trainer.programs.eval_keys()))


def test_gc_paused_restores_the_collector_state_even_on_error():
    import gc

    from angle_jax.training.programs import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a caller's choice to keep it off is left alone
    finally:
        gc.enable()


@xla_defaults
def test_seed_i_of_a_multi_seed_run_starts_as_the_single_run_with_that_seed():
    """Same initial parameters and, through the random warm-up, the same env trajectory."""
    def first_chunk(seeds, seed):
        trainer = Trainer(load_config(overrides=TINY_TD3 + ["log_interval=500", "eval_interval=0", f"seeds={seeds}",
                                                            f"seed={seed}"], algo="td3", env="Pendulum-v1"))
        carry = trainer.init_carry()
        start = trainer.agent_params(carry)
        carry, _, _ = trainer.programs.chunk(trainer.chunk_iters)(carry)  # 500 warm-up steps, no update yet
        return start, np.asarray(carry.obs)

    params_2, obs_2 = first_chunk(2, 0)
    params_1, obs_1 = first_chunk(1, 1)
    for x, y in zip(jax.tree.leaves(params_2), jax.tree.leaves(params_1)):
        if np.ndim(x):  # leaves with a run axis (shared counters have none)
            np.testing.assert_array_equal(np.asarray(x)[1], np.asarray(y)[0])
    np.testing.assert_array_equal(obs_2[1], obs_1[0])
    assert not np.array_equal(obs_2[0], obs_2[1])


def test_resuming_a_finished_run_trains_no_steps_and_reports_no_speed(trained_run, tmp_path):
    """The summary's steps/s counts the steps of this invocation, not those of the checkpoint."""
    import shutil

    ref_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(ref_dir, copy)
    before = json.loads((copy / "summary.json").read_text())
    proc = run_in_process("train.py", "--resume", str(copy))
    assert proc.returncode == 0, proc.stderr
    after = json.loads((copy / "summary.json").read_text())
    assert after["total_steps"] == before["total_steps"] == 3000
    assert after["steps_per_s"] == 0.0 and after["agent_steps_per_s"] == 0.0
    assert before["steps_per_s"] > 0


def test_resume_refuses_to_start_over_when_no_checkpoint_fits(trained_run, tmp_path):
    """Checkpoints that do not fit the run (here: garbage) stop the resume with exit 2; they are kept."""
    import shutil

    ref_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(ref_dir, copy)
    files = sorted((copy / "checkpoints").glob("ckpt_*.ckpt"))
    assert files
    for f in files:
        f.write_bytes(b"not a checkpoint")
    proc = run_in_process("train.py", "--resume", str(copy))
    assert proc.returncode == 2, proc.stderr
    assert f"none of the {len(files)} checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted((copy / "checkpoints").glob("ckpt_*.ckpt")) == files
    assert all(f.read_bytes() == b"not a checkpoint" for f in files)


def test_tensorboard_events_read_back(trained_run):
    """TensorBoard's own event reader finds the scalars by name, at the logged steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = trained_run
    events = EventAccumulator(str(run_dir / "events"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/episode_return_mean", "train/critic_loss", "train/steps_per_s", "eval/eval_return_mean"} <= tags
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("train/steps_per_s")] == [r["step"] for r in records]
    evals = [(r["step"], r["eval_return_mean"]) for r in records if "eval_return_mean" in r]
    read = [(e.step, e.value) for e in events.Scalars("eval/eval_return_mean")]
    assert [s for s, _ in read] == [s for s, _ in evals]
    np.testing.assert_allclose([v for _, v in read], [v for _, v in evals], rtol=1e-6)


def test_run_directory_keeps_every_evaluation_episode_and_its_plots(trained_run):
    """metrics.jsonl and summary.json hold the return of each evaluation episode (not only means);
    the summary records the evaluation seed and mode; curves.png is a PNG of the documented size."""
    from angle_jax.report import plots

    run_dir, proc = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    episodes = np.asarray(summary["final_eval_returns"])
    assert episodes.shape == (1, 2)  # 1 seed x eval_episodes=2
    np.testing.assert_allclose(episodes.mean(axis=1), summary["final_eval_return_per_seed"])
    assert summary["eval_seed"] == 0 and summary["eval_mode"] == "greedy"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_returns" in r]
    assert [r["step"] for r in evals] == [2000, 3000]
    for r in evals:
        assert np.asarray(r["eval_returns"]).shape == (1, 2)
        assert r["eval_return_mean"] == pytest.approx(np.mean(r["eval_returns"]))
    png = (run_dir / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == plots.pixel_size("curves")
    assert f"plot: {run_dir / 'curves.png'}" in proc.stdout


def test_a_run_without_matplotlib_still_ends_and_says_how_to_get_plots(tmp_path, no_matplotlib):
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(tmp_path / "run")]
    for o in TINY_TD3 + ["total_steps=1000", "tensorboard=false"]:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stderr.splitlines() if "matplotlib" in line]
    assert len(notices) == 1 and "pip install" in notices[0], proc.stderr
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "curves.png").exists()


def test_same_parameters_give_the_same_evaluation_across_runs_and_seeds():
    """Every run is evaluated on the episodes of `eval_seed`: another run's trainer (another
    training seed) given the same parameters returns the same episodes' returns; another
    eval_seed gives other episodes."""
    base = TINY_TD3 + ["total_steps=1000", "log_interval=500", "eval_episodes=3"]
    a = Trainer(load_config(overrides=base + ["seed=0"], algo="td3", env="Pendulum-v1"))
    a.carry = a.init_carry()
    b = Trainer(load_config(overrides=base + ["seed=7"], algo="td3", env="Pendulum-v1"))
    b.carry = b.init_carry()
    np.testing.assert_array_equal(a.evaluate(), a.evaluate())
    np.testing.assert_array_equal(b.evaluate(a.carry), a.evaluate())
    assert not np.array_equal(b.evaluate(), a.evaluate())  # b's own (untrained) agent
    c = Trainer(load_config(overrides=base + ["eval_seed=1"], algo="td3", env="Pendulum-v1"))
    assert not np.array_equal(c.evaluate(a.carry), a.evaluate())


def test_sampled_evaluation_uses_the_exploration_policy():
    base = TINY_TD3 + ["total_steps=1000", "log_interval=500", "eval_episodes=3"]
    greedy = Trainer(load_config(overrides=base, algo="td3", env="Pendulum-v1"))
    greedy.carry = greedy.init_carry()
    sampled = Trainer(load_config(overrides=base + ["eval_mode=sample"], algo="td3", env="Pendulum-v1"))
    once, twice = sampled.evaluate(greedy.carry), sampled.evaluate(greedy.carry)
    np.testing.assert_array_equal(once, twice)  # its action noise comes from the evaluation key
    assert not np.allclose(once, greedy.evaluate())
    with pytest.raises(ConfigError, match="eval_mode must be one of greedy, sample"):
        load_config(overrides=base + ["eval_mode=noisy"], algo="td3", env="Pendulum-v1").validate()


def test_overlapped_evaluation_reports_what_in_line_evaluation_reports():
    """With `eval_overlap` an evaluation runs beside the next chunk; the dicts yielded (order,
    steps, every value but timings) are those of evaluating in line."""
    base = TINY_TD3 + ["total_steps=2000", "log_interval=500", "eval_interval=500", "eval_episodes=2"]
    timing = {"chunk_s", "steps_per_s", "agent_steps_per_s"}

    def logs(overlap: bool):
        trainer = Trainer(load_config(overrides=base + [f"eval_overlap={overlap}"], algo="td3", env="Pendulum-v1"))
        return [{k: v for k, v in d.items() if k not in timing} for d in trainer()]

    overlapped, in_line = logs(True), logs(False)
    assert [d["step"] for d in overlapped] == [500, 1000, 1500, 2000]
    assert all("eval_returns" in d for d in overlapped)
    assert json.dumps(overlapped) == json.dumps(in_line)


def _payload(path: Path) -> bytes:
    return ckpt.read_meta(path)[1]


def test_resume_after_sigkill_is_bit_identical(trained_run, tmp_path):
    ref_dir, _ = trained_run
    run_dir = tmp_path / "killed"
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(run_dir),
            "--set", "checkpoint_interval=500", "--set", "eval_interval=2000"]
    for o in TINY_TD3:
        args += ["--set", o]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run_dir / "checkpoints" / "ckpt_000000000500.ckpt"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists(), "run finished before it could be killed"
    steps = ckpt.CheckpointManager(run_dir / "checkpoints").all_steps()
    assert steps and steps[-1] < 3000
    resumed = run_script("train.py", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert _payload(run_dir / "params.ckpt") == _payload(ref_dir / "params.ckpt")
    ref_last = ckpt.CheckpointManager(ref_dir / "checkpoints").path_for(3000)
    assert _payload(run_dir / "checkpoints" / ref_last.name) == _payload(ref_last)
    # the same parameters, the same evaluation episodes: the resumed run's evaluation is the reference's
    summary, ref_summary = (json.loads((d / "summary.json").read_text()) for d in (run_dir, ref_dir))
    assert summary["final_eval_returns"] == ref_summary["final_eval_returns"]
    # the resumed steps took time: the restore's compile (before the clock) is not subtracted from it
    assert summary["train_s"] > 0 and 0 < summary["steps_per_s"] < 1e6


def test_corrupt_checkpoint_falls_back_to_previous(trained_run, tmp_path):
    ref_dir, _ = trained_run
    config = load_config(ref_dir / "config.yaml")
    manager = ckpt.CheckpointManager(ref_dir / "checkpoints")
    steps = manager.all_steps()
    assert len(steps) >= 2
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    for s in steps[-2:]:
        (copy / "checkpoints" / manager.path_for(s).name).write_bytes(manager.path_for(s).read_bytes())
    newest = copy / "checkpoints" / manager.path_for(steps[-1]).name
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.read_meta(newest)
    warnings = []
    trainer = Trainer(config, copy, resume=True, warn=warnings.append)
    assert trainer.restore()
    assert trainer.step == steps[-2]
    assert any("truncated or corrupt" in w for w in warnings)


def test_divergence_guard_stops_with_step_and_metric(tmp_path):
    config = load_config(overrides=TINY_TD3 + ["agent.critic_lr=1e30", "agent.actor_lr=1e30",
                                               "checkpoint_interval=250", "learning_starts=100"],
                         algo="td3", env="Pendulum-v1")
    trainer = Trainer(config, tmp_path)
    seen = []
    with pytest.raises(DivergenceError) as exc:
        for d in trainer():
            seen.append(d["step"])
    assert exc.value.step == 250 and exc.value.metric in ("params", "critic_loss", "actor_loss", "q_mean")
    assert "training diverged at step 250" in str(exc.value)
    assert not ckpt.CheckpointManager(tmp_path / "checkpoints").all_steps()  # nothing bad was saved


def test_divergence_exit_code_3(tmp_path):
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(tmp_path / "r")]
    for o in TINY_TD3 + ["agent.critic_lr=1e30", "agent.actor_lr=1e30", "learning_starts=100"]:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 3, proc.stderr
    assert "training diverged at step" in proc.stderr


def test_play_writes_gif_and_checks_spaces(trained_run, tmp_path):
    run_dir, _ = trained_run
    gif = tmp_path / "play.gif"
    proc = run_in_process("play.py", "--checkpoint", str(run_dir), "--episodes", "2", "--video", str(gif))
    assert proc.returncode == 0, proc.stderr
    assert "mean return over 2 episodes" in proc.stdout
    import imageio.v2 as imageio

    frames = imageio.mimread(gif)
    assert len(frames) > 1 and frames[0].shape[-1] in (3, 4)
    bad = run_in_process("play.py", "--checkpoint", str(run_dir), "--env", "MountainCarContinuous-v0")
    assert bad.returncode == 2 and "does not fit MountainCarContinuous-v0" in bad.stderr


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """A finished tiny TD3 sweep: 2 configs x 2 seeds = 4 runs in one params.ckpt."""
    run_dir = tmp_path_factory.mktemp("runs") / "td3_sweep"
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(run_dir),
            "--seeds", "2", "--sweep", "actor_lr=1e-3,3e-4"]
    for o in TINY_TD3 + ["total_steps=600", "learning_starts=200", "buffer_size=600", "log_interval=300",
                         "tensorboard=false"]:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_play_picks_one_run_of_a_sweep(sweep_run):
    labels = json.loads((sweep_run / "summary.json").read_text())["runs"]
    assert labels[1] == "run_1: actor_lr=0.001 seed=1"
    proc = run_in_process("play.py", "--checkpoint", str(sweep_run), "--episodes", "2", "--run-index", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"playing {labels[1]}" in proc.stdout and "mean return over 2 episodes" in proc.stdout


def test_play_bad_run_index_is_one_line_error(sweep_run):
    proc = run_in_process("play.py", "--checkpoint", str(sweep_run), "--run-index", "4")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--run-index must be in [0, 4)" in proc.stderr and "got 4" in proc.stderr
    assert "run_3: actor_lr=0.0003 seed=1" in proc.stderr


@pytest.fixture(scope="module")
def data_parallel_run(tmp_path_factory):
    """A finished tiny data-parallel TD3 run (2 shards) with numbered checkpoints."""
    run_dir = tmp_path_factory.mktemp("runs") / "td3_dp"
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(run_dir)]
    for o in TINY_TD3 + ["total_steps=600", "learning_starts=200", "buffer_size=600", "log_interval=300",
                         "tensorboard=false", "data_parallel=2", "num_envs=2", "checkpoint_interval=300"]:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_play_reads_a_data_parallel_checkpoint(data_parallel_run):
    """The numbered checkpoint keeps a shard axis; play drops it and plays the same agent as params.ckpt."""
    last = sorted((data_parallel_run / "checkpoints").glob("*.ckpt"))[-1]
    from_ckpt = run_in_process("play.py", "--checkpoint", str(last), "--episodes", "2")
    from_params = run_in_process("play.py", "--checkpoint", str(data_parallel_run), "--episodes", "2")
    assert from_ckpt.returncode == 0, from_ckpt.stderr
    assert from_params.returncode == 0, from_params.stderr
    mean = [line for line in from_ckpt.stdout.splitlines() if line.startswith("mean return")]
    assert mean and mean == [line for line in from_params.stdout.splitlines() if line.startswith("mean return")]


def test_summary_train_time_excludes_only_compile(data_parallel_run):
    """Building the Trainer counts as compile time once, not subtracted from the training wall time again."""
    summary = json.loads((data_parallel_run / "summary.json").read_text())
    assert summary["train_s"] > 0.01
    # train_s is rounded to the millisecond in the summary
    assert summary["steps_per_s"] * summary["train_s"] == pytest.approx(600, abs=summary["steps_per_s"] * 5e-4 + 1)
