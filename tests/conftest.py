"""Shared fixtures: tiny configs and one compiled TD3 run reused across tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# One persistent XLA cache for the whole session, shared with the train.py / play.py
# subprocesses, so identical programs compile once.
_CACHE = Path(os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                    str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "xla")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = Path(__file__).resolve().parent.parent

TINY_TD3 = [
    "total_steps=3000", "learning_starts=500", "buffer_size=3000", "batch_size=32", "log_interval=250",
    "eval_episodes=2", "agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]", "progress=false",
]


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: float = 300, env=None):
    """Run train.py / play.py in a subprocess; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished tiny TD3 run directory (train.py end to end), shared by several tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "td3_tiny"
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(run_dir),
            "--set", "checkpoint_interval=500", "--set", "eval_interval=2000"]
    for o in TINY_TD3:
        args += ["--set", o]
    proc = run_script("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc
