"""Scaling: sweeps in one compile, runs sharded over devices, data-parallel runs, two processes.

Multi-device checks run in fresh processes (XLA_FLAGS is read when JAX starts):
tests/scale_checks.py with 4 host devices, and two processes of 2 host devices
each joined over 127.0.0.1 with jax.distributed. All are started at once.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_TD3, xla_default_env

# its module-scoped fixtures are built once: all its tests run on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("scale")

SCRIPT = str(REPO / "tests" / "scale_checks.py")


def _spawn(args, devices: int):
    env = xla_default_env()  # the checks compare differently laid-out programs bit for bit
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env.pop("JAX_PLATFORMS", None)
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)


def _result(proc, timeout=400):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checks():
    """Results of the 4-device checks and of both processes of the 2-process job."""
    port = str(_free_port())
    procs = [_spawn([], 4), _spawn(["multihost", "0", port], 2), _spawn(["multihost", "1", port], 2)]
    try:
        single, *hosts = [_result(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return single, hosts


def test_sharded_runs_equal_single_device_runs(checks):
    r = checks[0]["sharded_sweep"]
    assert r["devices"] == 4 and r["mesh"] == [4, 1] and "runs" in r["critic_sharding"]
    assert r["sharded_vs_single_device"] < 1e-5
    assert r["logs_diff"] < 1e-4


def test_recurrent_seeds_build_on_several_devices_as_single_runs(checks):
    r = checks[0]["recurrent_init"]
    assert r["mesh"] == [4, 1]
    assert r["seed_vs_single"] == [0.0, 0.0]


def test_sweep_grid_is_keyed_by_config_then_seed(checks):
    r = checks[0]["sharded_sweep"]
    np.testing.assert_allclose(r["run_critic_lr"], [0.0, 0.0, 1e-3, 1e-3])
    assert r["critic_moved_per_run"][:2] == [0.0, 0.0]  # critic_lr = 0: the critic never moves
    assert min(r["critic_moved_per_run"][2:]) > 1e-3
    assert r["labels"][2] == "run_2: critic_lr=0.001 seed=0"


def test_data_parallel_update_equals_full_batch_update(checks):
    r = checks[0]["dp_update"]
    assert r["params_changed"]
    assert max(r["dp_vs_single_per_shard"]) < 1e-5
    assert r["critic_loss_mean_vs_full"] < 1e-5
    assert r["all_reduce_in_hlo"]


def test_data_parallel_run_keeps_shards_identical(checks):
    r = checks[0]["dp_train"]
    assert r["mesh"] == [1, 4] and r["all_reduce_in_hlo"]
    assert r["shard_spread"] == 0.0 and r["moved"] > 0
    assert r["dp_sharded_vs_single_device"] < 1e-4
    assert r["steps"] == 800 and r["export_shape"][0] == 1


def test_two_processes_run_the_same_data_parallel_job(checks):
    single, hosts = checks
    assert sorted(h["process"] for h in hosts) == [0, 1]
    for h in hosts:
        assert h["processes"] == 2 and h["global_devices"] == 4 and h["local_devices"] == 2
        assert h["psum"] == 10.0 and h["mesh"] == [1, 4]
    assert hosts[0]["fingerprint"] == hosts[1]["fingerprint"]
    np.testing.assert_allclose(hosts[0]["fingerprint"], single["dp_train"]["fingerprint"], rtol=1e-4)
    np.testing.assert_allclose(hosts[0]["eval"], single["dp_train"]["eval"], rtol=1e-3)


# ---- command line and config (this process, no multi-device) -------------------------

def run_main(capsys, *argv):
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(list(argv))
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("sweep,message", [
    ("batch_size=32,64", "batch_size changes the compiled program's shapes"),
    ("agent.policy_delay=1,2", "policy_delay changes the compiled program's shapes"),
    ("critic_lrr=1e-3", "unknown sweep name 'critic_lrr'; sweepable: actor_lr, critic_lr"),
    ("critic_lr=fast", "sweep critic_lr: 'fast' is not a number"),
])
def test_bad_sweep_is_refused_before_compile(tmp_path, capsys, sweep, message):
    code, err = run_main(capsys, "--no-preset", "--run-dir", str(tmp_path / "r"), "--sweep", sweep)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_data_parallel_sizes_must_divide(tmp_path, capsys):
    code, err = run_main(capsys, "--no-preset", "--run-dir", str(tmp_path / "r"), "--data-parallel", "3",
                         "--set", "num_envs=6", "--set", "batch_size=32")
    assert code == 2 and "data_parallel=3 needs batch_size divisible by 3, got 32" in err


def test_sweep_run_writes_results_table(tmp_path):
    from conftest import run_in_process

    run_dir = tmp_path / "sweep"
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(run_dir), "--seeds", "2",
            "--sweep", "agent.critic_lr=0,1e-3"]
    for o in TINY_TD3 + ["total_steps=600", "learning_starts=300", "log_interval=600"]:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = summary["sweep"]
    assert [row["critic_lr"] for row in rows] == [0.0, 1e-3]
    assert rows[1]["runs"] == [2, 3] and rows[1]["seeds"] == [0, 1]
    assert len(rows[0]["final_eval_return_per_seed"]) == 2
    assert np.isclose(rows[0]["final_eval_return_mean"], np.mean(rows[0]["final_eval_return_per_seed"]))
    assert summary["runs"][3] == "run_3: critic_lr=0.001 seed=1"
    assert "critic_lr" in proc.stdout and "per seed" in proc.stdout
    from angle_jax.config import load_config

    assert load_config(run_dir / "config.yaml").sweep == {"critic_lr": [0.0, 1e-3]}
