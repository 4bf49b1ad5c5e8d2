"""Run-comparison report: rliable's estimators against hand-computed cases, run loading,
figures and the report command."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_in_process

from angle_jax.report import plots, stats
from angle_jax.report import runs as R
from angle_jax.report.__main__ import MARKER, main as report_main
from angle_jax.report.curves import write_run_plots


# ---- statistics ---------------------------------------------------------------------------------

def test_iqm_hand_cases():
    # 4 scores: drop int(0.25 * 4) = 1 at each end -> mean of 2 and 3
    assert stats.iqm(np.array([[4.0], [1.0], [3.0], [2.0]])) == pytest.approx(2.5)
    # 8 x 2 = 16 scores 0..15 (placed out of order): drop 4 at each end -> mean of 4..11 = 7.5
    scores = np.random.default_rng(0).permutation(np.arange(16.0)).reshape(8, 2)
    assert stats.iqm(scores) == pytest.approx(7.5)
    # an outlier in the top quarter does not move the IQM, it does move the mean
    scores[scores == 15.0] = 1e6
    assert stats.iqm(scores) == pytest.approx(7.5)
    assert stats.mean(scores) > 1000
    # 6 scores: int(1.5) = 1 dropped at each end -> mean of the middle 4
    assert stats.iqm(np.array([[10.0, 0.0, 1.0], [2.0, 3.0, 4.0]])) == pytest.approx(2.5)
    # fewer than 4 scores: nothing is dropped
    assert stats.iqm(np.array([[1.0], [5.0]])) == pytest.approx(3.0)


def test_mean_median_are_over_task_means():
    scores = np.array([[0.0, 10.0, 1.0], [2.0, 30.0, 3.0]])  # task means 1, 20, 2
    assert stats.mean(scores) == pytest.approx(23.0 / 3)
    assert stats.median(scores) == pytest.approx(2.0)


def test_optimality_gap_hand_case():
    scores = np.array([[0.5, 1.5], [1.0, 0.0]])
    # max(1 - s, 0): 0.5, 0, 0, 1 -> 1.5 / 4
    assert stats.optimality_gap(scores, 1.0) == pytest.approx(0.375)
    # threshold 2: 1.5, 0.5, 1, 2 -> 5 / 4
    assert stats.optimality_gap(scores, 2.0) == pytest.approx(1.25)


def test_normalize_and_its_checks():
    scores = np.array([[0.0, 100.0], [50.0, 300.0]])
    out = stats.normalize(scores, [0.0, 100.0], [100.0, 500.0])
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="low < high"):
        stats.normalize(scores, 1.0, 1.0)


def test_bad_matrices_are_refused():
    for bad in (np.zeros(3), np.zeros((0, 2)), np.array([[1.0, np.nan]])):
        with pytest.raises(ValueError):
            stats.iqm(bad)


def test_interval_of_a_constant_matrix_is_a_point():
    scores = np.full((5, 3), 2.5)
    out = stats.aggregate(scores, threshold=3.0, reps=500, rng=0)
    for name, e in out.items():
        assert e.low == e.value == e.high, name
    assert out["optimality_gap"].value == pytest.approx(0.5)


def test_bootstrap_resamples_only_within_tasks():
    # each task's runs are constant, tasks differ: resampling within tasks keeps every
    # per-task mean; resampling across tasks would mix 0 and 1 and move them
    scores = np.array([[0.0, 1.0]] * 6)
    low, high = stats.bootstrap_interval(scores, lambda s: s.mean(axis=-2), reps=1000, rng=0)
    np.testing.assert_array_equal(low, [0.0, 1.0])
    np.testing.assert_array_equal(high, [0.0, 1.0])
    resamples = stats.stratified_resample(np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]]), 200, rng=1)
    assert set(np.unique(resamples[..., 0])) <= {0.0, 1.0, 2.0}
    assert set(np.unique(resamples[..., 1])) <= {10.0, 11.0, 12.0}
    assert len(np.unique(resamples[..., 0])) == 3  # and it does resample


def test_bootstrap_is_seedable_and_covers_the_estimate():
    scores = np.random.default_rng(3).normal(size=(10, 4))
    a = stats.aggregate(scores, threshold=0.5, reps=400, rng=7)
    b = stats.aggregate(scores, threshold=0.5, reps=400, rng=7)
    c = stats.aggregate(scores, threshold=0.5, reps=400, rng=8)
    assert a == b and a != c
    for e in a.values():
        assert e.low <= e.value <= e.high and e.low < e.high
    # chunking the resamples does not change the draws' distribution much, nor the API
    lo, hi = stats.bootstrap_interval(scores, stats.iqm, reps=400, rng=7, chunk_elements=40)
    assert lo < stats.iqm(scores) < hi


def test_bootstrap_percentile_interval_hand_case():
    # two runs, one task: a resample's mean is 0 (p=1/4), 0.5 (1/2) or 1 (1/4)
    lo, hi = stats.bootstrap_interval(np.array([[0.0], [1.0]]), stats.mean, reps=4000, rng=0)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = stats.bootstrap_interval(np.array([[0.0], [1.0]]), stats.mean, reps=4000, rng=0, confidence=0.4)
    assert (lo, hi) == (0.5, 0.5)


def test_performance_profile():
    scores = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(stats.performance_profile(scores, [-1.0, 0.0, 1.5, 3.0]), [1.0, 0.75, 0.5, 0.0])
    profile, low, high = stats.performance_profile_bands(scores, [-1.0, 0.0, 1.5, 3.0], reps=300, rng=0)
    assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0


# ---- real runs ----------------------------------------------------------------------------------

TINY_DQN = ["--algo", "dqn", "--env", "CartPole-v1", "--seeds", "2", "--total-steps", "2000",
            "--set", "progress=false", "--set", "tensorboard=false", "--set", "log_interval=500",
            "--set", "eval_interval=1000", "--set", "learning_starts=200", "--set", "eval_episodes=2",
            "--set", "agent.hidden=[16,16]", "--set", "buffer_size=2000"]
TINY_SWEEP = ["--algo", "td3", "--env", "Pendulum-v1", "--seeds", "2", "--total-steps", "1000",
              "--sweep", "critic_lr=1e-3,3e-4", "--set", "progress=false", "--set", "tensorboard=false",
              "--set", "log_interval=250", "--set", "eval_interval=500", "--set", "learning_starts=250",
              "--set", "eval_episodes=2", "--set", "buffer_size=1000", "--set", "batch_size=32",
              "--set", "agent.actor_hidden=[16,16]", "--set", "agent.critic_hidden=[16,16]"]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Three tiny runs: DQN seeds 0-1 and 2-3 (same config), a TD3 sweep of 2 points x 2 seeds."""
    root = tmp_path_factory.mktemp("report_runs")
    dirs = {"dqn_a": root / "dqn_a", "dqn_b": root / "dqn_b", "sweep": root / "td3_sweep"}
    for name, args in [("dqn_a", [*TINY_DQN, "--seed", "0"]), ("dqn_b", [*TINY_DQN, "--seed", "2"]),
                       ("sweep", TINY_SWEEP)]:
        proc = run_in_process("train.py", *args, "--run-dir", str(dirs[name]))
        assert proc.returncode == 0, proc.stderr[-2000:]
    return dirs


