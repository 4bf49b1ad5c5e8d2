"""The policy server: `python -m angle_jax.serve --checkpoint RUN_DIR [--host 127.0.0.1] [--port 8000]`.

uvicorn; POST /v1/act and /v1/feedback are plain ASGI handlers in front of a FastAPI app that serves
the rest. Endpoints (JSON, versioned under /v1):
  POST /v1/act       {obs, episode_id?, explore?} -> {event_id, action, log_prob, model_version}
                     (obs of shape [batch, *obs_shape]: every answer field is a list, one per row)
  POST /v1/feedback  {event_id, reward, terminated, truncated?, next_obs?} -> {ok, event_id}
  GET  /v1/health    the policy being served
  GET  /v1/metrics   Prometheus text
Bad input gets a 4xx JSON body `{"error": ..., "field": ...}`; the server keeps serving.
"""

import asyncio
import hmac
import json
import math
import os
import sys
import time
from pathlib import Path

TOKEN_ENV = "ANGLE_SERVE_TOKEN"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ACT_FIELDS = {"obs", "episode_id", "explore"}
FEEDBACK_FIELDS = {"event_id", "reward", "terminated", "truncated", "next_obs"}
MAX_ID_CHARS = 256
PROG = "python -m angle_jax.serve"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        out = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


# ---- validation (no JAX: plain numpy) ---------------------------------------------------------

def _json_value_kind(x) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(x), type(x).__name__)


def parse_obs(value, obs_shape: tuple[int, ...], dtype, field: str, max_rows: int, allow_batch: bool = True):
    """(array of `dtype` shaped [n, *obs_shape], batched?) from a JSON value; BadRequest naming `field`."""
    import numpy as np

    dtype = np.dtype(dtype)
    shape = tuple(obs_shape)
    if type(value) is list and len(shape) == 1 and len(value) == shape[0] and dtype.kind == "f":
        # the common case, one flat row of finite floats, without numpy's per-call overhead
        # (x - x is 0.0 for a finite float, NaN for NaN and ±inf)
        for x in value:
            if type(x) is not float or x - x != 0.0:
                break
        else:
            return np.array([value], dtype), False
    if not isinstance(value, (list, int, float)) or isinstance(value, bool):
        raise BadRequest(422, f"{field} must be a list of numbers, got {_json_value_kind(value)}", field)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(422, f"{field} must be a (nested) list of numbers of one shape: it is ragged or holds "
                              f"something else", field) from None
    if not np.all(np.isfinite(arr)):
        raise BadRequest(422, f"{field} holds NaN or infinity", field)
    if arr.shape == shape:
        batched, arr = False, arr[None]
    elif allow_batch and arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        batched = True
        if not 1 <= arr.shape[0] <= max_rows:
            raise BadRequest(422, f"{field} holds {arr.shape[0]} rows; a request takes 1 to {max_rows}", field)
    else:
        want = f"{list(shape)} or [batch, {', '.join(map(str, shape))}]" if allow_batch else f"{list(shape)}"
        raise BadRequest(422, f"{field} has shape {list(arr.shape)}, expected {want}", field)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if np.any(arr != np.round(arr)) or arr.min() < info.min or arr.max() > info.max:
            raise BadRequest(422, f"{field} must hold integers in [{info.min}, {info.max}] ({dtype.name})", field)
    elif dtype.kind == "b":
        if np.any((arr != 0) & (arr != 1)):
            raise BadRequest(422, f"{field} must hold 0 or 1 (bool)", field)
    return arr.astype(dtype), batched


def _unknown_fields(body: dict, allowed: set[str]):
    extra = sorted(set(body) - allowed)
    if extra:
        raise BadRequest(422, f"unknown field {extra[0]!r} (allowed: {', '.join(sorted(allowed))})", extra[0])


def _require(body: dict, name: str):
    if name not in body:
        raise BadRequest(422, f"missing field {name!r}", name)
    return body[name]


def _bool(body: dict, name: str, default=None) -> bool:
    if name not in body:
        if default is None:
            raise BadRequest(422, f"missing field {name!r}", name)
        return default
    v = body[name]
    if not isinstance(v, bool):
        raise BadRequest(422, f"{name} must be true or false, got {_json_value_kind(v)}", name)
    return v


def _id(v, name: str) -> str:
    if not isinstance(v, str):
        raise BadRequest(422, f"{name} must be a string, got {_json_value_kind(v)}", name)
    if not 1 <= len(v) <= MAX_ID_CHARS:
        raise BadRequest(422, f"{name} must be 1 to {MAX_ID_CHARS} characters", name)
    return v


