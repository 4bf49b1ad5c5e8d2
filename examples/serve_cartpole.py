"""Online RL through the policy server: gymnax CartPole-v1 played over HTTP from an untrained DQN
while the online learner improves it.

    python examples/serve_cartpole.py --run runs/serve_cartpole [--envs 4] [--budget 150000]

What it does: makes a DQN CartPole run directory if there is none (train.py with the CartPole
preset and no training, just its config), starts `python -m angle_jax.serve --fresh` (a freshly
initialised policy) and `python -m angle_jax.serve.learn --fresh` on it, then plays `--envs`
episodes at a time, one thread each: every step asks `/v1/act` (explore: ε-greedy, ε decays with the
decisions served), steps the env, and sends `/v1/feedback` with the reward, the end flags and the
next observation. It prints the mean return of the last 20 finished episodes and stops when that
reaches `--target` or after `--budget` decisions. Both processes are stopped at the end.
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_run(run: Path, seed: int) -> None:
    """A DQN CartPole run directory with the preset's settings (its parameters are not used: the
    server and the learner start fresh)."""
    if (run / "config.yaml").is_file():
        return
    cmd = [sys.executable, str(REPO / "train.py"), "--algo", "dqn", "--env", "CartPole-v1", "--run-dir", str(run),
           "--seed", str(seed), "--set", "total_steps=400", "--set", "learning_starts=1000", "--set", "progress=false",
           "--set", "eval_episodes=1"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def play(url: str, envs: int, budget: int, target: float, seed: int, window: int = 20, report_every: float = 10.0):
    """Play until the mean of the last `window` returns reaches `target` or `budget` decisions are
    spent; returns (returns of every finished episode, decisions made, solved?)."""
    import gymnax
    import jax
    import numpy as np

    from angle_jax.serve import Client

    env, params = gymnax.make("CartPole-v1")
    reset = jax.jit(lambda k: env.reset(k, params))
    step = jax.jit(lambda k, s, a: env.step(k, s, a, params))
    returns: list[float] = []
    recent = collections.deque(maxlen=window)
    lock = threading.Lock()
    decisions = [0]
    done_flag = threading.Event()
    solved = [False]

    def worker(i: int):
        client = Client(url)
        key = jax.random.PRNGKey(seed * 1000 + i)
        key, k = jax.random.split(key)
        obs, state = reset(k)
        episode, ret = 0, 0.0
        while not done_flag.is_set():
            d = client.act(np.asarray(obs), episode_id=f"s{seed}-w{i}-e{episode}", explore=True)
            key, k = jax.random.split(key)
            obs2, state, reward, terminated, truncated, info = step(k, state, d["action"])
            terminated, truncated = bool(terminated), bool(truncated)
            end = terminated or truncated
            next_obs = np.asarray(info["final_observation"]) if end else np.asarray(obs2)
            client.feedback(d["event_id"], float(reward), terminated, truncated, next_obs=next_obs)
            ret += float(reward)
            obs = obs2
            with lock:
                decisions[0] += 1
                if decisions[0] >= budget:
                    done_flag.set()
                if end:
                    returns.append(ret)
                    recent.append(ret)
                    if len(recent) == window and np.mean(recent) >= target:
                        solved[0] = True
                        done_flag.set()
            if end:
                episode, ret = episode + 1, 0.0

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(envs)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    last = t0
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if time.monotonic() - last > report_every:
            last = time.monotonic()
            with lock:
                mean = float(np.mean(recent)) if recent else float("nan")
                print(f"{decisions[0]:>7} decisions  {len(returns):>5} episodes  mean of last {len(recent)}: "
                      f"{mean:6.1f}  ({decisions[0] / (last - t0):.0f} decisions/s)", flush=True)
    return returns, decisions[0], solved[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/serve_cartpole", help="run directory (made if missing)")
    p.add_argument("--envs", type=int, default=4, help="episodes played at once (one thread each)")
    p.add_argument("--budget", type=int, default=150_000, help="decisions at most")
    p.add_argument("--target", type=float, default=400.0, help="stop when the mean of 20 returns reaches it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--publish-every", type=int, default=50, help="learner publishes after every K updates")
    args = p.parse_args(argv)
    run = Path(args.run).resolve()
    ensure_run(run, args.seed)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (run / "serve").mkdir(parents=True, exist_ok=True)
    server = start(["-m", "angle_jax.serve", "--checkpoint", str(run), "--port", str(port), "--fresh",
                    "--seed", str(args.seed), "--max-batch", "16"], run / "serve" / "server.out")
    learner = None
    try:
        from angle_jax.serve import Client

        Client(url).wait_ready(timeout=180)
        learner = start(["-m", "angle_jax.serve.learn", "--run", str(run), "--fresh", "--seed", str(args.seed),
                         "--publish-every", str(args.publish_every)], run / "serve" / "learner.out")
        returns, decisions, solved = play(url, args.envs, args.budget, args.target, args.seed)
        import numpy as np

        last = returns[-20:]
        print(f"{'solved' if solved else 'not solved'}: {decisions} decisions, {len(returns)} episodes, mean of "
              f"the last {len(last)} returns {np.mean(last) if last else float('nan'):.1f}")
        return 0
    finally:
        if learner is not None:
            stop(learner)
        stop(server)


if __name__ == "__main__":
    sys.exit(main())
