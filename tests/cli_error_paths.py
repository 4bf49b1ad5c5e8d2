"""Every refused command of train.py and play.py, run through their `main` in this one fresh
interpreter (tests/test_bad_input.py starts it). Prints one JSON list: per case the exit code,
the lines on stderr, whether a traceback appeared, and whether anything was written.

    python tests/cli_error_paths.py FINISHED_RUN_DIR SCRATCH_DIR
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import play  # noqa: E402
import train  # noqa: E402

BASE = ["--algo", "td3", "--env", "Pendulum-v1"]


def train_cases(scratch: Path) -> list[list[str]]:
    files = {
        "bad.yaml": "algo: td3\nagent: [unclosed\n", "list.yaml": "- 1\n- 2\n", "agent5.yaml": "agent: 5\n",
        "typo.yaml": "algo: td3\nenv: Pendulum-v1\nagent:\n  critic_lrr: 0.001\n", "meta5.yaml": "meta: 5\n",
    }
    for name, text in files.items():
        (scratch / name).write_text(text)
    sets = [
        "batch_sise=64", "agent.polcy_delay=2", "batch_size=lots", "agent.actor_lr=fast", "buffer_size=-5",
        "agent.actor_hidden=[0,4]", "nokey", "env_kwargs.no_such_key_xyz=1", "env_kwargs.max_speed=.nan",
        "buffer_size=100000000000", "buffer_size=2000000000", "agent.actor_lr=.nan", "agent.actor_lr=inf",
        "agent.gamma=-inf", "total_steps=3000000000", "num_envs=0", "device=tpu", "kernels=gpu", "device=quantum",
        "meta.kind=evolution", "meta.metalr=1", "meta.interval=0", "auxiliary=[risky]", "imports=[no_such_module]",
        "meta.bounds.gamma=[0.999,0.9]", "modules=[rnd]",
    ]
    cases = [[*BASE, "--set", s] for s in sets]
    cases += [
        ["--algo", "td4"], ["--env", "Pendulum-v2"], [*BASE, "--env", "CartPole-v1"], [*BASE, "--seeds", "0"],
        [*BASE, "--seeds", "100000000"], [*BASE, "--device", "gpu"], [*BASE, "--bogus"],
        [*BASE, "--set", "buffer_size=100", "--set", "batch_size=256"],
        ["--config", str(scratch / "missing.yaml")], ["--config", str(scratch / "bad.yaml")],
        ["--config", str(scratch / "list.yaml")], ["--config", str(scratch / "agent5.yaml")],
        ["--config", str(scratch / "typo.yaml")], ["--config", str(scratch / "meta5.yaml")],
        ["--algo", "a2c", "--env", "CartPole-v1", "--set", "meta.kind=meta_gradient"],
        ["--algo", "ppo", "--env", "CartPole-v1", "--set", "modules=[curiosity]"],
        ["--algo", "ppo", "--env", "CartPole-v1", "--set", "agent.minibatches=3", "--set", "num_envs=5"],
        ["--algo", "ppo", "--env", "CartPole-v1", "--set", "agent.obs_clip=0"],
        ["--algo", "ppo", "--env", "CartPole-v1", "--set", "agent.normalize_reward=true", "--set",
         "meta.kind=meta_gradient"],
        ["--algo", "ppo", "--env", "Breakout-MinAtar", "--set", "agent.normalize_obs=maybe"],
        [*BASE, "--sweep", "tau=0.1,0.1"], [*BASE, "--sweep", "actor_hidden=1,2"], [*BASE, "--sweep", "taux=1,2"],
        ["--algo", "td3", "--env", "DataFeedContinuous-v0", "--set", "env_kwargs.no_such=1"],
    ]
    return cases


def run(module, args: list[str]) -> tuple[int, list[str], bool]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = module.main(args)
        except SystemExit as e:
            code = e.code
        except Exception:  # an escaped error: what the caller must report
            import traceback

            traceback.print_exc(file=err)
            code = 1
    text = err.getvalue()
    return code, text.strip().splitlines(), "Traceback" in text


def main() -> None:
    finished, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    results = []
    for i, args in enumerate(train_cases(scratch)):
        run_dir = scratch / f"train_{i}"
        code, lines, tb = run(train, [*args, "--run-dir", str(run_dir)])
        results.append({"script": "train.py", "args": args, "code": code, "stderr": lines, "traceback": tb,
                        "wrote": run_dir.exists()})
    # a finished run: resumed with bad settings, or written over
    copy = scratch / "finished"
    shutil.copytree(finished, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    for args in (["--resume", str(copy), "--set", "agent.critic_hidden=[32,32]"],
                 ["--resume", str(copy), "--sweep", "tau=0.1,0.2"], ["--resume", str(scratch / "not_a_run")],
                 [*BASE, "--run-dir", str(copy)], ["--resume", str(copy), "--set", "agent.tau=nan"]):
        code, lines, tb = run(train, args)
        after = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        results.append({"script": "train.py", "args": args, "code": code, "stderr": lines, "traceback": tb,
                        "wrote": after != before or (scratch / "not_a_run").exists()})
    video = scratch / "out.avi"
    no_config = scratch / "no_config"
    no_config.mkdir()
    for args in (["--checkpoint", str(scratch / "missing")], ["--checkpoint", str(no_config)],
                 ["--checkpoint", str(copy), "--episodes", "0"], ["--checkpoint", str(copy), "--video", str(video)],
                 ["--checkpoint", str(copy), "--run-index", "5"],
                 ["--checkpoint", str(copy), "--env", "MountainCarContinuous-v0"],
                 ["--checkpoint", str(copy), "--env-set", "nokv"],
                 ["--checkpoint", str(copy), "--env-set", "no_such_key=1"],
                 ["--checkpoint", str(copy), "--device", "tpu"], ["--checkpoint", str(copy), "--bogus"]):
        code, lines, tb = run(play, args)
        results.append({"script": "play.py", "args": args, "code": code, "stderr": lines, "traceback": tb,
                        "wrote": video.exists()})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
