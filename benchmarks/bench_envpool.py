"""envpool throughput: Python loop vs XLA-in-scan vs the adapter's routes, and replay bytes.

Prints one JSON object. Env-steps are agent steps summed over envs (4 emulator frames each).
Usage: python benchmarks/bench_envpool.py [--env Pong-v5] [--num-envs 8] [--threads 2] [--steps 200]
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return time.perf_counter() - start


def bench_python_loop(task, n, threads, steps) -> float:
    import envpool

    env = envpool.make(task, env_type="gymnasium", num_envs=n, num_threads=threads, seed=0)
    env.reset()
    acts = np.random.default_rng(0).integers(0, env.action_space.n, (steps, n)).astype(np.int32)
    for a in acts[:10]:
        env.step(a)
    dt = timed(lambda: [env.step(a) for a in acts])
    env.close()
    return steps * n / dt


def bench_raw_xla_scan(task, n, threads, steps) -> tuple[float, float]:
    import envpool

    env = envpool.make(task, env_type="gymnasium", num_envs=n, num_threads=threads, seed=0)
    env.reset()
    handle, _, _, step = env.xla()
    acts = jax.random.randint(jax.random.PRNGKey(0), (steps, n), 0, env.action_space.n, jnp.int32)

    @jax.jit
    def run(h, acts):
        def body(h, a):
            h, (obs, r, term, trunc, info) = step(h, a)
            return h, r
        return jax.lax.scan(body, h, acts)

    t0 = time.perf_counter()
    handle, r = run(handle, acts)
    jax.block_until_ready(r)
    first = time.perf_counter() - t0
    dt = timed(lambda: jax.block_until_ready(run(handle, acts)[1]))
    env.close()
    return steps * n / dt, first


def bench_adapter(name, n, threads, steps, backend) -> tuple[float, float]:
    from angle_jax.envs.envpool_adapter import EnvpoolEnv

    env = EnvpoolEnv(name, n, num_threads=threads, backend=backend)
    acts = jax.random.randint(jax.random.PRNGKey(0), (steps, n), 0, env.spec.action_space.n, jnp.int32)

    @jax.jit
    def run(state, acts):
        def body(state, a):
            state, ts = env.step(state, a, jax.random.PRNGKey(0))
            return state, ts.reward
        return jax.lax.scan(body, state, acts)

    _, state = env.reset(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    state, r = run(state, acts)
    jax.block_until_ready(r)
    first = time.perf_counter() - t0
    dt = timed(lambda: jax.block_until_ready(run(state, acts)[1]))
    env.close()
    return steps * n / dt, first


def replay_bytes(n) -> dict:
    from angle_jax.core.types import Transition
    from angle_jax.replay.frames import bytes_per_transition, frame_replay

    ex = Transition(jnp.zeros((n, 4, 84, 84), jnp.uint8), jnp.zeros(n, jnp.int32), jnp.zeros(n), jnp.zeros(n, bool),
                    jnp.zeros(n, bool), jnp.zeros((n, 4, 84, 84), jnp.uint8))
    state = jax.eval_shape(frame_replay(125_000, 32).init, ex)
    naive = 2 * 4 * 84 * 84 + 4 + 4 + 1 + 1
    per = bytes_per_transition(state)
    return {"frame_replay_bytes_per_transition": round(per, 1), "naive_bytes_per_transition": naive,
            "ratio": round(naive / per, 2), "frame_replay_GB_for_1M_transitions": round(per * 1e6 / 1e9, 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="Pong-v5")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=200, help="vectorised steps per timed run")
    a = p.parse_args()
    out = {"env": a.env, "num_envs": a.num_envs, "num_threads": a.threads, "steps": a.steps,
           "jax": jax.__version__}
    out["python_loop_env_steps_per_s"] = round(bench_python_loop(a.env, a.num_envs, a.threads, a.steps))
    sps, first = bench_raw_xla_scan(a.env, a.num_envs, a.threads, a.steps)
    out["raw_xla_scan_env_steps_per_s"] = round(sps)
    out["raw_xla_scan_first_call_s"] = round(first, 2)
    for backend in ("xla", "callback"):
        sps, first = bench_adapter(a.env, a.num_envs, a.threads, a.steps, backend)
        out[f"adapter_{backend}_scan_env_steps_per_s"] = round(sps)
        out[f"adapter_{backend}_first_call_s"] = round(first, 2)
    out.update(replay_bytes(a.num_envs))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
