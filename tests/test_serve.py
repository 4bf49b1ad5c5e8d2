"""The policy server and the online learner as real processes on 127.0.0.1, over real HTTP.

One tiny DQN CartPole run (train.py) is served by a token-protected server for the API tests, and
by a second server (on a copy of the run) for hot swap under load and kill -9 / restart; the
learner is killed with -9 mid-way and resumes from its checkpointed offset. Every process is killed
when its test ends; buckets stop at 8 rows so start-up compiles little."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO, run_in_process

pytestmark = pytest.mark.xdist_group("serve")

TOKEN = "s3cret-token"
OBS = [0.01, -0.02, 0.03, 0.04]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess in its own process group, killed (-9) on `kill` or when the test ends."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.out = open(log, "ab")
        self.p = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=dict(os.environ))

    def kill(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=10)
        self.out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(run_dir: Path, tmp: Path, *extra: str, token: str | None = None, timeout: float = 90):
    port = free_port()
    args = ["-m", "angle_jax.serve", "--checkpoint", str(run_dir), "--port", str(port), "--max-batch", "8", *extra]
    if token:
        args += ["--token", token]
    proc = Proc(args, tmp / f"server_{port}.log")
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/v1/health", headers=headers, timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.p.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start:\n{proc.text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("serve") / "dqn_tiny"
    args = ["--algo", "dqn", "--env", "CartPole-v1", "--no-preset", "--run-dir", str(run_dir)]
    for o in ("total_steps=400", "learning_starts=200", "buffer_size=400", "batch_size=16", "log_interval=200",
              "eval_episodes=1", "agent.hidden=[16,16]", "progress=false"):
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def server(dqn_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    run = tmp / "run"
    shutil.copytree(dqn_run, run)
    proc, url = start_server(run, tmp, "--feedback-window", "1.5", "--max-body-bytes", "4096", token=TOKEN)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    yield client, run
    client.close()
    proc.kill()


def test_act_feedback_round_trip_is_logged(server):
    client, run = server
    d = client.post("/v1/act", json={"obs": OBS, "episode_id": "ep-1", "explore": True}).json()
    assert set(d) == {"event_id", "action", "log_prob", "model_version"}
    assert d["action"] in (0, 1) and d["model_version"] == 0
    # ε-greedy at the run's first served step: ε = 1, so each action has probability 1/2
    assert d["log_prob"] == pytest.approx(np.log(0.5), abs=1e-5)
    ack = client.post("/v1/feedback", json={"event_id": d["event_id"], "reward": 1.0, "terminated": False,
                                            "next_obs": OBS})
    assert ack.status_code == 200 and ack.json() == {"ok": True, "event_id": d["event_id"]}
    db = sqlite3.connect(run / "serve" / "decisions.db")
    row = db.execute("SELECT d.episode_id, d.action, f.reward FROM decisions d JOIN feedback f USING (event_id) "
                     "WHERE event_id = ?", (d["event_id"],)).fetchone()
    assert row == ("ep-1", str(d["action"]), 1.0)
    health = client.get("/v1/health").json()
    assert health["algo"] == "dqn" and health["obs_shape"] == [4] and health["action_space"]["n"] == 2
    metrics = client.get("/v1/metrics").text
    for name in ("angle_serve_act_requests_total", 'angle_serve_act_latency_seconds{quantile="0.99"}',
                 "angle_serve_batch_rows_total", "angle_serve_model_version 0", "angle_serve_log_lag_decisions"):
        assert name in metrics, name


def test_batched_act_equals_single_act_for_each_row(server):
    client, _ = server
    rows = np.random.default_rng(0).normal(size=(5, 4)).round(4).tolist()
    batch = client.post("/v1/act", json={"obs": rows, "episode_id": [f"b{i}" for i in range(5)]}).json()
    assert len(batch["event_id"]) == len(set(batch["event_id"])) == 5
    single = [client.post("/v1/act", json={"obs": r}).json() for r in rows]
    assert batch["action"] == [s["action"] for s in single]
    assert batch["log_prob"] == [s["log_prob"] for s in single] == [0.0] * 5  # greedy: probability 1


BAD_REQUESTS = [
    ("act", b"{not json", 400, "body"),
    ("act", {"explore": True}, 422, "obs"),
    ("act", {"obs": [0.1, 0.2, 0.3]}, 422, "obs"),
    ("act", {"obs": [[0.1, 0.2], [0.3, 0.4]]}, 422, "obs"),
    ("act", b'{"obs": [0.1, NaN, 0.3, 0.4]}', 422, "obs"),
    ("act", b'{"obs": [0.1, Infinity, 0.3, 0.4]}', 422, "obs"),
    ("act", {"obs": "0.1 0.2 0.3 0.4"}, 422, "obs"),
    ("act", {"obs": [0.1, "a", 0.3, 0.4]}, 422, "obs"),
    ("act", {"obs": OBS, "explore": "yes"}, 422, "explore"),
    ("act", {"obs": OBS, "episode_id": 7}, 422, "episode_id"),
    ("act", {"obs": OBS, "policy": "other"}, 422, "policy"),
    ("act", [OBS], 422, "body"),
    ("act", {"obs": [OBS] * 300}, 413, "body"),
    ("feedback", {"reward": 1.0, "terminated": False}, 422, "event_id"),
    ("feedback", {"event_id": "x", "terminated": False}, 422, "reward"),
    ("feedback", {"event_id": "x", "reward": "high", "terminated": False}, 422, "reward"),
    ("feedback", {"event_id": "x", "reward": 1.0}, 422, "terminated"),
    ("feedback", {"event_id": "x", "reward": 1.0, "terminated": False, "next_obs": [1.0]}, 422, "next_obs"),
    ("feedback", {"event_id": "no-such-event", "reward": 1.0, "terminated": False}, 404, "event_id"),
]


@pytest.mark.parametrize("endpoint,body,status,field", BAD_REQUESTS,
                         ids=[f"{e}-{s}-{f}-{i}" for i, (e, _, s, f) in enumerate(BAD_REQUESTS)])
def test_each_bad_request_gets_its_4xx_naming_the_field_and_the_next_good_one_succeeds(server, endpoint, body,
                                                                                      status, field):
    client, _ = server
    if isinstance(body, bytes):
        r = client.post(f"/v1/{endpoint}", content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post(f"/v1/{endpoint}", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"]
    assert client.post("/v1/act", json={"obs": OBS}).status_code == 200


def test_feedback_twice_or_too_late_is_rejected_without_a_second_write(server):
    client, run = server
    d = client.post("/v1/act", json={"obs": OBS}).json()
    fb = {"event_id": d["event_id"], "reward": 2.0, "terminated": True}
    assert client.post("/v1/feedback", json=fb).status_code == 200
    again = client.post("/v1/feedback", json={**fb, "reward": 5.0})
    assert again.status_code == 409 and again.json()["field"] == "event_id"
    late = client.post("/v1/act", json={"obs": OBS}).json()
    time.sleep(1.7)  # the server's feedback window is 1.5 s
    assert client.post("/v1/feedback", json={**fb, "event_id": late["event_id"]}).status_code == 410
    db = sqlite3.connect(run / "serve" / "decisions.db")
    assert db.execute("SELECT reward FROM feedback WHERE event_id = ?", (d["event_id"],)).fetchall() == [(2.0,)]
    assert db.execute("SELECT COUNT(*) FROM feedback WHERE event_id = ?", (late["event_id"],)).fetchone() == (0,)


def test_the_token_is_required_on_every_endpoint(server):
    client, _ = server
    url = str(client.base_url)
    for method, path in (("post", "/v1/act"), ("post", "/v1/feedback"), ("get", "/v1/health"), ("get", "/v1/metrics")):
        r = getattr(httpx, method)(f"{url}{path}", **({"json": {"obs": OBS}} if method == "post" else {}))
        assert r.status_code == 401 and r.json()["field"] == "authorization", path
    wrong = httpx.post(f"{url}/v1/act", json={"obs": OBS}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.post("/v1/act", json={"obs": OBS}).status_code == 200


def test_cli_bad_input_is_one_line_and_exit_2_before_jax(tmp_path):
    cases = [["-m", "angle_jax.serve", "--checkpoint", str(tmp_path / "missing")],
             ["-m", "angle_jax.serve", "--checkpoint", str(tmp_path), "--port", "70000"],
             ["-m", "angle_jax.serve", "--checkpoint", str(tmp_path)],
             ["-m", "angle_jax.serve.learn", "--run", str(tmp_path / "missing")],
             ["-m", "angle_jax.serve.learn", "--run", str(tmp_path), "--publish-every", "0"]]
    for args in cases:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "error:" in proc.stderr, proc.stderr
        assert time.monotonic() - t0 < 20


def test_the_threaded_engine_with_full_sync_answers_as_the_inline_one_does(dqn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dqn_run, run)
    proc, url = start_server(run, tmp_path, "--engine", "thread", "--sync", "full")
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            rows = np.random.default_rng(1).normal(size=(3, 4)).round(4).tolist()
            batch = client.post("/v1/act", json={"obs": rows}).json()
            single = [client.post("/v1/act", json={"obs": r}).json() for r in rows]
            assert batch["action"] == [s["action"] for s in single]
            bad = client.post("/v1/act", content=b'{"obs": [0.1, NaN, 0.0, 0.0]}',
                              headers={"Content-Type": "application/json"})
            assert bad.status_code == 422 and bad.json()["field"] == "obs"
            ack = client.post("/v1/feedback", json={"event_id": single[0]["event_id"], "reward": 1.0,
                                                    "terminated": True})
            assert ack.status_code == 200
            assert client.post("/v1/feedback", json={"event_id": single[0]["event_id"], "reward": 1.0,
                                                     "terminated": True}).status_code == 409
        db = sqlite3.connect(run / "serve" / "decisions.db")
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone() == (6,)
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone() == (1,)
    finally:
        proc.kill()


# ---- hot swap, crash and restart (a second server on a copy of the run) ------------------------

@pytest.fixture(scope="module")
def swap_server(dqn_run, tmp_path_factory):
    """A server on its own copy of the run: hot-swapped by one test, killed by the next."""
    tmp = tmp_path_factory.mktemp("swap")
    run = tmp / "run"
    shutil.copytree(dqn_run, run)
    proc, url = start_server(run, tmp)
    yield run, tmp, proc, url
    proc.kill()


def _publish(run: Path, agent, version: int):
    import jax

    from angle_jax import checkpoint as ckpt

    scaled = agent.replace(params=jax.tree.map(lambda x: x * (1.0 + 0.05 * version), agent.params))
    ckpt.save(run / "serve" / "policy.ckpt", scaled, {"model_version": version, "log_offset": 0})


def test_hot_swap_under_concurrent_load_fails_nothing_and_versions_never_go_backwards(swap_server):
    from angle_jax.serve.policy import load_policy

    run, tmp, proc, url = swap_server
    agent = load_policy(run).agent
    seen: list[list[int]] = [[] for _ in range(4)]
    failures = []

    def load(i):
        with httpx.Client(base_url=url, timeout=10) as c:
            for k in range(60):
                r = c.post("/v1/act", json={"obs": OBS, "explore": k % 2 == 0})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen[i].append(r.json()["model_version"])

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for version in range(1, 9):
        _publish(run, agent, version)
        time.sleep(0.12)
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert all(len(s) == 60 for s in seen)
    for s in seen:
        assert s == sorted(s), s
    deadline = time.monotonic() + 5
    while httpx.get(f"{url}/v1/health").json()["model_version"] != 8:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert max(max(s) for s in seen) >= 1


def test_kill_9_of_the_server_under_load_loses_no_acknowledged_decision_or_feedback(swap_server):
    run, tmp, proc, url = swap_server
    acked_decisions, acked_feedback = [], []
    lock = threading.Lock()
    stop = threading.Event()

    def load(i):
        with httpx.Client(base_url=url, timeout=5) as c:
            k = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/act", json={"obs": OBS, "episode_id": f"w{i}", "explore": True})
                    if r.status_code != 200:
                        continue
                    eid = r.json()["event_id"]
                    with lock:
                        acked_decisions.append(eid)
                    f = c.post("/v1/feedback", json={"event_id": eid, "reward": float(k), "terminated": False})
                    if f.status_code == 200:
                        with lock:
                            acked_feedback.append(eid)
                except httpx.TransportError:
                    return
                k += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked_feedback) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.p.pid, signal.SIGKILL)  # mid-load, no warning
        proc.p.wait(timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        proc.kill()
    assert len(acked_feedback) >= 150
    proc2, url2 = start_server(run, tmp)
    try:
        assert httpx.post(f"{url2}/v1/act", json={"obs": OBS}).status_code == 200
        db = sqlite3.connect(run / "serve" / "decisions.db")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        decided = {}
        for (eid,) in db.execute("SELECT event_id FROM decisions"):
            decided[eid] = decided.get(eid, 0) + 1
        answered = {}
        for (eid,) in db.execute("SELECT event_id FROM feedback"):
            answered[eid] = answered.get(eid, 0) + 1
        assert all(decided.get(e) == 1 for e in acked_decisions)
        assert all(answered.get(e) == 1 for e in acked_feedback)
        for (blob,) in db.execute("SELECT obs FROM decisions"):
            assert len(blob) == 16  # 4 float32: never half-written
    finally:
        proc2.kill()


# ---- the learner: kill -9 and resume ------------------------------------------------------------

def test_kill_9_of_the_learner_resumes_from_its_offset_learning_each_transition_once(dqn_run, tmp_path):
    from angle_jax import checkpoint as ckpt
    from angle_jax.serve.log import SQLiteLog
    from angle_jax.serve.policy import load_policy

    trained_updates = int(load_policy(dqn_run).agent.step)  # the run's own updates before serving
    run = tmp_path / "run"
    shutil.copytree(dqn_run, run)
    n, starts, upt = 800, 100, 6
    log = SQLiteLog(run / "serve" / "decisions.db", (4,))
    log.set_meta("feedback_window", "600")
    rng = np.random.default_rng(0)
    now = time.time()
    rows = [{"event_id": f"e{i}", "episode_id": None, "obs": rng.normal(size=4), "action": int(i % 2),
             "log_prob": -0.69, "explore": True, "model_version": 0, "time": now} for i in range(n)]
    log.append_decisions(rows)
    log.add_feedback([{"event_id": f"e{i}", "reward": 1.0, "terminated": i % 50 == 49, "truncated": False,
                       "next_obs": rng.normal(size=4)} for i in range(n)], window=600)
    log.close()
    learn = ["-m", "angle_jax.serve.learn", "--run", str(run), "--learning-starts", str(starts),
             "--updates-per-transition", str(upt), "--batch-size", "16", "--buffer-size", "4000",
             "--publish-every", "300", "--checkpoint-every", "64", "--poll-interval", "0.01"]
    first = Proc(learn, tmp_path / "learn1.log")
    state_file = run / "serve" / "learner.ckpt"
    try:
        deadline = time.monotonic() + 60
        while True:
            consumed = 0
            if state_file.is_file():
                try:
                    consumed = ckpt.read_meta(state_file)[0]["consumed"]
                except ckpt.CheckpointError:
                    pass
            if consumed >= 192:
                break
            assert first.p.poll() is None and time.monotonic() < deadline, first.text()[-3000:]
            time.sleep(0.02)
    finally:
        first.kill()
    killed_at = ckpt.read_meta(state_file)[0]
    assert killed_at["consumed"] < n, "the learner finished before it was killed: the test proves nothing"
    second = Proc([*learn, "--idle-exit", "1.0"], tmp_path / "learn2.log")
    try:
        assert second.p.wait(timeout=90) == 0, second.text()[-3000:]
    finally:
        second.kill()
    assert f"at offset {killed_at['log_offset']}" in second.text()
    meta = ckpt.read_meta(state_file)[0]
    # the counting objective: every decision consumed exactly once, and exactly the updates it earns
    assert meta["consumed"] == n and meta["log_offset"] == n
    assert meta["seq_sum"] == n * (n + 1) // 2
    assert meta["updates"] == (n - starts + 1) * upt
    from flax import serialization

    state = serialization.msgpack_restore(ckpt.read_meta(state_file)[1])
    assert int(state["buffer"]["size"]) == n and int(state["agent"]["step"]) - trained_updates == meta["updates"]
    published = ckpt.read_meta(run / "serve" / "policy.ckpt")[0]
    assert published["model_version"] > killed_at["model_version"] >= 1
