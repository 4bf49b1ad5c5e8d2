"""SAC benchmarks on gymnax Pendulum-v1; prints one JSON object per measurement.

    python benchmarks/bench_sac.py speed --seeds 1      # rejax-equivalent config: compile s, steps/s, final return
    python benchmarks/bench_sac.py speed --seeds 8      # 8 seeds vmapped in one program
    python benchmarks/bench_sac.py learn --seeds 8 --devices 2   # configs/sac_pendulum.yaml, final return at 50k steps

`speed` uses the settings of rejax's Pendulum SAC config (64x64 swish MLPs, 1 env, buffer 10k,
256 warm-up steps, batch 256, lr 0.01, gamma 0.99, polyak 0.98 i.e. tau 0.02, one update per
env step); rejax also normalises observations, which this loop does not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

REJAX_EQUIVALENT = [
    "num_envs=1", "buffer_size=10000", "batch_size=256", "learning_starts=256", "train_frequency=1",
    "gradient_steps=1", "eval_interval=0", "eval_episodes=10", "tensorboard=false", "progress=false",
    "agent.actor_hidden=[64,64]", "agent.critic_hidden=[64,64]", "agent.activation=swish",
    "agent.actor_lr=0.01", "agent.critic_lr=0.01", "agent.alpha_lr=0.01", "agent.gamma=0.99", "agent.tau=0.02",
]


def train_sac(overrides: list[str], seeds: int, total_steps: int, preset: bool) -> dict:
    """Train with the Trainer (seeds vmapped); compile time, throughput and final deterministic returns."""
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    import gymnax  # noqa: F401  (imported before the clock starts, as the rejax peer script imports
    # rejax and gymnax before timing its compile; gymnax's import pulls in seaborn and takes ~1-3 s)

    config = load_config(CONFIG_DIR / "sac_pendulum.yaml" if preset else None,
                         overrides + [f"log_interval={max(1, total_steps // 5)}"],
                         algo="sac", env="Pendulum-v1", seeds=seeds, total_steps=total_steps)
    start = time.perf_counter()
    trainer = Trainer(config)
    for _ in trainer():
        pass
    wall = time.perf_counter() - start
    returns = trainer.evaluate().mean(axis=1)
    train_s = wall - trainer.compile_s
    return {"seeds": seeds, "total_steps": total_steps, "compile_s": round(trainer.compile_s, 2),
            "train_s": round(train_s, 2), "steps_per_s": round(total_steps / train_s, 1),
            "agent_steps_per_s": round(seeds * total_steps / train_s, 1),
            "final_eval_return_mean": round(float(returns.mean()), 1),
            "final_eval_return_per_seed": [round(float(x), 1) for x in returns]}


def main():
    from bench_td3 import machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "learn"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--devices", type=int, default=1, help="XLA host devices to shard seeds over (CPU)")
    p.add_argument("--eval-episodes", type=int, default=100,
                   help="learn: final deterministic episodes per seed (Pendulum returns depend strongly on the start state)")
    args = p.parse_args()
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
    if args.what == "speed":
        out = {"bench": "sac_speed", "config": "rejax-equivalent",
               **train_sac(REJAX_EQUIVALENT, args.seeds, args.steps, preset=False)}
    else:
        out = {"bench": "sac_learning", "config": "configs/sac_pendulum.yaml",
               **train_sac(["progress=false", "tensorboard=false", "eval_interval=0", f"eval_episodes={args.eval_episodes}"],
                           args.seeds, args.steps, preset=True)}
    out["machine"] = machine()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
