"""The policy server's figures (benchmarks/RESULTS.md, "Online RL as a service").

    python benchmarks/bench_serve.py latency     # p50/p99 of /v1/act, DQN and TD3 presets, concurrency 1/16/64
    python benchmarks/bench_serve.py kill        # 10,000 decisions + feedbacks, kill -9 mid-way, restart
    python benchmarks/bench_serve.py learn       # CartPole-v1 online through HTTP, DQN, seeds 0-2

Every server runs as its own process on 127.0.0.1; the load comes from a client on the same
machine, so client and server share the CPU. `--client` names one or more of: `httpx`, an async
httpx client in this process (it spends 1-2 ms of CPU per request itself, so on two cores it, not
the server, caps the rate); `asyncio`, a minimal keep-alive HTTP/1.1 client on asyncio streams in
this process (pre-encoded requests; about a tenth of httpx's CPU); `wrk`, a load generator in C
(`apt-get install wrk`) with a Lua script for the POST bodies, run for a fixed time. Default: all
three (wrk when installed). Every row also
gives the server's CPU time per request (user + system time of the server process, read from
/proc before and after the run, divided by the requests served), which stays comparable on a
shared machine where wall-clock figures do not, and the 1-minute load average when the row ended.
The run directories use the presets' networks (configs/dqn_cartpole.yaml, configs/td3_pendulum.yaml)
with untrained parameters: latency does not depend on what the weights are. Every decision is
logged (SQLite WAL, synchronous=NORMAL unless `--sync full`) in every measurement.
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


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{}}
for i = 1, 256 do
  local o = {{}}
  for d = 1, {dim} do o[d] = string.format("%.5f", math.sin(i * 7 + d) * 0.5) end
  bodies[i] = '{{"obs": [' .. table.concat(o, ", ") .. '], "explore": true}}'
end
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/act", nil, bodies[(n % 256) + 1])
end
"""


def wrk_load(url: str, obs_dim: int, concurrency: int, seconds: float, tmp: Path) -> dict:
    """wrk for `seconds` (one thread, `concurrency` connections); its latency percentiles and rate."""
    script = tmp / f"act_{obs_dim}.lua"
    script.write_text(WRK_SCRIPT.format(dim=obs_dim))
    t0 = os.times()
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    t1 = os.times()
    wrk_cpu = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)

    def ms(text):
        v, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    pct = {k: ms(v) for k, v in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"requests": requests, "client_cpu_ms": 1e3 * wrk_cpu / max(requests, 1),
            "per_s": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
            "p50_ms": pct["50"], "p99_ms": pct["99"],
            "failures": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)}


async def raw_load(port: int, obs_dim: int, concurrency: int, requests: int, explore: bool = True):
    """As `load`, from a minimal HTTP/1.1 keep-alive client on asyncio streams (uvloop when installed):
    pre-encoded requests, the status line and Content-Length read back, nothing else. What a lean
    Python client costs, next to httpx's 1-2 ms of CPU per request."""
    rng = np.random.default_rng(0)
    reqs = []
    for _ in range(256):
        body = json.dumps({"obs": rng.normal(size=obs_dim).round(5).tolist(), "explore": explore}).encode()
        reqs.append(b"POST /v1/act HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    latencies, failures = [], [0]
    per_worker = requests // concurrency

    async def worker(w, record=True):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for k in range(per_worker):
                t0 = time.perf_counter()
                writer.write(reqs[(w * 7 + k) % 256])
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                if record:
                    latencies.append(time.perf_counter() - t0)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(w, False) for w in range(min(concurrency, 8))))  # warm-up
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return np.asarray(latencies), time.perf_counter() - t0, failures[0]


def _run_async(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def bench_latency(tmp: Path, requests: dict[int, int], clients: list[str], wrk_seconds: float = 10.0,
                  server_args: tuple[str, ...] = ()):
    rows = []
    for algo, env, obs_dim in (("dqn", "CartPole-v1", 4), ("td3", "Pendulum-v1", 3)):
        run = make_run(tmp, algo, env)
        shutil.rmtree(run / "serve", ignore_errors=True)
        server = Server(run, *server_args)
        try:
            for client in clients:
                for c, n in requests.items():
                    b0, r0 = server.metric("angle_serve_batches_total"), server.metric("angle_serve_batch_rows_total")
                    q0 = server.metric("angle_serve_act_requests_total")
                    s0, k0 = proc_cpu_seconds(server.p.pid), self_cpu_seconds()
                    if client in ("httpx", "asyncio"):
                        lat, wall, fails = (asyncio.run(load(server.url, obs_dim, c, n)) if client == "httpx" else
                                            _run_async(raw_load(server.port, obs_dim, c, n)))
                        row = {"requests": len(lat), "p50_ms": 1e3 * np.quantile(lat, 0.5),
                               "p99_ms": 1e3 * np.quantile(lat, 0.99), "per_s": len(lat) / wall, "failures": fails}
                    else:
                        row = wrk_load(server.url, obs_dim, c, wrk_seconds, tmp)
                    s1, k1 = proc_cpu_seconds(server.p.pid), self_cpu_seconds()
                    b1, r1 = server.metric("angle_serve_batches_total"), server.metric("angle_serve_batch_rows_total")
                    served = server.metric("angle_serve_act_requests_total") - q0  # warm-up requests included
                    if client in ("httpx", "asyncio"):
                        row["client_cpu_ms"] = 1e3 * (k1 - k0) / max(served, 1)
                    row.update(algo=algo, client=client, concurrency=c, mean_batch=(r1 - r0) / max(b1 - b0, 1),
                               server_cpu_ms=1e3 * (s1 - s0) / max(served, 1),
                               load=os.getloadavg()[0])
                    rows.append(row)
                    print(f"{algo:4} {client:7} c={c:<3} n={row['requests']:<6} p50 {row['p50_ms']:7.2f} ms  "
                          f"p99 {row['p99_ms']:7.2f} ms  {row['per_s']:7.0f} decisions/s  mean batch "
                          f"{row['mean_batch']:5.1f}  server CPU {row['server_cpu_ms']:.3f} ms/req  client CPU "
                          f"{row['client_cpu_ms']:.3f} ms/req  failures {row['failures']}  load {row['load']:.1f}",
                          flush=True)
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
    try:
        asyncio.run(main())
    finally:  # an error or an interrupt still stops the server it started
        state["server"].kill(signal.SIGTERM)
    wall = time.perf_counter() - t0
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
    p.add_argument("--client", default="httpx,asyncio,wrk" if shutil.which("wrk") else "httpx,asyncio",
                   help="load generators for `latency`, comma-separated from httpx, asyncio, wrk (default: all three "
                        "when wrk is installed)")
    p.add_argument("--wrk-seconds", type=float, default=10.0, help="duration of each wrk run")
    p.add_argument("--server-args", default="", help="extra server flags for `latency`, e.g. '--sync full'")
    args = p.parse_args(argv)
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_serve_"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"# {cpu_name()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    if args.what in ("latency", "all"):
        clients = args.client.split(",")
        if not set(clients) <= {"httpx", "asyncio", "wrk"}:
            p.error(f"--client takes httpx, asyncio and wrk, got {args.client}")
        bench_latency(tmp, {1: 1000, 16: 2000, 64: 4096}, clients, args.wrk_seconds, tuple(args.server_args.split()))
    if args.what in ("kill", "all"):
        bench_kill(tmp)
    if args.what in ("learn", "all"):
        bench_learn(tmp, [int(s) for s in args.seeds.split(",")], args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
