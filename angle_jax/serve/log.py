"""The durable decision log: every decision the server answers and every feedback it acknowledges.

`DecisionLog` is the interface the server, the joiner and the learner use; `SQLiteLog` is the
embedded default (the standard library's sqlite3 in WAL mode, one file, no server to run). A
decision is committed before its response is sent and a feedback before its ack, so what a client
saw acknowledged is in the log. Observations are stored as little-endian float32 bytes and actions
as JSON (no pickle anywhere). A networked store (PostgreSQL, a Kafka topic with a compacted
feedback topic, ...) can replace it by implementing the same few methods; see docs/serving.md.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Decision:
    seq: int              # position in the log (1, 2, ...): the learner's offset counts these
    event_id: str
    episode_id: str | None
    obs: np.ndarray       # float32, the policy's observation shape
    action: object        # int (discrete) or list of floats (continuous), as answered
    log_prob: float | None
    explore: bool
    model_version: int
    time: float


@dataclass(frozen=True)
class Feedback:
    event_id: str
    reward: float
    terminated: bool
    truncated: bool
    next_obs: np.ndarray | None
    time: float


class FeedbackRejected(Exception):
    """Feedback that must not be written: `status` is the HTTP status (404 unknown event,
    409 already answered, 410 expired)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class DecisionLog:
    """What a decision store offers. Implementations must make `append_decisions` and
    `add_feedback` durable before they return, reject a second feedback for one event, and
    number decisions in commit order (`seq`)."""

    def append_decisions(self, rows: list[dict]) -> list[int]:
        """Commit decisions (dicts with Decision's fields but seq); returns their seqs."""
        raise NotImplementedError

    def add_feedback(self, items: list[dict], window: float, now: float | None = None) -> list[FeedbackRejected | None]:
        """Commit feedback (dicts with Feedback's fields but time) for events decided at most
        `window` seconds ago; per item None (written) or the reason it was not."""
        raise NotImplementedError

    def decisions_after(self, seq: int, limit: int) -> list[Decision]:
        raise NotImplementedError

    def feedback_for(self, event_ids: list[str]) -> dict[str, Feedback]:
        raise NotImplementedError

    def next_in_episode(self, episode_id: str, seq: int) -> Decision | None:
        """The episode's first decision after `seq` (its observation is this one's successor)."""
        raise NotImplementedError

    def last_seq(self) -> int:
        raise NotImplementedError

    def counts(self) -> tuple[int, int]:
        """(decisions, feedbacks) in the log."""
        raise NotImplementedError

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        raise NotImplementedError

    def set_meta(self, key: str, value: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    episode_id TEXT,
    obs BLOB NOT NULL,
    action TEXT NOT NULL,
    log_prob REAL,
    explore INTEGER NOT NULL,
    model_version INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_episode ON decisions (episode_id, seq);
CREATE TABLE IF NOT EXISTS feedback (
    event_id TEXT PRIMARY KEY REFERENCES decisions (event_id),
    reward REAL NOT NULL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    next_obs BLOB,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _obs_bytes(obs) -> bytes:
    return np.ascontiguousarray(obs, dtype="<f4").tobytes()


def _action_text(action) -> str:
    return str(action) if type(action) is int else json.dumps(action)


class SQLiteLog(DecisionLog):
    """The decision log in one SQLite file, WAL mode.

    `synchronous="NORMAL"` (default) survives a crash of the process (kill -9): a committed
    transaction is in the WAL file. `"FULL"` also survives power loss, at an fsync per commit.
    One connection per object, guarded by a lock; several processes (server, learner) may open
    the same file (SQLite serialises writers; readers never block)."""

    def __init__(self, path: str | Path, obs_shape: tuple[int, ...] | None = None, synchronous: str = "NORMAL",
                 checkpoint_every: float | None = None):
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.obs_shape = tuple(obs_shape) if obs_shape is not None else None
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)
        self._stop = threading.Event()
        self._checkpointer = None
        if checkpoint_every is not None:
            # Copying the WAL back into the database (a checkpoint) fsyncs both files: by default the
            # commit that fills the WAL to 1,000 pages does it, and waits. Here a thread with its own
            # connection does it every `checkpoint_every` seconds instead (PASSIVE: it never blocks a
            # writer), so no commit waits for a checkpoint's fsyncs. Commits are as durable as before.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, args=(checkpoint_every,),
                                                  name="angle-log-checkpoint", daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self, every: float) -> None:
        db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        try:
            while not self._stop.wait(every):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    pass  # busy or closing: the next round tries again
        finally:
            db.close()

    # -- writes -------------------------------------------------------------------------------
    def append_decisions(self, rows: list[dict]) -> list[int]:
        if not rows:
            return []
        now = time.time()
        values = [(r["event_id"], r.get("episode_id"), _obs_bytes(r["obs"]), _action_text(r["action"]),
                   r.get("log_prob"), int(bool(r.get("explore", False))), int(r["model_version"]),
                   float(r.get("time", now))) for r in rows]
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany("INSERT INTO decisions (event_id, episode_id, obs, action, log_prob, explore, "
                                "model_version, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                # one writer holds the database for the whole transaction, so AUTOINCREMENT gave the rows
                # consecutive seqs ending at the last one inserted
                (last,) = cur.execute("SELECT last_insert_rowid()").fetchone()
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return list(range(last - len(values) + 1, last + 1))

    def add_feedback(self, items: list[dict], window: float, now: float | None = None) -> list[FeedbackRejected | None]:
        now = time.time() if now is None else now
        results: list[FeedbackRejected | None] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for item in items:
                    eid = item["event_id"]
                    row = cur.execute("SELECT d.time, f.event_id FROM decisions d LEFT JOIN feedback f "
                                      "ON f.event_id = d.event_id WHERE d.event_id = ?", (eid,)).fetchone()
                    if row is None:
                        results.append(FeedbackRejected(404, f"unknown event_id {eid!r}"))
                    elif row[1] is not None:
                        results.append(FeedbackRejected(409, f"event_id {eid!r} already has feedback"))
                    elif now - row[0] > window:
                        results.append(FeedbackRejected(
                            410, f"event_id {eid!r} expired: feedback is accepted for {window:g} s after the decision"))
                    else:
                        nxt = item.get("next_obs")
                        cur.execute("INSERT INTO feedback (event_id, reward, terminated, truncated, next_obs, time) "
                                    "VALUES (?, ?, ?, ?, ?, ?)",
                                    (eid, float(item["reward"]), int(bool(item["terminated"])),
                                     int(bool(item["truncated"])), None if nxt is None else _obs_bytes(nxt), now))
                        results.append(None)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return results

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                             "value = excluded.value", (key, str(value)))

    # -- reads --------------------------------------------------------------------------------
    def _obs(self, blob: bytes | None) -> np.ndarray | None:
        if blob is None:
            return None
        arr = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return arr.reshape(self.obs_shape) if self.obs_shape is not None else arr

    def _decision(self, row) -> Decision:
        seq, eid, ep, obs, action, log_prob, explore, version, t = row
        return Decision(seq, eid, ep, self._obs(obs), json.loads(action), log_prob, bool(explore), version, t)

    _COLUMNS = "seq, event_id, episode_id, obs, action, log_prob, explore, model_version, time"

    def decisions_after(self, seq: int, limit: int) -> list[Decision]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM decisions WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (int(seq), int(limit))).fetchall()
        return [self._decision(r) for r in rows]

    def feedback_for(self, event_ids: list[str]) -> dict[str, Feedback]:
        out = {}
        with self._lock:
            for start in range(0, len(event_ids), 500):
                chunk = event_ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for eid, r, term, trunc, nxt, t in self._db.execute(
                        f"SELECT event_id, reward, terminated, truncated, next_obs, time FROM feedback "
                        f"WHERE event_id IN ({marks})", chunk):
                    out[eid] = Feedback(eid, r, bool(term), bool(trunc), self._obs(nxt), t)
        return out

    def next_in_episode(self, episode_id: str, seq: int) -> Decision | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM decisions WHERE episode_id = ? AND seq > ? "
                                   f"ORDER BY seq LIMIT 1", (episode_id, int(seq))).fetchone()
        return None if row is None else self._decision(row)

    def last_seq(self) -> int:
        with self._lock:
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM decisions").fetchone()
        return int(seq)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            (d,) = self._db.execute("SELECT COUNT(*) FROM decisions").fetchone()
            (f,) = self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()
        return int(d), int(f)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        with self._lock:
            self._db.close()
