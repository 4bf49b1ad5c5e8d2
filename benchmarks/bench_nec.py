"""NEC against DQN at the same env steps: greedy-return curves over seeds, and NEC's speed as DQN's ratio.

`curves`: every arm runs its preset (`configs/nec_cartpole.yaml` / `configs/dqn_cartpole.yaml` on
CartPole-v1, `configs/nec_minatar.yaml` / `configs/dqn_minatar.yaml` on Breakout-MinAtar) with the
same seeds (vmapped in one program per arm) and the same budget, evaluated greedily every
`--chunk` env steps (`--eval-episodes` episodes per seed). Prints one JSON object with the greedy
return per seed at every evaluation, the mean at each `--report` step, and optionally plots them.

    python benchmarks/bench_nec.py curves --env CartPole-v1 --seeds 5 --steps 100000 --plot benchmarks/nec_cartpole.png
    python benchmarks/bench_nec.py curves --env Breakout-MinAtar --seeds 5 --steps 100000 --plot benchmarks/nec_minatar.png

`speed`: env steps/s of NEC's preset and of DQN with NEC's embedding network as its Q network
(same torso and hidden layers, one output per action), the same envs, replay period and batch;
one seed, training steps only (compile excluded), best of `--repeats` runs of `--steps`.

    python benchmarks/bench_nec.py speed --env CartPole-v1 --steps 20000

`plot`: the curves of arms from several `curves` outputs (same env) in one PNG.

    python benchmarks/bench_nec.py plot nec.json dqn.json --plot benchmarks/nec_minatar.png

Extra overrides for one arm: `--set nec:agent.n_step=100` (repeatable).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

PRESETS = {
    "CartPole-v1": {"nec": "nec_cartpole.yaml", "dqn": "dqn_cartpole.yaml"},
    "Breakout-MinAtar": {"nec": "nec_minatar.yaml", "dqn": "dqn_minatar.yaml"},
}


def arm_overrides(args, arm: str) -> list[str]:
    extra = []
    for spec in args.set:
        name, _, kv = spec.partition(":")
        if name not in ("nec", "dqn") or "=" not in kv:
            raise SystemExit(f"--set {spec!r}: expected nec:KEY=VALUE or dqn:KEY=VALUE")
        if name == arm:
            extra.append(kv)
    return extra


def run_curve(arm: str, args) -> dict:
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    common = [f"log_interval={args.chunk}", f"eval_interval={args.chunk}", f"eval_episodes={args.eval_episodes}",
              "progress=false", "tensorboard=false"]
    config = load_config(CONFIG_DIR / PRESETS[args.env][arm], common + arm_overrides(args, arm), algo=None,
                         env=args.env, seeds=args.seeds, total_steps=args.steps)
    start = time.perf_counter()
    trainer = Trainer(config)
    curve = []
    for log in trainer():
        if "eval_return_per_seed" not in log:
            continue
        point = {"env_steps": log["step"], "eval_return": [round(x, 2) for x in log["eval_return_per_seed"]],
                 "train_return": [round(x, 2) for x in log["per_seed"]["episode_return_mean"]]}
        curve.append(point)
        print(arm, log["step"], round(log["eval_return_mean"], 2), point["eval_return"], file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    return {"algo": config.algo, "preset": PRESETS[args.env][arm], "overrides": arm_overrides(args, arm),
            "compile_s": round(trainer.compile_s, 2), "wall_s": round(wall, 1),
            "agent_steps_per_s": round(args.seeds * args.steps / (wall - trainer.compile_s), 1), "curve": curve}


def at_step(curve: list[dict], step: int) -> list[float] | None:
    """The per-seed greedy returns of the evaluation at `step` (None if the run did not evaluate there)."""
    return next((c["eval_return"] for c in curve if c["env_steps"] == step), None)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, arm), color in zip(result["arms"].items(), ("tab:blue", "tab:red")):
        steps = [c["env_steps"] for c in arm["curve"]]
        values = np.array([c["eval_return"] for c in arm["curve"]], dtype=float)
        for s in range(values.shape[1]):
            ax.plot(steps, values[:, s], color=color, lw=0.6, alpha=0.35)
        ax.plot(steps, values.mean(axis=1), color=color, lw=2.0, marker="o", ms=3,
                label=f"{name.upper()} (mean of {values.shape[1]} seeds)")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"greedy return ({result['eval_episodes']} episodes per seed)")
    ax.set_title(f"{result['env']}: NEC vs DQN at the same env steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def curves(args) -> dict:
    result = {"env": args.env, "seeds": args.seeds, "steps": args.steps, "eval_episodes": args.eval_episodes,
              "arms": {}}
    for arm in args.arms:
        result["arms"][arm] = run_curve(arm, args)
    result["at"] = {}
    for step in args.report:
        row = {}
        for arm, data in result["arms"].items():
            values = at_step(data["curve"], step)
            row[arm] = None if values is None else round(sum(values) / len(values), 2)
        result["at"][str(step)] = row
    if args.plot:
        plot(result, args.plot)
    return result


def speed(args) -> dict:
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    nec = load_config(CONFIG_DIR / PRESETS[args.env]["nec"], [], algo=None, env=args.env)
    hidden = "[" + ",".join(str(h) for h in nec.agent.hidden) + "]"
    common = [f"log_interval={args.steps}", "eval_interval=0", "progress=false", "tensorboard=false",
              f"learning_starts={nec.learning_starts}"]
    # DQN with NEC's embedding as its Q network (torso and hidden layers; the head outputs one value per
    # action instead of a key), NEC's envs, replay period and batch size, a replay of NEC's size.
    dqn_same_net = [f"num_envs={nec.num_envs}", f"train_frequency={nec.train_frequency}",
                    f"gradient_steps={nec.gradient_steps}", f"batch_size={nec.agent.batch_size}",
                    f"buffer_size={nec.agent.replay_size}", f"agent.hidden={hidden}",
                    f"agent.torso={nec.agent.torso}"]
    arms = {"nec": (PRESETS[args.env]["nec"], common + arm_overrides(args, "nec")),
            "dqn": (PRESETS[args.env]["dqn"], common + dqn_same_net + arm_overrides(args, "dqn"))}
    result = {"env": args.env, "steps": args.steps, "repeats": args.repeats, "arms": {}}
    for arm, (preset, overrides) in arms.items():
        config = load_config(CONFIG_DIR / preset, overrides, algo=None, env=args.env, seeds=1,
                             total_steps=args.steps)
        best = None
        for _ in range(args.repeats):
            trainer = Trainer(config)
            trainer.carry = trainer.init_carry()  # compiles init and the chunks before the clock starts
            start = time.perf_counter()
            for _ in trainer():
                pass
            train_s = time.perf_counter() - start
            best = train_s if best is None else min(best, train_s)
            print(arm, round(args.steps / train_s, 1), "env steps/s", file=sys.stderr, flush=True)
        result["arms"][arm] = {"preset": preset, "overrides": overrides, "compile_s": round(trainer.compile_s, 2),
                               "env_steps_per_s": round(args.steps / best, 1)}
    result["nec_over_dqn"] = round(result["arms"]["nec"]["env_steps_per_s"]
                                   / result["arms"]["dqn"]["env_steps_per_s"], 4)
    return result


def main():
    from bench_td3 import machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("curves", "speed", "plot"))
    p.add_argument("inputs", nargs="*", help="plot: JSON outputs of `curves` to draw together")
    p.add_argument("--env", default="CartPole-v1", choices=sorted(PRESETS))
    p.add_argument("--arms", nargs="+", default=["nec", "dqn"], choices=("nec", "dqn"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=10_000, help="env steps between greedy evaluations")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--report", type=int, nargs="+", default=[50_000, 100_000], help="steps to summarise")
    p.add_argument("--repeats", type=int, default=2, help="speed: runs per arm, best kept")
    p.add_argument("--set", action="append", default=[], metavar="ARM:KEY=VALUE")
    p.add_argument("--plot", help="curves: write the greedy-return curves to this PNG (needs matplotlib)")
    args = p.parse_args()
    if args.what == "plot":
        results = [json.loads(Path(f).read_text()) for f in args.inputs]
        if not results or not args.plot or len({r["env"] for r in results}) != 1:
            raise SystemExit("plot: give --plot PNG and one or more `curves` outputs of one env")
        merged = {**results[0], "arms": {k: v for r in results for k, v in r["arms"].items()}}
        plot(merged, args.plot)
        return
    result = curves(args) if args.what == "curves" else speed(args)
    result["machine"] = machine()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
