"""The decision log and the joiner, in process (no server): feedback is written once, windows
expire, transitions come out in order and a restart from an offset neither skips nor repeats."""
from __future__ import annotations

import shutil
import sqlite3
import time

import numpy as np
import pytest

from angle_jax.serve.joiner import Joiner
from angle_jax.serve.log import SQLiteLog


def _decision(eid, ep=None, t=100.0, obs=0.0):
    return {"event_id": eid, "episode_id": ep, "obs": np.full(4, obs, np.float32), "action": 1, "log_prob": -0.5,
            "explore": True, "model_version": 0, "time": t}


def test_feedback_is_written_once_and_unknown_or_expired_events_are_rejected(tmp_path):
    log = SQLiteLog(tmp_path / "d.db", (4,))
    assert log.append_decisions([_decision("a", t=100.0), _decision("b", t=100.0)]) == [1, 2]
    fb = {"event_id": "a", "reward": 1.0, "terminated": False, "truncated": False, "next_obs": None}
    assert log.add_feedback([fb], window=10, now=105.0) == [None]
    again, unknown, late = log.add_feedback([fb, {**fb, "event_id": "zz"}, {**fb, "event_id": "b"}], window=10,
                                            now=111.0)
    assert (again.status, unknown.status, late.status) == (409, 404, 410)
    assert log.counts() == (2, 1)
    assert log.feedback_for(["a"])["a"].reward == 1.0


def test_joiner_orders_waits_defaults_and_resumes_from_its_offset(tmp_path):
    log = SQLiteLog(tmp_path / "d.db", (4,))
    log.append_decisions([_decision("e1", "ep", 100.0, 1.0), _decision("e2", "ep", 100.5, 2.0),
                          _decision("e3", "ep", 101.0, 3.0), _decision("lone", None, 101.0, 4.0)])
    log.add_feedback([{"event_id": "e1", "reward": 1.0, "terminated": False, "truncated": False, "next_obs": None},
                      {"event_id": "e3", "reward": 3.0, "terminated": True, "truncated": False, "next_obs": None}],
                     window=60, now=102.0)
    joiner = Joiner(log, window=60, default_reward=-1.0)
    out, offset, dropped = joiner.poll(0, now=102.0)
    # e1 joins (its successor is e2's obs); e2 has no feedback yet: everything after it waits
    assert [t.event_id for t in out] == ["e1"] and offset == 1 and dropped == 0
    np.testing.assert_array_equal(out[0].next_obs, np.full(4, 2.0, np.float32))
    assert joiner.poll(offset, now=102.0)[0] == []
    # past the window: e2 gets the default reward, e3 its terminal feedback, the lone one (no successor) drops
    out, offset2, dropped = joiner.poll(offset, now=200.0)
    assert [(t.event_id, t.reward, t.terminated, t.feedback) for t in out] == [
        ("e2", -1.0, False, False), ("e3", 3.0, True, True)]
    assert offset2 == 4 and dropped == 1
    # a restart from the offset sees nothing again; from the earlier offset, the same transitions
    assert joiner.poll(offset2, now=200.0) == ([], 4, 0)
    assert [t.event_id for t in joiner.poll(offset, now=200.0)[0]] == ["e2", "e3"]


def test_log_rejects_a_bad_synchronous_mode(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteLog(tmp_path / "d.db", (4,), synchronous="OFF")


def test_a_checkpoint_thread_copies_the_wal_into_the_database(tmp_path):
    log = SQLiteLog(tmp_path / "d.db", (4,), checkpoint_every=0.05)
    try:
        assert log.append_decisions([_decision(f"e{i}", "ep") for i in range(5)]) == [1, 2, 3, 4, 5]
        deadline = time.monotonic() + 10
        while True:  # the database file alone (no -wal beside it) holds the rows once checkpointed
            shutil.copy(tmp_path / "d.db", tmp_path / "copy.db")
            db = sqlite3.connect(tmp_path / "copy.db")
            try:
                n = db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            except sqlite3.OperationalError:  # not even the schema checkpointed yet
                n = 0
            db.close()
            if n == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert n == 5
        assert log._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    finally:
        log.close()
