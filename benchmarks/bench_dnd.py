"""What does NEC's differentiable neural dictionary cost per env step? One JSON line per measurement.

(1) lookup (all actions, one query per env) + touch + write (one item per env) on full dictionaries,
per vectorised step and per env step, for each key size; (2) the lookup alone at several
capacities, to show how it scales with C; (3) bytes per stored entry and the whole dictionary at
NEC's Atari settings (key 128, 5·10⁵ entries per action, 18 actions), from the array dtypes.
Each jitted call is timed after a warm-up; the median of `--repeats` calls is reported. The
dictionary is donated to `write`, as it is in a compiled loop's carry (no copy per call).

    python benchmarks/bench_dnd.py                                     # C = 50,000, k = 50, keys 64 and 128
    python benchmarks/bench_dnd.py --capacity 5000 --scaling 1250 2500 5000 --repeats 5   # quick check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from angle_jax.episodic import dnd  # noqa: E402


def full_dictionary(key: jax.Array, actions: int, capacity: int, key_size: int) -> dnd.DNDState:
    """Every slot filled with random keys and values, stamped in slot order."""
    k1, k2 = jax.random.split(key)
    state = dnd.init(actions, capacity, key_size)
    stamps = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (actions, capacity))
    return state.replace(keys=jax.random.normal(k1, state.keys.shape), values=jax.random.normal(k2, state.values.shape),
                         last_used=stamps, size=jnp.full((actions,), capacity, jnp.int32),
                         time=jnp.asarray(capacity, jnp.int32))


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_step(actions: int, capacity: int, key_size: int, k: int, envs: int, repeats: int) -> dict:
    key = jax.random.PRNGKey(0)
    holder = {"state": full_dictionary(key, actions, capacity, key_size)}
    h = jax.random.normal(jax.random.PRNGKey(1), (envs, key_size))
    acts = jax.random.randint(jax.random.PRNGKey(2), (envs,), 0, actions)
    returns = jax.random.normal(jax.random.PRNGKey(3), (envs,))

    lookup = jax.jit(lambda s, x: dnd.lookup(s, x, k, 1e-3))
    touch = jax.jit(dnd.touch, donate_argnums=0)
    write = jax.jit(lambda s, x, a, g: dnd.write(s, x, a, g, 0.1, 0.0), donate_argnums=0)

    def step():
        q, nb = lookup(holder["state"], h)
        state = touch(holder["state"], nb.indices, nb.valid)
        holder["state"] = write(state, h + 0.5, acts, returns)   # new keys: free-slot / LRU path
        jax.block_until_ready(holder["state"])

    def lookup_only():
        jax.block_until_ready(lookup(holder["state"], h))

    def write_only():
        holder["state"] = write(holder["state"], h + 0.5, acts, returns)
        jax.block_until_ready(holder["state"])

    t_step = median_seconds(step, repeats)
    t_lookup = median_seconds(lookup_only, repeats)
    t_write = median_seconds(write_only, repeats)
    return dict(measure="lookup_touch_write", actions=actions, capacity=capacity, key_size=key_size, k=k, envs=envs,
                lookup_ms=1e3 * t_lookup, write_ms=1e3 * t_write, step_ms=1e3 * t_step,
                per_env_step_us=1e6 * t_step / envs)


def bench_lookup(actions: int, capacity: int, key_size: int, k: int, envs: int, repeats: int) -> dict:
    state = full_dictionary(jax.random.PRNGKey(0), actions, capacity, key_size)
    h = jax.random.normal(jax.random.PRNGKey(1), (envs, key_size))
    lookup = jax.jit(lambda s, x: dnd.lookup(s, x, k, 1e-3))
    t = median_seconds(lambda: jax.block_until_ready(lookup(state, h)), repeats)
    return dict(measure="lookup_scaling", actions=actions, capacity=capacity, key_size=key_size, k=k, envs=envs,
                lookup_ms=1e3 * t, ns_per_entry=1e9 * t / (actions * capacity))


def memory_line(key_size: int, capacity: int, actions: int) -> dict:
    per_entry = (dnd.nbytes(1, 2, key_size) - dnd.nbytes(1, 1, key_size))
    total = dnd.nbytes(actions, capacity, key_size)
    return dict(measure="memory", key_size=key_size, capacity=capacity, actions=actions, bytes_per_entry=per_entry,
                total_bytes=total, total_gib=total / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=50_000, help="entries per action")
    parser.add_argument("--key-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--scaling", type=int, nargs="+", default=[12_500, 25_000, 50_000])
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--actions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    context = dict(backend=jax.default_backend(), cpus=os.cpu_count(), machine=platform.machine(),
                   jax=jax.__version__)
    for key_size in args.key_sizes:
        print(json.dumps(bench_step(args.actions, args.capacity, key_size, args.k, args.envs, args.repeats) | context),
              flush=True)
    for capacity in args.scaling:
        print(json.dumps(bench_lookup(args.actions, capacity, args.key_sizes[0], args.k, args.envs, args.repeats)
                         | context), flush=True)
    for key_size, capacity, actions in [(args.key_sizes[0], args.capacity, args.actions), (128, 500_000, 18)]:
        print(json.dumps(memory_line(key_size, capacity, actions)), flush=True)


if __name__ == "__main__":
    main()