def _other_env(run_dir: Path, dest: Path) -> Path:
    """A copy of a run directory that claims another env (for the mixed-env checks)."""
    shutil.copytree(run_dir, dest)
    for name in ("summary.json", "config.yaml"):
        (dest / name).write_text((dest / name).read_text().replace("CartPole-v1", "Acrobot-v1"))
    return dest


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == Image.open(path).size
    with Image.open(path) as im:
        im.verify()
    return Image.open(path).size


def test_load_run_reads_summary_and_curves(run_dirs):
    (run,) = R.load_run(run_dirs["dqn_a"])
    summary = json.loads((run_dirs["dqn_a"] / "summary.json").read_text())
    assert (run.algo, run.env, run.label, run.seeds, run.point) == ("dqn", "CartPole-v1", "dqn", (0, 1), {})
    np.testing.assert_allclose(run.final_return, summary["final_eval_return_per_seed"])
    c = run.curves
    np.testing.assert_array_equal(c.steps, [500, 1000, 1500, 2000])
    np.testing.assert_array_equal(c.eval_steps, [1000, 2000])
    assert c.train_return.shape == (4, 2) and c.eval_return.shape == (2, 2)
    assert np.isfinite(c.eval_return).all() and np.isfinite(c.train_return).any()
    assert list(c.losses) == ["loss"] and c.losses["loss"].shape == (4, 2)


def test_sweep_points_are_separate_records(run_dirs):
    points = R.load_run(run_dirs["sweep"])
    summary = json.loads((run_dirs["sweep"] / "summary.json").read_text())
    assert [p.label for p in points] == ["td3 critic_lr=0.001", "td3 critic_lr=0.0003"]
    assert [p.point for p in points] == [{"critic_lr": 1e-3}, {"critic_lr": 3e-4}]
    for p, row in zip(points, summary["sweep"]):
        assert p.seeds == (0, 1)
        np.testing.assert_allclose(p.final_return, row["final_eval_return_per_seed"], rtol=1e-6)
        assert set(p.curves.losses) == {"actor_loss", "critic_loss"}
        assert p.curves.train_return.shape == (4, 2)
    # the two points' columns of the per-run arrays differ once learning differs
    assert not np.array_equal(points[0].curves.losses["critic_loss"], points[1].curves.losses["critic_loss"],
                              equal_nan=True)


