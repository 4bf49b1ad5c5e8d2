"""Rainbow against DQN on a gymnax MinAtar game at the same budget: learning curves.

Both arms use `configs/rainbow_minatar.yaml` (same torso, replay size, batch, replay ratio,
target copy interval); the DQN arm switches every Rainbow component off. The preset is
Rainbow without noisy nets and prioritised replay (see the file for why); the arm "paper"
turns both back on with the paper's lr and exploration. Seeds are vmapped in one program
per arm. Prints one JSON object (per arm: mean training episode return per seed after every
chunk, final greedy eval per seed, steps/s) and optionally plots the curves.

    python benchmarks/bench_minatar.py --seeds 3 --steps 300000 --plot benchmarks/minatar_breakout.png

Ablation arms are named in `ARMS` (e.g. `--arms dqn,dqn+nstep,paper-noisy`); an ad-hoc arm is
`--extra-arm NAME:BASE:KEY=VALUE,...`, i.e. the overrides of arm BASE followed by KEY=VALUE ones.
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

DQN_ARM = [
    "algo=dqn", "agent.double=false", "agent.dueling=false", "agent.n_step=1", "agent.prioritized=false",
    "agent.distributional=false", "agent.noisy=false", "agent.epsilon_start=1.0", "agent.epsilon_end=0.1",
    "agent.epsilon_decay_steps=100000", "agent.learning_rate=2.5e-4",
]
EPSILON_GREEDY = [o for o in DQN_ARM if o.startswith("agent.epsilon")]


def with_overrides(base: list[str], *overrides: str) -> list[str]:
    """`base` with each `key=value` of `overrides` replacing (or appended after) that key's entry."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(overrides)


# Rainbow as in the paper (Table 1, with this file's scaled-down sizes): the preset plus noisy nets
# (exploration by parameter noise alone), prioritised replay and lr 1e-4.
PAPER_RAINBOW = ["algo=rainbow", "agent.noisy=true", "agent.prioritized=true", "agent.epsilon_start=0.0",
                 "agent.epsilon_end=0.0", "agent.epsilon_decay_steps=0", "agent.learning_rate=1e-4"]

# The two compared arms and the ablations: one component added to DQN, or one removed from (or one
# setting changed in) the paper's Rainbow; every other setting is the arm's base.
ARMS = {
    "rainbow": ["algo=rainbow"],
    "dqn": DQN_ARM,
    "dqn+double": with_overrides(DQN_ARM, "agent.double=true"),
    "dqn+dueling": with_overrides(DQN_ARM, "agent.dueling=true"),
    "dqn+nstep": with_overrides(DQN_ARM, "agent.n_step=3"),
    "dqn+per": with_overrides(DQN_ARM, "agent.prioritized=true"),
    "dqn+c51": with_overrides(DQN_ARM, "agent.distributional=true"),
    "dqn+nstep+per": with_overrides(DQN_ARM, "agent.n_step=3", "agent.prioritized=true"),
    "dqn+nstep+c51": with_overrides(DQN_ARM, "agent.n_step=3", "agent.distributional=true"),
    "paper": PAPER_RAINBOW,
    "paper-noisy": with_overrides(PAPER_RAINBOW, "agent.noisy=false", *EPSILON_GREEDY),
    "paper-noisy@lr2.5e-4": with_overrides(PAPER_RAINBOW, "agent.noisy=false", *EPSILON_GREEDY,
                                           "agent.learning_rate=2.5e-4"),
    # = the preset ("rainbow")
    "paper-noisy-per@lr2.5e-4": with_overrides(PAPER_RAINBOW, "agent.noisy=false", *EPSILON_GREEDY,
                                               "agent.prioritized=false", "agent.learning_rate=2.5e-4"),
    "paper@lr2.5e-4": with_overrides(PAPER_RAINBOW, "agent.learning_rate=2.5e-4"),
}


def parse_extra_arm(spec: str) -> tuple[str, list[str]]:
    """`NAME:BASE:KEY=VALUE,...` -> (NAME, overrides of ARMS[BASE] then the KEY=VALUE ones)."""
    name, base, *rest = spec.split(":", 2)
    if base not in ARMS:
        raise SystemExit(f"--extra-arm {spec!r}: base arm must be one of {list(ARMS)}")
    overrides = [kv for kv in (rest[0].split(",") if rest else []) if kv]
    return name, with_overrides(ARMS[base], *overrides)


def run_arm(name: str, overrides: list[str], args) -> dict:
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    common = [f"log_interval={args.chunk}", "eval_interval=0", f"eval_episodes={args.eval_episodes}",
              "progress=false", "tensorboard=false", f"agent.per_beta_steps={args.steps}"]
    config = load_config(CONFIG_DIR / "rainbow_minatar.yaml", common + overrides, algo=None, env=args.env,
                         seeds=args.seeds, total_steps=args.steps)
    start = time.perf_counter()
    trainer = Trainer(config)
    curve = []
    for log in trainer():
        point = {"env_steps": log["step"],
                 "episode_return": [round(x, 3) for x in log["per_seed"]["episode_return_mean"]]}
        if "q_mean" in log["per_seed"]:  # mean predicted Q of the replayed batches, per seed
            point["q_mean"] = [round(x, 3) for x in log["per_seed"]["q_mean"]]
        curve.append(point)
        print(name, log["step"], round(log["episode_return_mean"], 2), file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    returns = trainer.evaluate().mean(axis=1)
    train_s = wall - trainer.compile_s
    return {"algo": config.algo, "compile_s": round(trainer.compile_s, 2),
            "agent_steps_per_s": round(args.seeds * args.steps / train_s, 1),
            "final_eval_return_mean": round(float(returns.mean()), 2),
            "final_eval_return_per_seed": [round(float(x), 2) for x in returns], "curve": curve}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:gray")
    for (name, arm), color in zip(result["arms"].items(), colors * 3):
        steps = [c["env_steps"] for c in arm["curve"]]
        values = np.array([c["episode_return"] for c in arm["curve"]], dtype=float)
        for s in range(values.shape[1]):
            ax.plot(steps, values[:, s], color=color, lw=0.6, alpha=0.4)
        ax.plot(steps, np.nanmean(values, axis=1), color=color, lw=2.0, label=f"{name} (mean of {values.shape[1]})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("training episode return")
    ax.set_title(f"{result['env']}: {' vs '.join(result['arms'])}, same budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    from bench_td3 import machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Breakout-MinAtar")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--chunk", type=int, default=20_000, help="env steps per compiled chunk (one curve point)")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--arms", default="rainbow,dqn", help=f"comma-separated, from {list(ARMS)}")
    p.add_argument("--extra-arm", action="append", default=[], metavar="NAME:BASE:KEY=VALUE,...",
                   help="an extra arm: the overrides of arm BASE, then these (repeatable)")
    p.add_argument("--plot", help="write the learning curves to this PNG (needs matplotlib)")
    args = p.parse_args()
    arms = {name: ARMS[name] for name in args.arms.split(",") if name}
    arms.update(parse_extra_arm(spec) for spec in args.extra_arm)
    result = {"env": args.env, "seeds": args.seeds, "steps": args.steps, "arms": {}}
    for name, overrides in arms.items():
        result["arms"][name] = run_arm(name, overrides, args)
        result["arms"][name]["overrides"] = overrides
    result["machine"] = machine()
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
