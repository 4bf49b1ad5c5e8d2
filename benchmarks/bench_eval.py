"""What does evaluating as a run goes cost in training speed? In line against overlapped.

Three arms of one preset, side by side in one process and alternated over `--repeats` rounds:
`none` (eval_interval 0: never evaluates while training), `in_line` (eval_overlap false: the
evaluation runs between chunks and training waits for it) and `overlapped` (eval_overlap true:
the evaluation is dispatched beside the next chunk). Each arm's time is the wall time of the
whole generator (every chunk and every evaluation it yields) with compile excluded (programs are
compiled before the clock starts); the median over rounds is reported, with the cost of the two
evaluating arms as a fraction of `none`'s steps/s.

    python benchmarks/bench_eval.py                                   # TD3 preset (eval every 10k of 20k steps)
    python benchmarks/bench_eval.py --set eval_interval=2000 --seeds 8  # denser evaluation, 8 seeds
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ARMS = {"none": ["eval_interval=0"], "in_line": ["eval_overlap=false"], "overlapped": ["eval_overlap=true"]}


def build(args, arm: str):
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.trainer import Trainer

    overrides = ["progress=false", "tensorboard=false", *args.set, *ARMS[arm]]
    if arm == "none":  # the same programs as the others, but no evaluation while training
        overrides = [o for o in overrides if not o.startswith("eval_interval=")] + ["eval_interval=0"]
    config = load_config(CONFIG_DIR / args.preset, overrides, algo=None, env=None, seeds=args.seeds,
                         total_steps=args.steps)
    trainer = Trainer(config)
    trainer.carry = trainer.init_carry()
    trainer.programs.compile_missing(False, (), with_evaluate=True)
    trainer.evaluate()  # the evaluation program's first call outside the clock, as the chunks' are
    return config, trainer


def time_arm(args, arm: str) -> tuple[float, int, int]:
    config, trainer = build(args, arm)
    start = time.perf_counter()
    evaluations = sum("eval_return_mean" in log for log in trainer())
    return time.perf_counter() - start, trainer.step, evaluations


def main():
    from bench_td3 import machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="td3_pendulum.yaml")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="default: the preset's total_steps")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    info = {}
    for r in range(args.repeats):
        for arm in ARMS:
            seconds, steps, evaluations = time_arm(args, arm)
            times[arm].append(seconds)
            info[arm] = {"env_steps": steps, "evaluations": evaluations}
            print(r, arm, round(seconds, 3), "s", file=sys.stderr, flush=True)
    result = {"preset": args.preset, "seeds": args.seeds, "overrides": args.set, "repeats": args.repeats, "arms": {}}
    base = statistics.median(times["none"])
    for arm, values in times.items():
        median = statistics.median(values)
        result["arms"][arm] = {**info[arm], "seconds_median": round(median, 3),
                               "seconds": [round(v, 3) for v in values],
                               "steps_per_s": round(info[arm]["env_steps"] / median, 1),
                               "cost_vs_none": round(1 - base / median, 4)}
    result["machine"] = machine()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