def parse_act(body, obs_shape, dtype, max_rows: int):
    """(obs [n, ...], explore (one bool for every row), episode_ids [n], batched) of an act request."""
    if not isinstance(body, dict):
        raise BadRequest(422, f"the body must be a JSON object, got {_json_value_kind(body)}", "body")
    _unknown_fields(body, ACT_FIELDS)
    obs, batched = parse_obs(_require(body, "obs"), obs_shape, dtype, "obs", max_rows)
    n = len(obs)
    explore = _bool(body, "explore", False)
    ep = body.get("episode_id")
    if ep is None:
        episodes = [None] * n
    elif isinstance(ep, list):
        if not batched or len(ep) != n:
            raise BadRequest(422, f"episode_id as a list needs a batch of obs of the same length ({n})", "episode_id")
        episodes = [None if e is None else _id(e, "episode_id") for e in ep]
    else:
        e = _id(ep, "episode_id")
        if batched and n > 1:
            raise BadRequest(422, "a batch of obs takes a list of episode_ids (one per row), not one", "episode_id")
        episodes = [e] * n
    return obs, explore, episodes, batched


def parse_feedback(body, obs_shape, dtype) -> dict:
    if not isinstance(body, dict):
        raise BadRequest(422, f"the body must be a JSON object, got {_json_value_kind(body)}", "body")
    _unknown_fields(body, FEEDBACK_FIELDS)
    event_id = _id(_require(body, "event_id"), "event_id")
    reward = _require(body, "reward")
    if not isinstance(reward, (int, float)) or isinstance(reward, bool):
        raise BadRequest(422, f"reward must be a number, got {_json_value_kind(reward)}", "reward")
    if not math.isfinite(reward):
        raise BadRequest(422, "reward must be finite", "reward")
    item = {"event_id": event_id, "reward": float(reward), "terminated": _bool(body, "terminated"),
            "truncated": _bool(body, "truncated", False), "next_obs": None}
    if body.get("next_obs") is not None:
        item["next_obs"] = parse_obs(body["next_obs"], obs_shape, dtype, "next_obs", 1, allow_batch=False)[0][0]
    return item


# ---- the app -------------------------------------------------------------------------------

try:  # orjson (optional) parses and writes JSON several times faster than the standard library
    import orjson as _orjson
except ImportError:  # pragma: no cover - the standard library is the fallback
    _orjson = None


def loads(raw: bytes):
    """JSON from bytes; ValueError when it is not. NaN/Infinity literals parse (then fail validation
    with 422 naming the field, as the standard library's parser lets them through)."""
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # NaN/Infinity, or invalid: the standard library decides which
    return json.loads(raw)


def dumps(value) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(value)
    return json.dumps(value, separators=(",", ":")).encode()


_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _send_json(send, status: int, body: bytes, extra_headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra_headers]})
    await send({"type": "http.response.body", "body": body})


