"""Scaling table for TD3 on Pendulum-v1 with small nets: host devices x runs x steps/s.

Each device count runs in a fresh process (XLA_FLAGS is read when JAX starts).
Independent runs (seeds) are sharded over the devices; a data-parallel row splits
one run's envs and batch over them. Prints one JSON object.

    python benchmarks/bench_scale.py [--devices 1 2] [--seeds 2 4] [--steps 3000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def settings(steps: int, num_envs: int) -> list[str]:
    return [f"total_steps={steps}", f"learning_starts={steps // 4}", f"buffer_size={steps}", "batch_size=128",
            f"log_interval={steps // 2}", f"num_envs={num_envs}", "eval_episodes=2",
            "agent.actor_hidden=[64,64]", "agent.critic_hidden=[64,64]", "progress=false", "tensorboard=false"]


def measure(seeds: int, data_parallel: int, steps: int, num_envs: int) -> dict:
    """Train once; steps/s from the last chunk (compiled already, so no compile time inside)."""
    import jax

    from angle_jax.config import load_config
    from angle_jax.training.trainer import Trainer

    over = settings(steps, num_envs) + [f"seeds={seeds}", f"data_parallel={data_parallel}"]
    trainer = Trainer(load_config(overrides=over, algo="td3", env="Pendulum-v1"))
    t0 = time.perf_counter()
    logs = list(trainer())
    wall = time.perf_counter() - t0
    last = logs[-1]
    return {"devices": len(jax.devices()), "used_devices": 1 if trainer.mesh is None else int(trainer.mesh.devices.size),
            "seeds": seeds, "data_parallel": data_parallel, "num_envs": num_envs, "steps": trainer.step,
            "env_steps_per_s_per_run": round(last["steps_per_s"]),
            "env_steps_per_s_total": round(last["agent_steps_per_s"]),
            "compile_s": round(trainer.compile_s, 2), "wall_s": round(wall, 2)}


def worker(args) -> None:
    rows = [measure(s, 1, args.steps, 1) for s in args.seeds]
    if len(__import__("jax").devices()) > 1 or args.dp_on_one:
        d = len(__import__("jax").devices())
        rows.append(measure(1, max(d, 2), args.steps, 2 * max(d, 2)))
    print(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 4])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dp-on-one", action="store_true", help="also time the data-parallel row on one device")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    table = []
    for n in args.devices:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        cmd = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--seeds", *map(str, args.seeds)]
        if n == 1:
            cmd.append("--dp-on-one")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=True)
        table += json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"bench": "td3_pendulum_scale", "cpu_cores": os.cpu_count(), "rows": table}, indent=1))


if __name__ == "__main__":
    main()
