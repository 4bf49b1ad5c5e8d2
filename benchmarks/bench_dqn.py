"""DQN benchmarks on gymnax CartPole-v1; prints one JSON object per measurement.

    python benchmarks/bench_dqn.py speed --seeds 1     # PureJaxRL's dqn.py config (500k env steps): compile s, steps/s, return
    python benchmarks/bench_dqn.py speed --seeds 8     # the same, 8 seeds vmapped in one program
    python benchmarks/bench_dqn.py learn --seeds 8     # configs/dqn_cartpole.yaml: final greedy return per seed at 50k steps

`speed` trains configs/dqn_cartpole_purejaxrl.yaml, PureJaxRL's CartPole DQN settings mapped key by
key (the mapping is written out in that file): 10 envs, 500k env steps, buffer 10k, batch 128, one
gradient step per vectorised step after 10k warm-up steps, hard target copy every 500 env steps,
120x84 ReLU Q-net, plain 1-step DQN, squared error, Adam 2.5e-4. Steps are env steps summed over
the 10 envs (PureJaxRL's TOTAL_TIMESTEPS), per seed; `agent_steps_per_s` multiplies by the seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def run(config_name: str, seeds: int, total_steps: int | None, overrides: list[str]):
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    extra = {} if total_steps is None else {"total_steps": total_steps}
    config = load_config(CONFIG_DIR / config_name, ["progress=false", "tensorboard=false", *overrides],
                         seeds=seeds, **extra)
    start = time.perf_counter()
    trainer = Trainer(config)
    last = {}
    for log_data in trainer():
        last = log_data
    wall = time.perf_counter() - start
    returns = trainer.evaluate()
    per_seed = returns.mean(axis=1)
    train_s = wall - trainer.compile_s
    steps = trainer.step
    train_return = last.get("per_seed", {}).get("episode_return_mean")
    return {
        "config": f"configs/{config_name}", "seeds": seeds, "devices": len(__import__("jax").devices()),
        "total_steps": steps, "num_envs": config.num_envs,
        "compile_s": round(trainer.compile_s, 2), "train_s": round(train_s, 2),
        "steps_per_s": round(steps / train_s, 1), "agent_steps_per_s": round(seeds * steps / train_s, 1),
        "final_eval_return_mean": round(float(per_seed.mean()), 1),
        "final_eval_return_per_seed": [round(float(x), 1) for x in per_seed],
        "eval_episodes": config.eval_episodes,
        # mean return of the training (ε-greedy) episodes that ended in the last logging chunk
        "last_chunk_train_return_per_seed": None if train_return is None else [round(float(x), 1) for x in train_return],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "learn"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--devices", type=int, default=1, help="XLA host devices to shard seeds over (CPU)")
    p.add_argument("--steps", type=int, help="env steps per seed (default: the config's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    sys.path.insert(0, str(REPO))
    from bench_td3 import machine

    if args.what == "speed":
        out = {"bench": "dqn_speed_purejaxrl_config",
               **run("dqn_cartpole_purejaxrl.yaml", args.seeds, args.steps, args.overrides)}
    else:
        out = {"bench": "dqn_learning", **run("dqn_cartpole.yaml", args.seeds, args.steps,
                                              ["eval_episodes=20", *args.overrides])}
    out["machine"] = machine()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