def make_app(engine, *, token: str | None, max_body: int, max_rows: int, info: dict):
    """The ASGI app around a started `Engine`.

    POST /v1/act and /v1/feedback, the hot path, are plain ASGI handlers: the body is read, parsed and
    validated, the job goes to the engine, and the answer is written, with no framework layer in
    between. Everything else (/v1/health, /v1/metrics, 404, 405) is a FastAPI app behind them."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    from angle_jax.serve.engine import ActJob, FeedbackJob, prometheus_text

    api = FastAPI(title="angle_jax policy server", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    policy = engine.policy
    metrics = engine.metrics
    obs_shape, dtype = tuple(policy.spec.obs_shape), policy.obs_dtype()
    expected = None if token is None else f"Bearer {token}".encode()
    unauthorized = BadRequest(401, "missing or wrong bearer token (Authorization: Bearer <token>)", "authorization")
    www_authenticate = [(b"www-authenticate", b"Bearer")]

    def error(e: BadRequest, headers=None):
        metrics.http_errors[e.status] += 1
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    async def send_error(send, e: BadRequest, extra_headers=()):
        metrics.http_errors[e.status] += 1
        await _send_json(send, e.status, dumps(e.body()), extra_headers)

    if expected is not None:  # (no middleware at all without a token: it costs time on every request)
        @api.middleware("http")
        async def guard(request: Request, call_next):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error(unauthorized, headers={"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    too_large = BadRequest(413, f"the body is larger than the limit of {max_body} bytes", "body")

    async def read_json(scope, receive):
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > max_body:
                    raise too_large
                break
        message = await receive()
        raw = message.get("body", b"")
        if message.get("more_body", False):
            chunks, size = [raw], len(raw)
            while message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ConnectionResetError
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_body:
                    raise too_large
                chunks.append(chunk)
            raw = b"".join(chunks)
        if len(raw) > max_body:
            raise too_large
        try:
            return loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(400, "the body is not valid JSON", "body") from None

    async def act(scope, receive, send):
        t0 = time.perf_counter()
        try:
            body = await read_json(scope, receive)
            obs, explore, episodes, batched = parse_act(body, obs_shape, dtype, max_rows)
        except BadRequest as e:
            return await send_error(send, e)
        loop = asyncio.get_running_loop()
        job = ActJob(obs, explore, episodes, loop, loop.create_future())
        engine.submit(job)
        result = await job.future
        if isinstance(result, Exception):
            return await send_error(send, BadRequest(503, f"the decision could not be made or logged: {result}"))
        version, ids, actions, log_probs = result
        metrics.act_requests += 1
        metrics.act_latency.append(time.perf_counter() - t0)
        if batched:
            out = {"event_id": ids, "action": actions, "log_prob": log_probs, "model_version": version}
        else:
            out = {"event_id": ids[0], "action": actions[0], "log_prob": log_probs[0], "model_version": version}
        await _send_json(send, 200, dumps(out))

    async def feedback(scope, receive, send):
        try:
            item = parse_feedback(await read_json(scope, receive), obs_shape, dtype)
        except BadRequest as e:
            return await send_error(send, e)
        loop = asyncio.get_running_loop()
        job = FeedbackJob([item], loop, loop.create_future())
        engine.submit(job)
        result = await job.future
        if isinstance(result, Exception):
            return await send_error(send, BadRequest(503, f"the feedback could not be logged: {result}"))
        rejected = result[0]
        if rejected is not None:
            return await send_error(send, BadRequest(rejected.status, rejected.message, "event_id"))
        await _send_json(send, 200, dumps({"ok": True, "event_id": item["event_id"]}))

    hot = {"/v1/act": act, "/v1/feedback": feedback}

    async def app(scope, receive, send):
        handler = hot.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            return await api(scope, receive, send)
        if expected is not None:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, expected):
                return await send_error(send, unauthorized, www_authenticate)
        if scope["method"] != "POST":
            return await send_error(send, BadRequest(405, f"{scope['path']} does not take {scope['method']}",
                                                     "method"))
        try:
            await handler(scope, receive, send)
        except ConnectionResetError:  # the client went away before its body arrived: nothing to answer
            return

    @api.get("/v1/health")
    async def health():
        return JSONResponse({"status": "ok", "model_version": engine.model_version, **info})

    @api.get("/v1/metrics")
    async def metrics_endpoint():
        return PlainTextResponse(prometheus_text(engine), media_type="text/plain; version=0.0.4")

    @api.exception_handler(404)
    async def not_found(request, exc):
        return error(BadRequest(404, f"no endpoint {request.method} {request.url.path} (see /v1/health)", "path"))

    @api.exception_handler(405)
    async def wrong_method(request, exc):
        return error(BadRequest(405, f"{request.url.path} does not take {request.method}", "method"))

    return app


# ---- the command line -----------------------------------------------------------------------

def parse_args(argv=None):
    from angle_jax.cli import Parser

    p = Parser(prog=PROG,
               description="Serve a trained policy over HTTP, log every decision and feedback, and swap in the "
                           "policies the online learner (python -m angle_jax.serve.learn) publishes.")
    p.add_argument("--checkpoint", required=True, help="a run directory (train.py's --run-dir), or a .ckpt inside one")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--best", action="store_true", help="serve checkpoints/best.ckpt instead of the final parameters")
    p.add_argument("--fresh", action="store_true",
                   help="serve the run's algorithm with freshly initialised parameters (to learn online from scratch)")
    p.add_argument("--run-index", type=int, default=0, metavar="I", help="which of the directory's runs (default 0)")
    p.add_argument("--token", help=f"bearer token every request must carry (default: ${TOKEN_ENV} if set)")
    p.add_argument("--log", help="the decision log's SQLite file (default RUN_DIR/serve/decisions.db)")
    p.add_argument("--max-batch", type=int, default=64, help="largest compiled batch (buckets: powers of two up to it)")
    p.add_argument("--engine", choices=["inline", "thread"], default="inline",
                   help="inline (default): the event loop decides and logs each batch of the requests it has read; "
                        "thread: an engine thread does, so the loop keeps reading meanwhile (for --sync full)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="--engine thread: how long a batch waits for more requests once the queue is empty "
                        "(default 0: a batch is what queued while the previous one was decided and written)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request size limit (default 1 MiB)")
    p.add_argument("--max-rows", type=int, default=1024, help="observations one act request may carry")
    p.add_argument("--feedback-window", type=float, default=300.0,
                   help="seconds after a decision its feedback is accepted; the joiner waits this long too")
    p.add_argument("--sync", choices=["normal", "full"], default="normal",
                   help="SQLite synchronous mode: normal survives a process crash, full also power loss")
    p.add_argument("--seed", type=int, default=0, help="seed of the exploration noise")
    return p.parse_args(argv)


def fail(message: str):
    from angle_jax.cli import fail as cli_fail

    cli_fail(message, PROG)


def check_args(args) -> None:
    """Every check that needs no JAX, so bad input fails in a moment with one line and exit 2."""
    from angle_jax.serve.policy import PolicyError, check_run_dir

    if not 0 <= args.port <= 65535:
        fail(f"--port must be in [0, 65535], got {args.port}")
    if not args.host:
        fail("--host must not be empty")
    if not 1 <= args.max_batch <= 4096:
        fail(f"--max-batch must be in [1, 4096], got {args.max_batch}")
    if not 0 <= args.max_wait_ms <= 1000 or not math.isfinite(args.max_wait_ms):
        fail(f"--max-wait-ms must be in [0, 1000], got {args.max_wait_ms}")
    if args.max_body_bytes < 256:
        fail(f"--max-body-bytes must be at least 256, got {args.max_body_bytes}")
    if args.max_rows < 1:
        fail(f"--max-rows must be positive, got {args.max_rows}")
    if not args.feedback_window > 0 or not math.isfinite(args.feedback_window):
        fail(f"--feedback-window must be a positive number of seconds, got {args.feedback_window}")
    if args.run_index < 0:
        fail(f"--run-index must be >= 0, got {args.run_index}")
    if args.best and args.fresh:
        fail("--best and --fresh exclude each other")
    if args.token is not None and not args.token.strip():
        fail("--token must not be empty")
    try:
        check_run_dir(Path(args.checkpoint), args.best)
    except PolicyError as e:
        fail(str(e))


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)

    token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    if args.host not in LOCAL_HOSTS and token is None:
        print(f"warning: binding {args.host} without a token: anyone who can reach this address can act and "
              f"write feedback (set --token or ${TOKEN_ENV})", file=sys.stderr, flush=True)

    import uvicorn

    from angle_jax.serve.engine import Engine
    from angle_jax.serve.log import SQLiteLog
    from angle_jax.serve.policy import PUBLISHED, PolicyError, buckets, compile_buckets, load_policy, serve_dir

    try:
        policy = load_policy(Path(args.checkpoint), best=args.best, run_index=args.run_index, fresh=args.fresh)
    except PolicyError as e:
        fail(str(e))
    sizes = buckets(args.max_batch)
    t0 = time.perf_counter()
    compiled = compile_buckets(policy, sizes)
    compile_s = time.perf_counter() - t0
    sdir = serve_dir(policy.run_dir)
    log_path = Path(args.log) if args.log else sdir / "decisions.db"
    log = SQLiteLog(log_path, policy.spec.obs_shape, synchronous=args.sync, checkpoint_every=1.0)
    log.set_meta("feedback_window", repr(args.feedback_window))
    log.set_meta("obs_shape", json.dumps(list(policy.spec.obs_shape)))
    engine = Engine(policy, compiled, log, max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000,
                    feedback_window=args.feedback_window, seed=args.seed, inline=args.engine == "inline")
    published = sdir / PUBLISHED
    if published.is_file():
        engine.load_published(published)
    engine.start(watch=published)
    space = policy.spec.action_space
    info = {"algo": policy.algo_name, "run": policy.label, "env": policy.config.env,
            "obs_shape": list(policy.spec.obs_shape), "obs_dtype": str(policy.obs_dtype()),
            "action_space": ({"type": "Discrete", "n": int(space.n)} if policy.discrete else
                             {"type": "Box", "shape": list(space.shape), "low": -1.0, "high": 1.0}),
            "buckets": list(sizes), "log": str(log_path)}
    app = make_app(engine, token=token, max_body=args.max_body_bytes, max_rows=args.max_rows, info=info)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False, date_header=False, lifespan="off",
                            http="httptools" if _has("httptools") else "h11",
                            loop="uvloop" if _has("uvloop") else "asyncio", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    print(f"serving {policy.algo_name} ({policy.label}) model_version {engine.model_version} on "
          f"http://{args.host}:{args.port} (buckets {list(sizes)} compiled in {compile_s:.1f} s; log {log_path})",
          flush=True)
    try:
        server.run()
    finally:
        engine.stop()
        log.close()
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
