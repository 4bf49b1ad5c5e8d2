"""Do the shipped presets hold on every seed? 32 seeds per preset, both kernel paths.

Each (preset, kernels) cell is one `train.py` run with `--seeds N` (vmapped: one compile), exactly
what a user runs, with `eval_episodes` raised so a seed's score is not dominated by its start states.
`--set kernels=xla` (plain JAX/flax) and `kernels=cpu` (angle_jax.xla_cpu) round differently, so the
two paths stand in for a second CPU. Per cell: mean, median, min, the fraction of seeds at the
preset's target, the interquartile mean with a stratified-bootstrap 95% interval
(angle_jax.report.stats) and the standard error of a seed's score at 10 and at `--episodes`
evaluation episodes. Results are merged into `--out` (keyed by preset, kernels, seeds, steps and
overrides) and printed as a Markdown table.

    python benchmarks/bench_presets.py                                  # every CartPole/Pendulum preset
    python benchmarks/bench_presets.py --preset dqn_cartpole --kernels cpu
    python benchmarks/bench_presets.py --preset rainbow_minatar dqn_minatar --seeds 8 --steps 300000
    python benchmarks/bench_presets.py --table                          # print the table of --out only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# preset -> (score a seed must reach, goal for the mean over seeds, goal for the fraction of seeds at the
# score). None: stated, no goal. The goals are those the README claims for the preset.
TARGETS = {
    "dqn_cartpole": (475.0, 475.0, 30 / 32),
    "ppo_cartpole": (500.0, None, 31 / 32),
    "a2c_cartpole": (475.0, None, None),
    "td3_pendulum": (-200.0, -160.0, 1.0),
    "sac_pendulum": (-200.0, -160.0, 1.0),
    "ddpg_pendulum": (-200.0, -160.0, 1.0),
    "rainbow_minatar": (None, None, None),
    "dqn_minatar": (None, None, None),
    "ppo_minatar": (None, None, None),
}
DEFAULT = ["dqn_cartpole", "ppo_cartpole", "a2c_cartpole", "td3_pendulum", "sac_pendulum", "ddpg_pendulum"]


def run_cell(preset: str, kernels: str, seeds: int, seed: int, episodes: int, steps: int | None,
             overrides: list[str]) -> dict:
    """One train.py run; returns its summary.json."""
    with tempfile.TemporaryDirectory(prefix="bench_presets_") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / f"{preset}.yaml"),
               "--seeds", str(seeds), "--seed", str(seed), "--run-dir", str(run_dir),
               "--set", f"kernels={kernels}", "--set", f"eval_episodes={episodes}", "--set", "plots=false",
               "--set", "progress=false", "--set", "tensorboard=false", "--set", "keep_checkpoints=1"]
        if steps is not None:
            cmd += ["--total-steps", str(steps)]
        for o in overrides:
            cmd += ["--set", o]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{preset} kernels={kernels}: train.py exited {proc.returncode}: "
                             f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["process_wall_s"] = round(time.perf_counter() - start, 1)
        return summary


def describe(preset: str, summary: dict, reps: int = 2000) -> dict:
    """The statistics of one cell from its per-episode returns [seeds, episodes]."""
    from angle_jax.report import stats

    returns = np.asarray(summary["final_eval_returns"], np.float64)
    per_seed = returns.mean(axis=1)
    score, mean_goal, fraction_goal = TARGETS.get(preset, (None, None, None))
    iqm = stats.aggregate(per_seed[:, None], reps=reps, rng=0)["iqm"]
    # a seed's evaluation score is the mean of its episodes: its standard error at n episodes
    sd = returns.std(axis=1, ddof=1) if returns.shape[1] > 1 else np.zeros_like(per_seed)
    out = {
        "mean": round(float(per_seed.mean()), 2), "median": round(float(np.median(per_seed)), 2),
        "min": round(float(per_seed.min()), 2), "max": round(float(per_seed.max()), 2),
        "iqm": round(iqm.value, 2), "iqm_low": round(iqm.low, 2), "iqm_high": round(iqm.high, 2),
        "per_seed": [round(float(v), 2) for v in per_seed],
        "episode_sd_median": round(float(np.median(sd)), 2),
        "seed_se_at_10": round(float(np.median(sd) / np.sqrt(10)), 2),
        f"seed_se_at_{returns.shape[1]}": round(float(np.median(sd) / np.sqrt(returns.shape[1])), 2),
    }
    if score is not None:
        at = per_seed >= score - 1e-6
        out["target_score"] = score
        out["seeds_at_target"] = int(at.sum())
        out["fraction_at_target"] = round(float(at.mean()), 4)
    goals = []
    if mean_goal is not None:
        goals.append(per_seed.mean() >= mean_goal)
    if fraction_goal is not None and score is not None:
        goals.append(at.mean() >= fraction_goal - 1e-9)
    out["met"] = bool(all(goals)) if goals else None
    return out


def key_of(cell: dict) -> str:
    return "|".join([cell["preset"], cell["kernels"], f"seeds={cell['seed']}..{cell['seed'] + cell['seeds'] - 1}",
                     f"steps={cell['total_steps']}", *cell["overrides"]])


def table(cells: list[dict]) -> str:
    lines = ["| preset | kernels | seeds | env steps | mean | median | min | at target | IQM [95% CI] | met |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for c in cells:
        s = c["stats"]
        name = c["preset"] + ("".join(f" `{o}`" for o in c["overrides"]))
        at = f"{s['seeds_at_target']}/{c['seeds']} (≥ {s['target_score']:g})" if "target_score" in s else "–"
        met = {True: "yes", False: "**no**", None: "–"}[s["met"]]
        lines.append(f"| {name} | {c['kernels']} | {c['seed']}–{c['seed'] + c['seeds'] - 1} | {c['total_steps']:,} | "
                     f"{s['mean']:.1f} | {s['median']:.1f} | {s['min']:.1f} | {at} | "
                     f"{s['iqm']:.1f} [{s['iqm_low']:.1f}, {s['iqm_high']:.1f}] | {met} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=DEFAULT, help=f"configs/<name>.yaml (default: {' '.join(DEFAULT)})")
    p.add_argument("--kernels", default="xla,cpu", help="comma-separated kernel paths")
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes per seed")
    p.add_argument("--steps", type=int, default=None, help="env steps per seed (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every cell")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS_presets.json"))
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args()

    out = Path(args.out)
    if args.table:
        results = json.loads(out.read_text()) if out.exists() else {"cells": {}}
        print(table(list(results["cells"].values())))
        return
    for name in args.preset:
        if not (REPO / "configs" / f"{name}.yaml").exists():
            valid = ", ".join(sorted(f.stem for f in (REPO / "configs").glob("*.yaml")))
            p.error(f"no preset configs/{name}.yaml (valid: {valid})")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not kernels or any(k not in ("xla", "cpu") for k in kernels):
        p.error(f"--kernels takes xla and/or cpu, got {args.kernels!r}")

    from bench_td3 import machine

    for name in args.preset:
        for k in kernels:
            summary = run_cell(name, k, args.seeds, args.seed, args.episodes, args.steps, args.set)
            cell = {"preset": name, "kernels": k, "seeds": args.seeds, "seed": args.seed,
                    "total_steps": summary["total_steps"], "episodes": args.episodes, "overrides": list(args.set),
                    "compile_s": summary["compile_s"], "train_s": summary["train_s"],
                    "process_wall_s": summary["process_wall_s"], "eval_seed": summary["eval_seed"],
                    "stats": describe(name, summary), "machine": machine(),
                    "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
            # re-read before writing: cells from other bench_presets processes since this one started stay
            results = json.loads(out.read_text()) if out.exists() else {"cells": {}}
            results["cells"][key_of(cell)] = cell
            tmp = out.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n")
            os.replace(tmp, out)
            s = cell["stats"]
            print(f"{name} kernels={k}: mean {s['mean']:.1f} min {s['min']:.1f} "
                  f"at target {s.get('seeds_at_target', '-')}/{args.seeds} met={s['met']} "
                  f"({cell['process_wall_s']} s)", flush=True)
    print(table([results["cells"][key] for key in results["cells"]]))


if __name__ == "__main__":
    main()
