"""train.py end to end and its bad-input handling (one line on stderr, exit 2, nothing compiled)."""
import json

import pytest

from conftest import run_script


def test_train_writes_run_directory(trained_run):
    run_dir, proc = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("algo", "env", "seeds", "total_steps", "final_eval_return_mean", "final_eval_return_per_seed",
                "compile_s", "train_s", "steps_per_s"):
        assert key in summary, key
    assert summary["algo"] == "td3" and summary["total_steps"] == 3000 and summary["seeds"] == 1
    assert len(summary["final_eval_return_per_seed"]) == 1
    assert "final eval" in proc.stdout
    for name in ("config.yaml", "params.ckpt", "metrics.jsonl", "spec.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "events").iterdir())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[-1])["step"] == 3000


def test_help_lists_algorithms_and_envs(capsys):
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "td3" in out and "Pendulum-v1" in out and "CartPole-v1" in out


BAD = [
    (["--algo", "td4"], "unknown algo 'td4'; did you mean 'td3'"),
    (["--env", "Pendulum-v2"], "unknown env 'Pendulum-v2'; did you mean 'Pendulum-v1'"),
    (["--set", "batch_sise=64"], "unknown config key 'batch_sise'; did you mean 'batch_size'"),
    (["--set", "agent.polcy_delay=2"], "unknown config key 'agent.polcy_delay'"),
    (["--set", "batch_size=lots"], "batch_size must be an integer"),
    (["--set", "agent.actor_lr=fast"], "actor_lr must be a number"),
    (["--set", "buffer_size=-5"], "buffer_size must be positive"),
    (["--set", "agent.actor_hidden=[0,4]"], "actor_hidden must be a non-empty list of positive widths"),
    (["--set", "buffer_size=100", "--set", "batch_size=256"], "batch_size (256) is larger than buffer_size (100)"),
    (["--env", "CartPole-v1"], "td3 needs continuous actions, but CartPole-v1 has 2 discrete actions"),
    (["--seeds", "0"], "seeds must be positive"),
    (["--set", "nokey"], "--set expects key=value"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, capsys, args, message):
    code, err = run_main(capsys, "--run-dir", str(tmp_path / "r"), *args)
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def run_main(capsys, *argv):
    """train.main in-process: (exit code, stderr)."""
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(list(argv))
    return exc.value.code, capsys.readouterr().err


def test_bad_input_in_a_fresh_process_has_no_traceback(tmp_path):
    proc = run_script("train.py", "--algo", "td4", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == proc.stderr.strip().splitlines()[0]


def test_unreadable_yaml_and_missing_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: td3\nagent: [unclosed\n")
    code, err = run_main(capsys, "--config", str(bad))
    assert code == 2 and "is not valid YAML" in err
    code, err = run_main(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    code, err = run_main(capsys, "--config", str(listy))
    assert code == 2 and "must hold a mapping" in err


def test_config_file_keys_are_checked(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algo: td3\nenv: Pendulum-v1\nagent:\n  critic_lrr: 0.001\n")
    code, err = run_main(capsys, "--config", str(cfg))
    assert code == 2 and "unknown config key 'agent.critic_lrr'; did you mean 'critic_lr'" in err


def test_presets_parse():
    from angle_jax.config import CONFIG_DIR, load_config

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        load_config(path)


def test_summary_records_backend_device_kind_and_kernels(trained_run):
    run_dir, _ = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == "cpu" and summary["device_kind"] and summary["kernels"] == "cpu"
    assert "kernels: cpu" in (run_dir / "config.yaml").read_text()  # the kernels the run was made with


@pytest.mark.parametrize("args", [["--device", "gpu"], ["--set", "device=tpu"]])
def test_asking_for_an_absent_backend_is_one_line_naming_the_present_ones(tmp_path, capsys, args):
    code, err = run_main(capsys, "--run-dir", str(tmp_path / "r"), *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is not available here; present: cpu" in err
    assert not (tmp_path / "r").exists()


def test_unknown_kernels_and_devices_list_the_valid_ones(tmp_path, capsys):
    code, err = run_main(capsys, "--run-dir", str(tmp_path / "r"), "--set", "kernels=gpu")
    assert code == 2 and "kernels must be one of auto, xla, cpu" in err
    code, err = run_main(capsys, "--run-dir", str(tmp_path / "r"), "--set", "device=quantum")
    assert code == 2 and "device must be one of auto, cpu, gpu, tpu" in err
    assert not (tmp_path / "r").exists()


def test_play_on_an_absent_backend_is_one_line(trained_run):
    run_dir, _ = trained_run
    proc = run_script("play.py", "--checkpoint", str(run_dir), "--device", "tpu", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not available here; present: cpu" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