def test_grouping_pools_seeds_and_labels_differences(run_dirs, tmp_path):
    groups = R.group_runs(R.load_runs([(run_dirs["dqn_a"], None), (run_dirs["dqn_b"], None),
                                       (run_dirs["sweep"], None)]))
    assert [(g.label, g.algo, g.env, len(g.final_return)) for g in groups] == [
        ("dqn", "dqn", "CartPole-v1", 4), ("td3 critic_lr=0.001", "td3", "Pendulum-v1", 2),
        ("td3 critic_lr=0.0003", "td3", "Pendulum-v1", 2)]
    assert groups[0].scores.shape == (4, 1)
    # a run whose config differs gets the differing setting in its label
    other = tmp_path / "dqn_single"
    shutil.copytree(run_dirs["dqn_b"], other)
    text = (other / "config.yaml").read_text()
    assert "  double: true" in text
    (other / "config.yaml").write_text(text.replace("  double: true", "  double: false"))
    labels = [g.label for g in R.group_runs(R.load_runs([(run_dirs["dqn_a"], None), (other, None)]))]
    assert labels == ["dqn agent.double=true", "dqn agent.double=false"]
    # a label given by the user pools runs whatever their configs
    groups = R.group_runs(R.load_runs([(run_dirs["dqn_a"], "mine"), (other, "mine")]))
    assert [(g.label, len(g.final_return)) for g in groups] == [("mine", 4)]


def test_load_errors(run_dirs, tmp_path):
    with pytest.raises(R.RunError, match="no run directories given"):
        R.load_runs([])
    with pytest.raises(R.RunError, match="no runs given"):
        R.group_runs([])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("algo: dqn\n")
    with pytest.raises(R.RunError, match=r"half is not a run directory \(no summary.json\)"):
        R.load_run(tmp_path / "half")
    with pytest.raises(R.RunError, match="not a directory"):
        R.load_run(tmp_path / "missing")
    acrobot = _other_env(run_dirs["dqn_b"], tmp_path / "acrobot")
    with pytest.raises(R.RunError, match="label 'x' holds runs of different envs: .*CartPole-v1.*Acrobot-v1"):
        R.group_runs(R.load_runs([(run_dirs["dqn_a"], "x"), (acrobot, "x")]))
    # unlabelled, they are two groups, told apart by their envs
    groups = R.group_runs(R.load_runs([(run_dirs["dqn_a"], None), (acrobot, None), (run_dirs["sweep"], None)]))
    assert [g.label for g in groups] == ["dqn CartPole-v1", "dqn Acrobot-v1", "td3 critic_lr=0.001",
                                         "td3 critic_lr=0.0003"]
    broken = tmp_path / "broken"
    shutil.copytree(run_dirs["dqn_a"], broken)
    summary = (broken / "summary.json").read_text()
    (broken / "summary.json").write_text(summary[:40])
    with pytest.raises(R.RunError, match=r"cannot read .*broken/summary.json"):
        R.load_run(broken)
    (broken / "summary.json").write_text(summary.replace("final_eval_return_per_seed", "renamed"))
    with pytest.raises(R.RunError, match="has no field 'final_eval_return_per_seed'"):
        R.load_run(broken)
    three = {**json.loads(summary), "final_eval_return_per_seed": [1.0, 2.0, 3.0]}
    (broken / "summary.json").write_text(json.dumps(three))
    with pytest.raises(R.RunError, match="per-seed values do not match the run's 3 seeds"):
        R.load_run(broken)  # metrics.jsonl holds 2 seeds
    with pytest.raises(R.RunError, match="given twice"):
        R.load_runs([(run_dirs["dqn_a"], None), (str(run_dirs["dqn_a"]) + "/", None)])


