"""Does the compiled Atari loop add little to its parts? One JSON line per algorithm.

For DQN and PPO on an envpool game, in one process: (1) training wall time of the
compiled loop for a number of env steps (after compile and warm-up), (2) raw envpool
stepping through its XLA interface for the same env steps, same num_envs and threads,
(3) the same learner updates alone on replay/rollout-shaped random uint8 data.
Reports train / (raw env + learner) and train / raw env.

    python benchmarks/bench_atari_loop.py --algo dqn --steps 3200
    python benchmarks/bench_atari_loop.py --algo ppo --steps 3072
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from angle_jax.core.types import Transition  # noqa: E402
from angle_jax.config import CONFIG_DIR, load_config  # noqa: E402
from angle_jax.core.types import Rollout  # noqa: E402
from angle_jax.training.programs import first_run
from angle_jax.training.trainer import Trainer  # noqa: E402


def raw_env_seconds(task: str, num_envs: int, threads: int, vec_steps: int) -> float:
    """Seconds for `vec_steps` raw envpool XLA steps in a compiled scan (compile excluded)."""
    from bench_envpool import bench_raw_xla_scan

    steps_per_s, _ = bench_raw_xla_scan(task, num_envs, threads, vec_steps)
    return vec_steps * num_envs / steps_per_s


def learner_seconds(trainer: Trainer, algo: str, updates: int) -> float:
    """`updates` learner calls on random data shaped like the loop's (replay batches / rollouts)."""
    spec, update = trainer.env.spec, trainer.algo.update
    agent = first_run(trainer.axes.agent, trainer.agent_params())
    key = jax.random.PRNGKey(1)
    n = spec.num_envs
    if algo == "dqn":
        b = trainer.config.batch_size
        frames = jax.random.randint(key, (b, *spec.obs_shape), 0, 255).astype(jnp.uint8)
        data = Transition(frames, jnp.zeros(b, jnp.int32), jnp.ones(b), jnp.zeros(b, bool), jnp.zeros(b, bool), frames)
    else:
        t = trainer.algo.config.rollout_length
        frames = jax.random.randint(key, (t, n, *spec.obs_shape), 0, 255).astype(jnp.uint8)
        z = jnp.zeros((t, n))
        data = Rollout(frames, jnp.zeros((t, n), jnp.int32), z + 1, z.astype(bool), z.astype(bool), frames, z)

    def run(agent, data, key):
        def body(agent, k):
            return update(agent, data, k)[0], None
        return jax.lax.scan(body, agent, jax.random.split(key, updates))[0]

    with trainer.kernels.lowering():
        compiled = jax.jit(run).lower(agent, data, key).compile()
    jax.block_until_ready(compiled(agent, data, key))
    start = time.perf_counter()
    jax.block_until_ready(compiled(agent, data, key))
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=["dqn", "ppo"], default="dqn")
    p.add_argument("--env", default="Pong-v5")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=3200, help="timed env steps (summed over envs)")
    args = p.parse_args()
    n = args.num_envs
    args.threads = min(n, os.cpu_count() or 1)  # what the envpool adapter uses by default
    common = [f"num_envs={n}", "eval_interval=0", "tensorboard=false", "progress=false"]
    if args.algo == "dqn":
        warm = 16 * n
        overrides = common + ["buffer_size=20000", f"learning_starts={warm}", f"log_interval={args.steps}"]
        total = warm + args.steps
    else:
        overrides = common + [f"log_interval={args.steps}"]
        total = 2 * args.steps
    config = load_config(CONFIG_DIR / f"{args.algo}_atari.yaml", overrides, algo=args.algo, env=args.env,
                         seeds=1, total_steps=total)
    trainer = Trainer(config)
    if args.algo == "dqn":  # first chunk: the warm-up (random actions, no learning)
        trainer.chunk_iters = warm // n
    chunks = []
    for log_data in trainer():
        chunks.append((log_data["step"], log_data["chunk_s"]))
        if args.algo == "dqn" and len(chunks) == 1:
            trainer.chunk_iters = args.steps // n
    timed_step, train_s = chunks[-1][0] - chunks[-2][0], chunks[-1][1]
    vec_steps = timed_step // n
    env_s = raw_env_seconds(args.env, n, args.threads, vec_steps)
    if args.algo == "dqn":
        updates = vec_steps // trainer.config.train_frequency * trainer.config.gradient_steps
    else:
        updates = vec_steps // trainer.algo.config.rollout_length
    learn_s = learner_seconds(trainer, args.algo, updates)
    print(json.dumps({
        "bench": "atari_loop", "algo": args.algo, "env": args.env, "num_envs": n, "threads": args.threads,
        "timed_env_steps": timed_step, "learner_calls": updates,
        "train_s": round(train_s, 2), "raw_env_s": round(env_s, 2), "learner_s": round(learn_s, 2),
        "train_over_parts": round(train_s / (env_s + learn_s), 3),
        "train_env_steps_per_s": round(timed_step / train_s, 1), "raw_env_steps_per_s": round(timed_step / env_s, 1),
        "train_over_raw_env_throughput": round((timed_step / train_s) / (timed_step / env_s), 3),
        "compile_s": round(trainer.compile_s, 1),
        "machine": {"python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend()},
    }), flush=True)


if __name__ == "__main__":
    main()
