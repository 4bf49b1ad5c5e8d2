"""The serving engine: micro-batches act requests into one compiled `decide`, commits the
decisions to the log before answering, and commits feedback before acknowledging it; a thread
swaps in the policies the online learner publishes.

Two ways to run it:
- inline (the server's default): the HTTP layer's event loop does the work. Every request parsed
  in one turn of the loop joins the pending jobs, and one callback of the loop, scheduled by the
  first of them, decides and logs them all as one batch and answers them. No thread hand-offs per
  request; while a batch is being decided and written the loop reads nothing, so whatever arrives
  meanwhile queues in the sockets and forms the next batch.
- threaded: jobs go on a queue to an engine thread, which takes the first job, drains whatever
  else is queued (waiting at most `max_wait` seconds for more while the batch has room), and hands
  the answers back to the loop with one wake-up per batch. The loop keeps reading requests while a
  batch is decided and written: better when a commit is slow (synchronous=FULL waits for fsync).

Either way the rows are padded to the smallest compiled bucket, and the agent state is read once
per batch, so a swap never mixes two versions in one batch and versions never go backwards.
"""
from __future__ import annotations

import collections
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from angle_jax.serve.log import DecisionLog
from angle_jax.serve.policy import serve_key


class ActJob:
    """One act request: rows to decide, answered through `future` (on the event loop `loop`) with
    (model_version, event_ids, actions, log_probs), one list entry per row, or an exception."""

    __slots__ = ("obs", "explore", "episode_ids", "loop", "future")

    def __init__(self, obs: np.ndarray, explore: bool, episode_ids: list, loop, future):
        self.obs = obs                  # [n, *obs_shape], the policy's dtype
        self.explore = bool(explore)    # for every row of the request
        self.episode_ids = episode_ids
        self.loop, self.future = loop, future


class FeedbackJob:
    """Feedback items, answered through `future` with one outcome per item (None: written) or an exception."""

    __slots__ = ("items", "loop", "future")

    def __init__(self, items: list[dict], loop, future):
        self.items = items
        self.loop, self.future = loop, future


def _settle(answers: list) -> None:
    """Resolve (future, value) pairs; runs on their event loop."""
    for fut, value in answers:
        if not fut.done():
            fut.set_result(value)


def answer(pairs: list) -> None:
    """Hand (job, value) pairs back to their event loops: one wake-up per loop, not per job."""
    by_loop: dict = {}
    for job, value in pairs:
        by_loop.setdefault(job.loop, []).append((job.future, value))
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, answers)
        except RuntimeError:  # the loop has closed (shutdown): nobody is waiting
            pass


@dataclass
class Metrics:
    """What /v1/metrics reports (guarded by the engine's lock where written from two threads)."""

    act_requests: int = 0
    decisions: int = 0
    feedback_accepted: int = 0
    feedback_rejected: dict = field(default_factory=lambda: collections.Counter())
    http_errors: dict = field(default_factory=lambda: collections.Counter())
    batches: int = 0
    batch_rows: int = 0
    batch_hist: dict = field(default_factory=lambda: collections.Counter())
    act_latency: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20_000))
    swaps: int = 0
    log_errors: int = 0