def test_metrics_resume_and_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "a": 1}\n{"step": 20, "a": 2}\n{"step": 20, "a": 3}\n{"step": 30, "a"')
    assert [(r["step"], r["a"]) for r in R.read_metrics(path)] == [(10, 1), (20, 3)]
    path.write_text('{"step": 10}\nnot json\n{"step": 20}\n')
    with pytest.raises(R.RunError, match="line 2 is not a metrics record"):
        R.read_metrics(path)


# ---- figures ------------------------------------------------------------------------------------

def test_run_plots_are_pngs_of_the_fixed_size(run_dirs, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(run_dirs["sweep"], sweep)
    paths = write_run_plots(sweep)
    assert [p.name for p in paths] == ["curves.png", "sweep.png"]
    assert _png_size(sweep / "curves.png") == plots.pixel_size("curves") == (1200, 450)
    assert _png_size(sweep / "sweep.png") == plots.pixel_size("sweep")
    single = tmp_path / "single"
    shutil.copytree(run_dirs["dqn_a"], single)
    assert [p.name for p in write_run_plots(single)] == ["curves.png"]
    assert _png_size(single / "curves.png") == plots.pixel_size("curves")
    assert not [p for p in single.iterdir() if p.name.startswith(".")]  # no temp files left



def test_run_plots_without_matplotlib(run_dirs, tmp_path, no_matplotlib):
    single = tmp_path / "single"
    shutil.copytree(run_dirs["dqn_a"], single)
    (single / "curves.png").unlink()  # written by train.py at the end of the run
    notices = []
    assert write_run_plots(single, notice=notices.append) == []
    assert notices == [plots.NOTICE] and "pip install matplotlib" in plots.NOTICE
    assert not (single / "curves.png").exists()


# ---- the report command -------------------------------------------------------------------------

def _report(argv, capsys):
    try:
        code = report_main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_report_states_the_evaluation_protocol(run_dirs):
    import dataclasses

    from angle_jax.report.__main__ import evaluation_protocol

    groups = R.group_runs(R.load_runs([(run_dirs["dqn_a"], None), (run_dirs["dqn_b"], None)]))
    assert len(groups) == 1 and len(groups[0].runs) == 2
    episodes = groups[0].runs[0].config["eval_episodes"]
    assert evaluation_protocol(groups) == (f"{episodes} greedy episodes per seed, eval_seed 0 for every run "
                                           f"(the same episodes for every run and seed).")
    a, b = groups[0].runs
    other = dataclasses.replace(groups[0], runs=(a, dataclasses.replace(b, config={**b.config, "eval_seed": 3})))
    text = evaluation_protocol([other])
    assert text.startswith("differs between runs: ") and "eval_seed 0" in text and "eval_seed 3" in text


def test_report_writes_table_and_figures(run_dirs, tmp_path, capsys):
    out = tmp_path / "rep"
    code, stdout, err = _report([run_dirs["dqn_a"], run_dirs["dqn_b"], run_dirs["sweep"], "--out", out,
                                 "--threshold", "500", "--reps", "300", "--seed", "1"], capsys)
    assert code == 0, err
    assert err == "" and str(out / "report.md") in stdout
    assert sorted(p.name for p in out.iterdir()) == ["aggregate.png", "curves.png", "profile.png", "report.md"]
    for name, size in [("curves", "report_curves"), ("aggregate", "aggregate"), ("profile", "profile")]:
        assert _png_size(out / f"{name}.png") == plots.pixel_size(size)
    text = (out / "report.md").read_text()
    assert text.startswith(MARKER)
    # the numbers are the statistics of the pooled seeds, with the same bootstrap stream
    groups = R.group_runs(R.load_runs([(run_dirs[k], None) for k in ("dqn_a", "dqn_b", "sweep")]))
    rng = np.random.default_rng(1)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3
    for g, row in zip(groups, rows):
        est = stats.aggregate(g.scores, 500.0, 300, rng)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:4] == [g.label, g.algo, g.env, str(len(g.final_return))]
        for cell, key in zip(cells[4:], ["mean", "median", "iqm", "optimality_gap"]):
            e = est[key]
            assert cell == f"{e.value:.4g} [{e.low:.4g}, {e.high:.4g}]"
    assert "--threshold 500" in text and "python -m angle_jax.report" in text
    # a previous report may be overwritten
    code, _, err = _report([run_dirs["dqn_a"], "--out", out, "--reps", "50"], capsys)
    assert code == 0, err
    assert "optimality gap" not in (out / "report.md").read_text().split("## Runs")[0].split("|", 1)[1]


def test_report_normalised_scores(run_dirs, tmp_path, capsys):
    out = tmp_path / "rep"
    code, _, err = _report([run_dirs["dqn_a"], "--ref", "CartPole-v1=0,500", "--out", out, "--reps", "100"],
                           capsys)
    assert code == 0, err
    (g,) = R.group_runs(R.load_run(run_dirs["dqn_a"]))
    est = stats.aggregate(g.scores / 500.0, 1.0, 100, 0)
    row = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| dqn ")][0]
    assert f"{est['optimality_gap'].value:.4g} [" in row and f"{est['mean'].value:.4g} [" in row


def test_report_threshold_per_env(run_dirs, tmp_path, capsys):
    out = tmp_path / "rep"
    code, _, err = _report([run_dirs["dqn_a"], run_dirs["sweep"], "--threshold", "CartPole-v1=500",
                            "--out", out, "--reps", "100"], capsys)
    assert code == 0, err
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in (out / "report.md").read_text().splitlines() if line.startswith("| ") and "---" not in line}
    (g,) = R.group_runs(R.load_run(run_dirs["dqn_a"]))
    assert rows["dqn"][7].startswith(f"{stats.optimality_gap(g.scores, 500.0):.4g} [")
    assert rows["td3 critic_lr=0.001"][7] == rows["td3 critic_lr=0.0003"][7] == "n/a"
    # one threshold for all, one for an env: the env's own wins
    code, _, err = _report([run_dirs["dqn_a"], run_dirs["sweep"], "--threshold", "0", "--threshold",
                            "CartPole-v1=500", "--out", out, "--reps", "100"], capsys)
    assert code == 0, err
    text = (out / "report.md").read_text()
    assert "at threshold 500 (CartPole-v1), 0 (Pendulum-v1)" in text and "n/a" not in text


