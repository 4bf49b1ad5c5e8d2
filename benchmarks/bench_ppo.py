"""PPO throughput on gymnax CartPole-v1: compile time, env steps/s for 1 and N vmapped seeds,
final greedy return. Prints one JSON object.

    python benchmarks/bench_ppo.py --steps 100000 --seeds 8 --preset purejaxrl

Presets match the peers' CartPole settings: `purejaxrl` (4 envs x 128 steps, 4 epochs x 4
minibatches) and `rejax` (5 envs x 100 steps, 5 epochs x 5 minibatches).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from angle_jax import registry
from angle_jax.algos import ppo
from angle_jax.config import RunConfig
from angle_jax.core.axes import seed_axes
from angle_jax.training.build import build_train
from angle_jax.xla_cpu import select

PRESETS = {
    "purejaxrl": dict(num_envs=4, agent=dict(rollout_length=128, epochs=4, minibatches=4, learning_rate=2.5e-4)),
    "rejax": dict(num_envs=5, agent=dict(rollout_length=100, epochs=5, minibatches=5, learning_rate=2.5e-4)),
}


def measure(train, seeds: int, key, kernels) -> dict:
    keys = jax.random.split(key, seeds)
    axes = seed_axes(jax.eval_shape(train.init, keys[0]))
    iters = train.loop.num_iterations
    init = jax.jit(jax.vmap(train.init, out_axes=axes))
    run = jax.jit(jax.vmap(lambda c: train.run(c, iters), in_axes=(axes,), out_axes=(axes, 0)))
    evaluate = jax.jit(jax.vmap(train.evaluate, in_axes=(axes.agent, 0)))
    carry = init(keys)
    t0 = time.perf_counter()
    with kernels.lowering():  # compiled as the Trainer compiles its chunks
        compiled = run.lower(carry).compile(kernels.loop_options())
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    carry, logs = compiled(carry)
    jax.block_until_ready(logs)
    run_s = time.perf_counter() - t0
    returns = np.asarray(evaluate(carry.agent, keys)).mean(axis=1)
    steps = iters * train.steps_per_iteration * seeds
    return {
        "seeds": seeds,
        "compile_s": round(compile_s, 2),
        "run_s": round(run_s, 2),
        "env_steps": steps,
        "steps_per_s": round(steps / run_s),
        "final_eval_return_mean": round(float(returns.mean()), 1),
        "final_train_return_mean": round(float(np.nanmean(np.asarray(logs["episode_return_mean"]))), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, default=8, help="seeds in the vmapped measurement")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="purejaxrl")
    parser.add_argument("--kernels", choices=["auto", "xla", "cpu"], default="auto",
                        help="kernel bundle (auto: cpu on the CPU backend)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    n = preset["num_envs"]
    cfg = RunConfig(algo="ppo", env="CartPole-v1", num_envs=n, total_steps=args.steps,
                    agent=ppo.Config(**preset["agent"]))
    kernels = select(args.kernels, jax.default_backend())
    _, train = build_train(cfg, registry.algo_spec("ppo"), registry.make_env("CartPole-v1", n),
                              registry.make_env("CartPole-v1", 8), kernels)
    key = jax.random.PRNGKey(0)
    out = {
        "algo": "ppo", "env": "CartPole-v1", "preset": args.preset, "num_envs": n,
        "steps_per_iteration": train.steps_per_iteration, "jax": jax.__version__,
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "kernels": kernels.name,
        "one_seed": measure(train, 1, key, kernels),
        f"{args.seeds}_seeds": measure(train, args.seeds, key, kernels),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
