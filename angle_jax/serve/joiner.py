"""The joiner: logged decisions + their feedback (+ the next decision of the same episode) ->
transitions, in log order, resumable from an offset.

A decision becomes a transition once its feedback is in and its successor observation is known
(the feedback's `next_obs`, else the episode's next decision; a terminated step needs none).
When feedback never comes, the decision waits `window` seconds (the server's feedback window, which
the server records in the log) and is then joined with `default_reward`, not terminated. A
decision whose successor cannot be known (no `next_obs`, no episode, not terminated) is dropped
once the window passes. The joiner consumes decisions strictly in `seq` order and stops at the
first one still waiting, so one number — the last consumed `seq` — is the whole resume state:
restarting from it neither skips nor repeats a decision (each event is joined once).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from angle_jax.serve.log import DecisionLog

DEFAULT_WINDOW = 300.0


@dataclass(frozen=True)
class JoinedTransition:
    seq: int
    event_id: str
    obs: np.ndarray
    action: object
    reward: float
    terminated: bool
    truncated: bool
    next_obs: np.ndarray
    log_prob: float | None
    model_version: int
    feedback: bool  # False: joined with the default reward after the window


class Joiner:
    def __init__(self, log: DecisionLog, window: float | None = None, default_reward: float = 0.0):
        self.log = log
        if window is None:
            window = float(log.get_meta("feedback_window", repr(DEFAULT_WINDOW)))
        self.window = float(window)
        self.default_reward = float(default_reward)

    def poll(self, offset: int, limit: int = 1024, now: float | None = None
             ) -> tuple[list[JoinedTransition], int, int]:
        """(transitions, new offset, decisions dropped) for the decisions after `offset` that are
        ready, in order; stops at the first one still waiting."""
        now = time.time() if now is None else now
        decisions = self.log.decisions_after(offset, limit)
        if not decisions:
            return [], offset, 0
        feedback = self.log.feedback_for([d.event_id for d in decisions])
        out, dropped = [], 0
        for d in decisions:
            f = feedback.get(d.event_id)
            expired = now - d.time > self.window
            if f is None and not expired:
                break
            if f is not None:
                reward, terminated, truncated = f.reward, f.terminated, f.truncated
            else:
                reward, terminated, truncated = self.default_reward, False, False
            next_obs = f.next_obs if f is not None else None
            if next_obs is None:
                if terminated:
                    next_obs = d.obs  # not bootstrapped from
                else:
                    successor = self.log.next_in_episode(d.episode_id, d.seq) if d.episode_id else None
                    if successor is not None:
                        next_obs = successor.obs
                    elif not expired:
                        break  # the episode's next decision may still come
                    else:
                        dropped += 1
                        offset = d.seq
                        continue
            out.append(JoinedTransition(d.seq, d.event_id, d.obs, d.action, reward, terminated, truncated,
                                        next_obs, d.log_prob, d.model_version, f is not None))
            offset = d.seq
        return out, offset, dropped