def test_report_without_matplotlib(run_dirs, tmp_path, capsys, no_matplotlib):
    out = tmp_path / "rep"
    code, stdout, err = _report([run_dirs["dqn_a"], "--out", out, "--reps", "50"], capsys)
    assert code == 0
    assert err.count("\n") == 1 and "pip install matplotlib" in err
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert "![" not in (out / "report.md").read_text()


@pytest.mark.parametrize("case", ["no_runs", "not_a_run", "mixed_envs", "busy_out", "reps", "ref", "ref_env",
                                  "out_is_file", "empty_label", "threshold", "threshold_env", "threshold_twice"])
def test_report_bad_input(case, run_dirs, tmp_path, capsys):
    out = tmp_path / "rep"
    not_run = tmp_path / "plain"
    not_run.mkdir()
    acrobot = _other_env(run_dirs["dqn_b"], tmp_path / "acrobot")
    (not_run / "config.yaml").write_text("algo: dqn\n")
    args = {
        "no_runs": [],
        "not_a_run": [run_dirs["dqn_a"], not_run],
        "mixed_envs": [f"x={run_dirs['dqn_a']}", f"x={acrobot}"],
        "busy_out": [run_dirs["dqn_a"]],
        "reps": [run_dirs["dqn_a"], "--reps", "0"],
        "ref": [run_dirs["dqn_a"], "--ref", "CartPole-v1=5"],
        "ref_env": [run_dirs["dqn_a"], "--ref", "Acrobot-v1=0,1"],
        "out_is_file": [run_dirs["dqn_a"]],
        "empty_label": [f"={run_dirs['dqn_a']}"],
        "threshold": [run_dirs["dqn_a"], "--threshold", "CartPole-v1=high"],
        "threshold_env": [run_dirs["dqn_a"], "--threshold", "Pendulum-v1=1"],
        "threshold_twice": [run_dirs["dqn_a"], "--threshold", "1", "--threshold", "2"],
    }[case]
    expect = {"no_runs": "no run directories given", "not_a_run": "plain is not a run directory (no summary.json)",
              "mixed_envs": "different envs", "busy_out": "holds no previous report", "reps": "--reps must be >= 1",
              "ref": "expected ENV=LOW,HIGH", "ref_env": "the runs' envs: CartPole-v1",
              "out_is_file": "is not a directory", "empty_label": "empty label",
              "threshold": "expected a number or ENV=NUMBER", "threshold_env": "Pendulum-v1, which no run uses",
              "threshold_twice": "given twice"}[case]
    if case == "busy_out":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    if case == "out_is_file":
        out.write_text("a file")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, stdout, err = _report([*args, "--out", out], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("python -m angle_jax.report: error: ") and expect in err, err
    assert stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def _module(*args):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=120)


def test_report_command_line(run_dirs, tmp_path):
    out = tmp_path / "rep"
    proc = _module("angle_jax.report", str(run_dirs["dqn_a"]), "--out", str(out), "--reps", "50")
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and (out / "profile.png").is_file()
    proc = _module("angle_jax.report", str(tmp_path / "nope"), "--out", str(tmp_path / "rep2"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope is not a directory" in proc.stderr
    assert not (tmp_path / "rep2").exists()
    proc = _module("angle_jax.report.curves", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope is not a directory" in proc.stderr
