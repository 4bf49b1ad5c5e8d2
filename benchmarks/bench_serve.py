"""The policy server's figures (benchmarks/RESULTS.md, "Online RL as a service").

    python benchmarks/bench_serve.py latency     # p50/p99 of /v1/act, DQN and TD3 presets, concurrency 1/16/64
    python benchmarks/bench_serve.py kill        # 10,000 decisions + feedbacks, kill -9 mid-way, restart
    python benchmarks/bench_serve.py learn       # CartPole-v1 online through HTTP, DQN, seeds 0-2

Every server runs as its own process on 127.0.0.1; the load comes from an async HTTP client
(httpx) in this process, on the same machine, so client and server share the CPU. The run
directories use the presets' networks (configs/dqn_cartpole.yaml, configs/td3_pendulum.yaml) with
untrained parameters: latency does not depend on what the weights are. Every decision is logged
(SQLite WAL, synchronous=NORMAL) in every measurement.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        return f"{m.group(1).strip() if m else platform.processor()}, {os.cpu_count()} cores"
    except OSError:
        return f"{platform.processor()}, {os.cpu_count()} cores"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run(tmp: Path, algo: str, env: str) -> Path:
    """A run directory with the preset's network and no training (learning_starts > total_steps)."""
    run = tmp / f"{algo}_preset"
    if not (run / "config.yaml").is_file():
        subprocess.run([sys.executable, str(REPO / "train.py"), "--algo", algo, "--env", env, "--run-dir", str(run),
                        "--set", "total_steps=200", "--set", "learning_starts=1000", "--set", "progress=false",
                        "--set", "eval_episodes=1"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return run


class Server:
    def __init__(self, run: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = open(run / "bench_server.out", "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "angle_jax.serve", "--checkpoint", str(run), "--port",
                                   str(self.port), *extra], cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT,
                                  start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def metric(self, name: str) -> float:
        import httpx

        text = httpx.get(f"{self.url}/v1/metrics").text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1))

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)
            self.p.wait(timeout=30)
        self.out.close()


async def load(url: str, obs_dim: int, concurrency: int, requests: int, explore: bool = True):
    """`requests` act calls from `concurrency` workers; returns (latencies in s, wall time, failures)."""
    import httpx

    rng = np.random.default_rng(0)
    bodies = [json.dumps({"obs": rng.normal(size=obs_dim).round(5).tolist(), "explore": explore}).encode()
              for _ in range(256)]
    latencies, failures = [], [0]
    per_worker = requests // concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker(w):
            for k in range(per_worker):
                t0 = time.perf_counter()
                r = await client.post("/v1/act", content=bodies[(w * 7 + k) % 256],
                                      headers={"Content-Type": "application/json"})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures[0] += 1

        await asyncio.gather(*(worker(w) for w in range(min(concurrency, 8))))  # warm-up connections
        latencies.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    return np.asarray(latencies), wall, failures[0]


def bench_latency(tmp: Path, requests: dict[int, int]):
    rows = []
    for algo, env, obs_dim in (("dqn", "CartPole-v1", 4), ("td3", "Pendulum-v1", 3)):
        run = make_run(tmp, algo, env)
        server = Server(run)
        try:
            for c, n in requests.items():
                b0, r0 = server.metric("angle_serve_batches_total"), server.metric("angle_serve_batch_rows_total")
                lat, wall, fails = asyncio.run(load(server.url, obs_dim, c, n))
                b1, r1 = server.metric("angle_serve_batches_total"), server.metric("angle_serve_batch_rows_total")
                mean_batch = (r1 - r0) / max(b1 - b0, 1)
                row = {"algo": algo, "concurrency": c, "requests": len(lat), "p50_ms": 1e3 * np.quantile(lat, 0.5),
                       "p99_ms": 1e3 * np.quantile(lat, 0.99), "per_s": len(lat) / wall, "mean_batch": mean_batch,
                       "failures": fails}
                rows.append(row)
                print(f"{algo:4} c={c:<3} n={row['requests']:<5} p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms"
                      f"  {row['per_s']:7.0f} decisions/s  mean batch {mean_batch:5.1f}  failures {fails}", flush=True)
        finally:
            server.kill(signal.SIGTERM)
    return rows


