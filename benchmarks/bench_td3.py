"""TD3 benchmarks on gymnax Pendulum-v1; prints one JSON object per measurement.

    python benchmarks/bench_td3.py speed --seeds 1            # rejax-equivalent config, steps/s + compile s
    python benchmarks/bench_td3.py speed --seeds 8 --devices 2
    python benchmarks/bench_td3.py target                      # wall s to mean eval return >= -200 (preset)
    python benchmarks/bench_td3.py learn --seeds 8             # final return of 8 seeds at 50k steps
    python benchmarks/bench_td3.py all                         # everything above, each in a fresh process

`speed` uses the settings of rejax's Pendulum TD3 config (64x64 swish MLPs, batch 100, buffer 10k,
1 env, one update per env step, policy delay 2, tau 0.05, lr 1e-3) so the two can be compared at
equal work with benchmarks/peers/rejax_td3.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REJAX_EQUIVALENT = [
    "num_envs=1", "buffer_size=10000", "batch_size=100", "learning_starts=1000", "train_frequency=1",
    "gradient_steps=1", "eval_interval=0", "eval_episodes=10", "tensorboard=false", "progress=false",
    "agent.actor_hidden=[64,64]", "agent.critic_hidden=[64,64]", "agent.activation=swish",
    "agent.actor_lr=0.001", "agent.critic_lr=0.001", "agent.gamma=0.99", "agent.tau=0.05",
    "agent.max_grad_norm=100", "agent.exploration_noise=0.3", "agent.target_noise=0.2",
    "agent.target_noise_clip=0.5", "agent.policy_delay=2",
]


def machine() -> dict:
    import jax

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"python": platform.python_version(), "jax": jax.__version__, "cpu": cpu, "cores": os.cpu_count(),
            "cores_allowed": affinity, "devices": len(jax.devices()), "backend": jax.default_backend()}


def run(overrides, seeds, total_steps, target=None, preset=False):
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    import gymnax  # noqa: F401  (imported before the clock starts, as the rejax peer script imports
    # rejax and gymnax before timing its compile; gymnax's import pulls in seaborn and takes ~1-3 s)

    cfg_file = CONFIG_DIR / "td3_pendulum.yaml" if preset else None
    config = load_config(cfg_file, overrides, algo="td3", env="Pendulum-v1", seeds=seeds, total_steps=total_steps)
    start = time.perf_counter()
    trainer = Trainer(config)
    reached, history = None, []
    for log_data in trainer():
        if "eval_return_mean" in log_data:
            history.append((log_data["step"], round(time.perf_counter() - start, 2),
                            round(log_data["eval_return_mean"], 1)))
            if target is not None and log_data["eval_return_mean"] >= target:
                reached = (log_data["step"], time.perf_counter() - start)
                break
    wall = time.perf_counter() - start
    returns = trainer.evaluate()
    return trainer, wall, returns, reached, history


def speed(args):
    steps = args.steps or 50_000
    trainer, wall, returns, _, _ = run(REJAX_EQUIVALENT + [f"log_interval={steps // 5}"], args.seeds, steps)
    train_s = wall - trainer.compile_s
    return {"bench": "td3_speed", "seeds": args.seeds, "devices": len(__import__("jax").devices()),
            "total_steps": steps, "compile_s": round(trainer.compile_s, 2), "train_s": round(train_s, 2),
            "steps_per_s": round(steps / train_s, 1), "agent_steps_per_s": round(args.seeds * steps / train_s, 1),
            "final_eval_return_mean": round(float(returns.mean()), 1)}


def target(args):
    results = []
    for seed in range(args.repeats):
        trainer, wall, returns, reached, history = run(
            [f"seed={seed}", "eval_interval=1000", "log_interval=1000", "progress=false", "tensorboard=false"],
            1, args.steps or 20_000, target=-200.0, preset=True)
        results.append({"seed": seed, "reached_step": reached and reached[0],
                        "wall_s_to_target": reached and round(reached[1], 2),
                        "compile_s": round(trainer.compile_s, 2), "eval_history": history})
    ok = [r["wall_s_to_target"] for r in results if r["wall_s_to_target"] is not None]
    return {"bench": "td3_time_to_minus200", "config": "configs/td3_pendulum.yaml", "runs": results,
            "reached": f"{len(ok)}/{len(results)}",
            "median_wall_s": sorted(ok)[len(ok) // 2] if ok else None}


def learn(args):
    steps = args.steps or 50_000
    trainer, wall, returns, _, _ = run([f"log_interval={steps // 10}", "progress=false", "tensorboard=false",
                                        "eval_interval=0", f"eval_episodes={args.eval_episodes}"], args.seeds, steps, preset=True)
    per_seed = returns.mean(axis=1)
    return {"bench": "td3_learning", "config": "configs/td3_pendulum.yaml", "seeds": args.seeds,
            "total_steps": steps, "final_eval_return_mean": round(float(per_seed.mean()), 1),
            "final_eval_return_per_seed": [round(float(x), 1) for x in per_seed],
            "wall_s": round(wall, 1), "compile_s": round(trainer.compile_s, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "target", "learn", "all"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--devices", type=int, default=1, help="XLA host devices to shard seeds over (CPU)")
    p.add_argument("--steps", type=int)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-episodes", type=int, default=100,
                   help="learn: final deterministic episodes per seed (Pendulum returns depend strongly on the start state)")
    args = p.parse_args()
    if args.what == "all":
        for extra in (["speed", "--seeds", "1"], ["speed", "--seeds", "8"],
                      ["speed", "--seeds", "8", "--devices", "2"], ["target"], ["learn", "--seeds", "8", "--devices", "2"]):
            subprocess.run([sys.executable, __file__, *extra], check=True)
        return
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
    sys.path.insert(0, str(REPO))
    out = {"speed": speed, "target": target, "learn": learn}[args.what](args)
    out["machine"] = machine()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