class Engine:
    def __init__(self, policy, compiled: dict[int, Any], log: DecisionLog, *, max_batch: int, max_wait: float,
                 feedback_window: float, seed: int = 0, model_version: int = 0, inline: bool = False):
        import jax

        self.policy = policy
        self.compiled = compiled
        self.sizes = sorted(compiled)
        self.log = log
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.feedback_window = feedback_window
        self.current = (model_version, jax.device_put(policy.agent))  # swapped as one reference
        self.published_offset = None
        self.metrics = Metrics()
        self.key = serve_key(seed)
        self.last_seq = log.last_seq()
        self.step = self.last_seq  # env steps served so far (the ε schedule's clock), across restarts
        self._batch_counter = 0
        self.inline = inline
        self._pending: list = []          # inline: jobs submitted since the last flush
        self._flush_scheduled = False
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, watch: Path | None = None, poll_interval: float = 0.2) -> None:
        if not self.inline:
            t = threading.Thread(target=self._run, name="angle-serve-engine", daemon=True)
            t.start()
            self._threads.append(t)
        if watch is not None:
            w = threading.Thread(target=self._watch, args=(Path(watch), poll_interval), name="angle-serve-watch",
                                 daemon=True)
            w.start()
            self._threads.append(w)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def submit(self, job) -> None:
        """Queue a job; it is answered through its future. Inline, this must be called on the job's
        event loop: the batch is flushed by a callback of that loop."""
        if not self.inline:
            self._queue.put(job)
            return
        self._pending.append(job)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            job.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Inline: decide and log every job submitted since the last flush, in batches of at most
        `max_batch` rows, and answer them (on the event loop, which waits meanwhile)."""
        self._flush_scheduled = False
        jobs, self._pending = self._pending, []
        try:
            acts, rows = [], 0
            for j in jobs:
                if isinstance(j, ActJob):
                    acts.append(j)
                    rows += len(j.obs)
                    if rows >= self.max_batch:
                        self._act(acts)
                        acts, rows = [], 0
            if acts:
                self._act(acts)
            feedbacks = [j for j in jobs if isinstance(j, FeedbackJob)]
            if feedbacks:
                self._feedback(feedbacks)
        except Exception as e:  # a bug, not bad input: answer whoever still waits rather than hang
            self._answer([(j, e) for j in jobs if not j.future.done()])

    @property
    def model_version(self) -> int:
        return self.current[0]

    # -- the batching loop -----------------------------------------------------------------
    def _gather(self, first) -> list:
        jobs = [first]
        rows = len(first.obs) if isinstance(first, ActJob) else 0
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                self._queue.put(None)
                break
            jobs.append(job)
            if isinstance(job, ActJob):
                rows += len(job.obs)
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                break
            jobs = self._gather(first)
            acts = [j for j in jobs if isinstance(j, ActJob)]
            feedbacks = [j for j in jobs if isinstance(j, FeedbackJob)]
            if acts:
                self._act(acts)
            if feedbacks:
                self._feedback(feedbacks)

    def _decide(self, agent, obs: np.ndarray, explore: np.ndarray):
        """Actions and log-probs for `obs` rows, in chunks of at most the largest bucket."""
        actions, log_probs = [], []
        for start in range(0, len(obs), self.sizes[-1]):
            o, e = obs[start:start + self.sizes[-1]], explore[start:start + self.sizes[-1]]
            n = len(o)
            b = next(s for s in self.sizes if s >= n)
            if b > n:
                o = np.concatenate([o, np.zeros((b - n, *o.shape[1:]), o.dtype)])
                e = np.concatenate([e, np.zeros(b - n, bool)])
            self._batch_counter += 1
            a, lp = self.compiled[b](agent, o, e, self.key, np.int32(self.step + start))
            actions.append(np.asarray(a)[:n])
            log_probs.append(np.asarray(lp)[:n])
            self.metrics.batches += 1
            self.metrics.batch_rows += n
            self.metrics.batch_hist[b] += 1
        if len(actions) == 1:
            return actions[0], log_probs[0]
        return np.concatenate(actions), np.concatenate(log_probs)

    def _act(self, jobs: list[ActJob]) -> None:
        version, agent = self.current
        if len(jobs) == 1:
            obs = jobs[0].obs
            explore = np.full(len(obs), jobs[0].explore)
        else:
            obs = np.concatenate([j.obs for j in jobs])
            explore = np.repeat(np.array([j.explore for j in jobs]), [len(j.obs) for j in jobs])
        try:
            actions, log_probs = self._decide(agent, obs, explore)
        except Exception as e:  # a failure to decide answers every job with 503, the engine keeps going
            self._answer([(j, e) for j in jobs])
            return
        n = len(obs)
        action_list = actions.tolist()  # ints (discrete) or lists of floats, as answered
        if not self.policy.discrete:
            action_list = [np.ravel(a).tolist() for a in actions] if actions.ndim != 2 else action_list
        lp_list = [None if math.isnan(x) else x for x in log_probs.tolist()]
        hexes = os.urandom(16 * n).hex()  # 32 random hex digits per event id (as uuid4().hex)
        ids = [hexes[32 * i:32 * i + 32] for i in range(n)]
        episodes = [e for j in jobs for e in j.episode_ids]
        explored = explore.tolist()
        now = time.time()
        rows = [{"event_id": ids[i], "episode_id": episodes[i], "obs": obs[i], "action": action_list[i],
                 "log_prob": lp_list[i], "explore": explored[i], "model_version": version, "time": now}
                for i in range(n)]
        try:
            seqs = self.log.append_decisions(rows)
        except Exception as e:  # not logged: not answered (the client sees 503 and may retry)
            self.metrics.log_errors += 1
            self._answer([(j, e) for j in jobs])
            return
        self.step += n
        self.last_seq = seqs[-1]
        self.metrics.decisions += n
        pairs, i = [], 0
        for j in jobs:
            k = len(j.obs)
            pairs.append((j, (version, ids[i:i + k], action_list[i:i + k], lp_list[i:i + k])))
            i += k
        self._answer(pairs)

    def _feedback(self, jobs: list[FeedbackJob]) -> None:
        items = [item for j in jobs for item in j.items]
        try:
            outcomes = self.log.add_feedback(items, self.feedback_window)
        except Exception as e:
            self.metrics.log_errors += 1
            self._answer([(j, e) for j in jobs])
            return
        pairs, i = [], 0
        for j in jobs:
            mine = outcomes[i:i + len(j.items)]
            i += len(j.items)
            for o in mine:
                if o is None:
                    self.metrics.feedback_accepted += 1
                else:
                    self.metrics.feedback_rejected[o.status] += 1
            pairs.append((j, mine))
        self._answer(pairs)

    def _answer(self, pairs: list) -> None:
        if self.inline:  # on the event loop already
            for job, value in pairs:
                if not job.future.done():
                    job.future.set_result(value)
        else:
            answer(pairs)

    # -- hot swap ----------------------------------------------------------------------------
    def load_published(self, path: Path) -> bool:
        """Swap in the policy published at `path` when its version is newer; True if swapped."""
        import jax

        from angle_jax import checkpoint as ckpt

        try:
            agent, meta = ckpt.restore(path, self.current[1])
        except ckpt.CheckpointError:
            return False  # half-replaced or foreign: the next poll sees the finished file
        version = int(meta.get("model_version", 0))
        if "log_offset" in meta:
            self.published_offset = int(meta["log_offset"])
        if version <= self.current[0]:
            return False
        self.current = (version, jax.device_put(agent))
        self.metrics.swaps += 1
        return True

    def _watch(self, path: Path, interval: float) -> None:
        seen = None
        while not self._stop.wait(interval):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != seen:
                seen = stamp
                self.load_published(path)


def prometheus_text(engine: Engine) -> str:
    """/v1/metrics in the Prometheus text exposition format."""
    m = engine.metrics
    lines = []

    def metric(name, kind, help_, samples):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = "" if not labels else "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
            lines.append(f"{name}{lab} {value}")

    metric("angle_serve_act_requests_total", "counter", "act requests answered", [({}, m.act_requests)])
    metric("angle_serve_decisions_total", "counter", "decisions answered and logged", [({}, m.decisions)])
    metric("angle_serve_feedback_total", "counter", "feedback requests by outcome",
           [({"outcome": "accepted"}, m.feedback_accepted)]
           + [({"outcome": str(s)}, n) for s, n in sorted(m.feedback_rejected.items())])
    metric("angle_serve_http_errors_total", "counter", "requests rejected, by status",
           [({"status": str(s)}, n) for s, n in sorted(m.http_errors.items())])
    lat = np.asarray(m.act_latency, np.float64)
    qs = [0.5, 0.9, 0.99]
    samples = [({"quantile": str(q)}, float(np.quantile(lat, q)) if lat.size else "NaN") for q in qs]
    lines.append("# HELP angle_serve_act_latency_seconds act latency inside the server (last 20,000 requests)")
    lines.append("# TYPE angle_serve_act_latency_seconds summary")
    for labels, v in samples:
        lines.append(f'angle_serve_act_latency_seconds{{quantile="{labels["quantile"]}"}} {v}')
    lines.append(f"angle_serve_act_latency_seconds_sum {float(lat.sum())}")
    lines.append(f"angle_serve_act_latency_seconds_count {lat.size}")
    metric("angle_serve_batches_total", "counter", "compiled decide calls", [({}, m.batches)])
    metric("angle_serve_batch_rows_total", "counter", "rows decided (mean batch size = rows / batches)",
           [({}, m.batch_rows)])
    metric("angle_serve_batches_by_bucket_total", "counter", "decide calls by padded bucket size",
           [({"bucket": str(b)}, n) for b, n in sorted(m.batch_hist.items())])
    metric("angle_serve_model_version", "gauge", "version of the policy being served", [({}, engine.model_version)])
    metric("angle_serve_model_swaps_total", "counter", "published policies swapped in", [({}, m.swaps)])
    last = engine.last_seq
    lag = "NaN" if engine.published_offset is None else last - engine.published_offset
    metric("angle_serve_log_last_seq", "gauge", "newest decision in the log", [({}, last)])
    metric("angle_serve_log_lag_decisions", "gauge",
           "decisions logged but not yet learned by the published policy (NaN before the first publish)",
           [({}, lag)])
    metric("angle_serve_log_errors_total", "counter", "log writes that failed (requests answered 503)",
           [({}, m.log_errors)])
    return "\n".join(lines) + "\n"