def bench_kill(tmp: Path, total: int = 10_000, concurrency: int = 16):
    """`total` acknowledged decision+feedback pairs, the server killed -9 after half, restarted."""
    import httpx

    run = tmp / "kill_run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(make_run(tmp, "dqn", "CartPole-v1"), run, ignore=shutil.ignore_patterns("serve"))
    acked_d, acked_f = [], []
    state = {"server": Server(run), "killed": False}

    async def worker(client_box, w):
        k = 0
        while len(acked_f) < total:
            client = client_box[0]
            try:
                r = await client.post("/v1/act", json={"obs": [0.01 * (k % 7), 0.0, 0.0, 0.0], "explore": True,
                                                       "episode_id": f"w{w}"})
                if r.status_code != 200:
                    continue
                eid = r.json()["event_id"]
                acked_d.append(eid)
                f = await client.post("/v1/feedback", json={"event_id": eid, "reward": 1.0, "terminated": False})
                if f.status_code == 200:
                    acked_f.append(eid)
            except (httpx.TransportError, RuntimeError):  # the server is down (the old client closed): wait
                await asyncio.sleep(0.05)
            k += 1

    async def main():
        box = [httpx.AsyncClient(base_url=state["server"].url, timeout=5)]
        tasks = [asyncio.create_task(worker(box, w)) for w in range(concurrency)]
        while len(acked_f) < total // 2:
            await asyncio.sleep(0.005)
        state["server"].kill()
        state["killed_at"] = (len(acked_d), len(acked_f))
        await box[0].aclose()
        state["server"] = await asyncio.to_thread(Server, run)  # restart on the same log
        box[0] = httpx.AsyncClient(base_url=state["server"].url, timeout=5)
        await asyncio.gather(*tasks)
        await box[0].aclose()

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    state["server"].kill(signal.SIGTERM)
    db = sqlite3.connect(run / "serve" / "decisions.db")
    decided: dict[str, int] = {}
    for (eid,) in db.execute("SELECT event_id FROM decisions"):
        decided[eid] = decided.get(eid, 0) + 1
    answered: dict[str, int] = {}
    for (eid,) in db.execute("SELECT event_id FROM feedback"):
        answered[eid] = answered.get(eid, 0) + 1
    out = {"acked_decisions": len(acked_d), "acked_feedback": len(acked_f), "killed_at": state["killed_at"],
           "missing_decisions": sum(1 for e in acked_d if e not in decided),
           "missing_feedback": sum(1 for e in acked_f if e not in answered),
           "duplicated": sum(1 for v in decided.values() if v > 1) + sum(1 for v in answered.values() if v > 1),
           "log_decisions": len(decided), "log_feedback": len(answered),
           "integrity": db.execute("PRAGMA integrity_check").fetchone()[0], "wall_s": wall}
    print(json.dumps(out), flush=True)
    return out


def bench_learn(tmp: Path, seeds: list[int], budget: int):
    sys.path.insert(0, str(REPO / "examples"))
    import serve_cartpole

    results = []
    for seed in seeds:
        run = tmp / f"learn_seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        server_log = run / "serve"
        serve_cartpole.ensure_run(run, seed)
        code = serve_cartpole.main(["--run", str(run), "--seed", str(seed), "--budget", str(budget)])
        results.append({"seed": seed, "code": code, "wall_s": time.perf_counter() - t0, "dir": str(server_log)})
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="policy server benchmarks")
    p.add_argument("what", choices=["latency", "kill", "learn", "all"])
    p.add_argument("--dir", help="working directory (default: a temporary one)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=150_000)
    args = p.parse_args(argv)
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_serve_"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"# {cpu_name()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    if args.what in ("latency", "all"):
        bench_latency(tmp, {1: 1000, 16: 2000, 64: 4096})
    if args.what in ("kill", "all"):
        bench_kill(tmp)
    if args.what in ("learn", "all"):
        bench_learn(tmp, [int(s) for s in args.seeds.split(",")], args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
