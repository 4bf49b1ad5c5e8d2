"""Shared fixtures: tiny configs and one compiled TD3 run reused across tests."""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One persistent XLA cache for the whole session, shared with the train.py / play.py
# subprocesses, so identical programs compile once.
REPO = Path(__file__).resolve().parent.parent

_CACHE = Path(os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                    str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "xla")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite spends most of its time in XLA's compiler, on programs that then run for milliseconds:
# compile them with LLVM at -O0 and XLA:CPU's older fusion emitters (TD3's tiny training chunk:
# 2.9 -> 1.6 s to compile, 0.09 -> 0.2 s to run). The programs are the same; only their machine
# code differs (benchmarks and user runs keep XLA's defaults). Inherited by the subprocesses.
# Two *different* programs computing the same value agree bit for bit under XLA's defaults but
# can differ in the last bit under these settings, so the tests of such agreement run with the
# defaults (`xla_defaults`). ANGLE_XLA_DEFAULTS=1 runs the whole suite with the defaults.
# (remembered in the environment: pytest-xdist's workers import this file again, with the flags set)
DEFAULT_XLA_FLAGS = os.environ.setdefault("ANGLE_DEFAULT_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
FAST_XLA = not os.environ.get("ANGLE_XLA_DEFAULTS")
if FAST_XLA:
    os.environ["XLA_FLAGS"] = f"{DEFAULT_XLA_FLAGS} --xla_backend_optimization_level=0 " \
                              f"--xla_cpu_use_fusion_emitters=false".strip()


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


def xla_default_env() -> dict:
    """The environment with XLA's default compiler settings (for a subprocess)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = DEFAULT_XLA_FLAGS
    env["ANGLE_XLA_DEFAULTS"] = "1"
    return env


def xla_defaults(test):
    """Run `test` under XLA's default compiler settings: when the suite compiles fast (`FAST_XLA`),
    in a fresh pytest process (the settings are read when JAX starts); else as it is. For tests
    that compare two different compiled programs bit for bit."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        if not FAST_XLA:
            return test(*args, **kwargs)
        nodeid = f"{Path(inspect.getfile(test)).relative_to(REPO)}::{test.__name__}"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", nodeid],
                              capture_output=True, text=True, cwd=REPO, env=xla_default_env(), timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return None

    return run


def run_in_process(script: str, *args: str) -> subprocess.CompletedProcess:
    """`train.py` / `play.py` called in this process (their `main`, stdout and stderr captured):
    the same code path as `run_script` without a fresh interpreter's startup, and compiled
    programs shared with the other tests. Use `run_script` where a fresh process matters (a
    kill, a traceback check, XLA flags read at startup)."""
    module = importlib.import_module(script.removesuffix(".py"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(list(args))
        except SystemExit as e:
            code = e.code
    code = 0 if code is None else code if isinstance(code, int) else 1
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished tiny TD3 run directory (train.py end to end), shared by several tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "td3_tiny"
    args = ["--algo", "td3", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(run_dir),
            "--set", "checkpoint_interval=500", "--set", "eval_interval=2000"]
    for o in TINY_TD3:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


@pytest.fixture
def no_matplotlib(monkeypatch):
    """`import matplotlib` (and its submodules) fails, as on an install without it."""
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def scan_rollout(env, actions, key):
    """Step a batched env with `actions` [T, N, ...] inside one jit(lax.scan): the observation
    before each step and the step's TimeStep, as numpy arrays, time-major."""
    import jax

    @jax.jit
    def run(key):
        obs, state = env.reset(key)

        def body(c, a):
            state, obs = c
            state, ts = env.step(state, a, key)
            return (state, ts.obs), (obs, ts)

        _, out = jax.lax.scan(body, (state, obs), actions)
        return out

    return jax.device_get(run(key))
