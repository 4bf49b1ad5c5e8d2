"""`Client`: the policy server's HTTP API from Python (httpx). Plain HTTP works as well; see
docs/serving.md for the request and response bodies."""
from __future__ import annotations

import time
from typing import Any, Sequence

import httpx


class ServeError(RuntimeError):
    """A request the server rejected: `status` (HTTP), `field` (the offending field, if named)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"{status}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.message, self.field = status, message, field


def _tolist(x) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x


class Client:
    """    client = Client("http://127.0.0.1:8000", token=None)
    d = client.act(obs, episode_id="ep-1", explore=True)   # {"event_id", "action", "log_prob", "model_version"}
    client.feedback(d["event_id"], reward, terminated, truncated, next_obs=obs2)
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 10.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _check(self, r: httpx.Response) -> dict:
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": r.text}
            raise ServeError(r.status_code, body.get("error", r.text), body.get("field"))
        return r.json()

    def act(self, obs, episode_id: str | Sequence[str] | None = None, explore: bool = False) -> dict:
        """One decision (obs of the policy's shape) or a batch (obs [batch, ...]: every field a list)."""
        body: dict = {"obs": _tolist(obs), "explore": explore}
        if episode_id is not None:
            body["episode_id"] = list(episode_id) if not isinstance(episode_id, str) else episode_id
        return self._check(self._http.post("/v1/act", json=body))

    def feedback(self, event_id: str, reward: float, terminated: bool, truncated: bool = False,
                 next_obs=None) -> dict:
        body = {"event_id": event_id, "reward": float(reward), "terminated": bool(terminated),
                "truncated": bool(truncated)}
        if next_obs is not None:
            body["next_obs"] = _tolist(next_obs)
        return self._check(self._http.post("/v1/feedback", json=body))

    def health(self) -> dict:
        return self._check(self._http.get("/v1/health"))

    def metrics(self) -> str:
        r = self._http.get("/v1/metrics")
        self._check(r) if r.status_code >= 400 else None
        return r.text

    def wait_ready(self, timeout: float = 60.0) -> dict:
        """/v1/health once the server answers (it compiles its buckets before listening)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except (httpx.TransportError, ServeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
