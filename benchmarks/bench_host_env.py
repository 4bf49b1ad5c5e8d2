"""Host-env adapter (gym: / retro: envs) throughput, side by side in one process.

overhead: gym:CartPole-v1 with N envs, env-steps/s of
  - Gymnasium's own vector env stepped with random actions in a Python loop (the reference),
  - the adapter inside a compiled lax.scan with random actions (learner doing no work),
  - the alternative route: the envs stepped on the host between compiled calls (a Python loop
    calling a jitted policy and the vector env each step),
  - the adapter with PPO learning (the Trainer's compiled chunks, compile excluded).
retro: Airstriker, N envs: the async vector env alone (emulation) and PPO through the adapter,
  and the split between them.
lunarlander: `train.py --config configs/ppo_lunarlander.yaml --seed S` for each seed (host envs train one
  seed per process; `--parallel` processes at a time), each seed's final greedy return and curve.

Prints one JSON object. Env-steps are agent steps summed over envs.
Usage: python benchmarks/bench_host_env.py overhead [--num-envs 8] [--steps 2000] [--repeats 3]
       python benchmarks/bench_host_env.py retro [--num-envs 8] [--steps 4096]
       python benchmarks/bench_host_env.py lunarlander [--seeds 4] [--parallel 2] [--eval-episodes 20] [--set KEY=VALUE]
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def vector_env(env_id, n, mode):
    """Gymnasium's own vector env of `env_id` (async: spawned workers, as the adapter's)."""
    import functools

    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    if mode == "sync":
        return gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n)],
                                        autoreset_mode=AutoresetMode.SAME_STEP)
    fns = [functools.partial(gym.make, env_id)] * n
    return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context="spawn")


def bench_gym_loop(env_id, n, steps, mode="sync") -> float:
    """Gymnasium's vector env, random actions drawn beforehand, stepped in a Python loop."""
    venv = vector_env(env_id, n, mode)
    venv.reset(seed=0)
    acts = np.random.default_rng(0).integers(0, venv.single_action_space.n, (steps, n))
    for a in acts[:20]:
        venv.step(a)
    t0 = time.perf_counter()
    for a in acts:
        venv.step(a)
    dt = time.perf_counter() - t0
    venv.close()
    return steps * n / dt


def bench_adapter_scan(name, n, steps, **env_kwargs) -> float:
    """The adapter inside one jit(lax.scan), random actions, nothing learned."""
    from angle_jax import registry
    from angle_jax.envs.base import random_actions

    env = registry.make_env(name, n, **env_kwargs)

    @jax.jit
    def run(key):
        obs, state = env.reset(key)

        def body(c, k):
            state, total = c
            state, ts = env.step(state, random_actions(env.spec, k), k)
            return (state, total + ts.reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, 0.0), jax.random.split(key, steps))
        return total

    jax.block_until_ready(run(jax.random.PRNGKey(0)))  # compile + warm up
    t0 = time.perf_counter()
    jax.block_until_ready(run(jax.random.PRNGKey(1)))
    dt = time.perf_counter() - t0
    env.unwrapped.close()
    return steps * n / dt


def bench_host_loop(env_id, n, steps) -> float:
    """The other route: a jitted policy called per step, the vector env stepped in Python between calls."""
    import flax.linen as nn

    venv = vector_env(env_id, n, "sync")
    obs, _ = venv.reset(seed=0)
    net = nn.Dense(venv.single_action_space.n)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))

    @jax.jit
    def act(params, obs, key):
        return jax.random.categorical(key, net.apply(params, obs))

    key = jax.random.PRNGKey(0)
    np.asarray(act(params, obs, key))
    t0 = time.perf_counter()
    for _ in range(steps):
        key, k = jax.random.split(key)
        obs, *_ = venv.step(np.asarray(act(params, obs, k)))
    dt = time.perf_counter() - t0
    venv.close()
    return steps * n / dt


def bench_ppo(name, n, total_steps, config=None, overrides=()) -> dict:
    """Trainer throughput (compile excluded): env-steps/s over the chunks after the first."""
    from angle_jax import config as C
    from angle_jax.training.trainer import Trainer

    sets = [f"num_envs={n}", f"total_steps={total_steps}", "progress=false", "tensorboard=false", *overrides]
    if config is None:
        cfg = C.load_config(None, sets, algo="ppo", env=name)
    else:
        cfg = C.load_config(config, sets)
    trainer = Trainer(cfg)
    rows = []
    for log in trainer():
        rows.append({"step": log["step"], "chunk_s": log["chunk_s"],
                     "episode_return_mean": log.get("episode_return_mean")})
    timed = rows[1:] or rows
    steps = sum(r["step"] - p["step"] for p, r in zip(rows, rows[1:])) if len(rows) > 1 else rows[0]["step"]
    seconds = sum(r["chunk_s"] for r in timed)
    return {"steps_per_s": steps / seconds, "compile_s": trainer.compile_s, "curve": rows}


def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import gymnasium

    out = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
           "gymnasium": gymnasium.__version__}
    try:
        import importlib.metadata as md

        out["stable_retro"] = md.version("stable-retro")
    except Exception:
        pass
    return out


def overhead(args) -> dict:
    n, steps = args.num_envs, args.steps
    res = {"machine": machine(), "env": "gym:CartPole-v1", "num_envs": n, "steps_per_env": steps}
    gym_sync, scan, host = [], [], []
    for _ in range(args.repeats):  # interleaved, so load on a shared machine hits all alike
        gym_sync.append(bench_gym_loop("CartPole-v1", n, steps))
        scan.append(bench_adapter_scan("gym:CartPole-v1", n, steps))
        host.append(bench_host_loop("CartPole-v1", n, steps))
    res["gymnasium_sync_loop"] = max(gym_sync)
    res["adapter_scan_random"] = max(scan)
    res["host_loop_jitted_policy"] = max(host)
    res["ratio_adapter_vs_gymnasium"] = res["adapter_scan_random"] / res["gymnasium_sync_loop"]
    res["ratio_host_loop_vs_gymnasium"] = res["host_loop_jitted_policy"] / res["gymnasium_sync_loop"]
    res["gymnasium_async_loop"] = bench_gym_loop("CartPole-v1", n, steps // 4, mode="async")
    res["adapter_scan_random_async"] = bench_adapter_scan("gym:CartPole-v1", n, steps // 4, vector="async")
    ppo = bench_ppo("gym:CartPole-v1", n, args.ppo_steps,
                    overrides=["log_interval=8192", "eval_episodes=2", "agent.rollout_length=128"])
    res["adapter_ppo_learning"] = ppo["steps_per_s"]
    res["ratio_ppo_vs_gymnasium"] = ppo["steps_per_s"] / res["gymnasium_sync_loop"]
    res["raw"] = {"gymnasium_sync_loop": gym_sync, "adapter_scan_random": scan, "host_loop": host}
    return res


def retro(args) -> dict:
    n = args.num_envs
    res = {"machine": machine(), "env": "retro:Airstriker-Genesis-v0", "num_envs": n}
    cfg = str(Path(__file__).resolve().parent.parent / "configs" / "ppo_retro.yaml")
    res["emulation_only_adapter_scan"] = bench_adapter_scan(
        "retro:Airstriker-Genesis-v0", n, args.steps // n,
        actions=[[], ["B"], ["LEFT"], ["RIGHT"], ["LEFT", "B"], ["RIGHT", "B"]], reward_clip=True)
    ppo = bench_ppo("retro:Airstriker-Genesis-v0", n, args.ppo_steps, config=cfg,
                    overrides=["log_interval=4096", f"eval_episodes={args.eval_episodes}"])
    res["ppo_steps_per_s"] = ppo["steps_per_s"]
    res["compile_s"] = ppo["compile_s"]
    per_step = 1 / ppo["steps_per_s"]
    emu = 1 / res["emulation_only_adapter_scan"]
    res["split_emulation_fraction"] = min(1.0, emu / per_step)
    res["split_learning_fraction"] = 1 - res["split_emulation_fraction"]
    res["curve"] = ppo["curve"]
    return res


def lunarlander(args) -> dict:
    """PPO on gym:LunarLander-v3 (the preset), one train.py process per seed, into runs/bench_host_env/."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from bench_recurrent import train  # runs train.py into a fresh run directory, returns summary and logs

    repo = Path(__file__).resolve().parent.parent
    out = repo / "runs" / "bench_host_env"
    # each variant (overrides, budget) gets its own run directories: train() empties the one it writes
    tag = "".join("_" + x.replace("agent.", "").replace("=", "-") for x in args.set)
    common = ["--config", str(repo / "configs" / "ppo_lunarlander.yaml"), "--set", f"eval_episodes={args.eval_episodes}"]
    if args.ppo_steps_total:
        tag += f"_{args.ppo_steps_total}steps"
        common += ["--total-steps", str(args.ppo_steps_total)]
    for item in args.set:
        common += ["--set", item]
    res = {"machine": machine(), "env": "gym:LunarLander-v3", "config": "configs/ppo_lunarlander.yaml",
           "eval_episodes": args.eval_episodes, "overrides": list(args.set), "per_seed": {}}
    if args.ppo_steps_total:
        res["total_steps"] = args.ppo_steps_total

    def one(seed):
        summary, logs = train(f"lunarlander{tag}_seed{seed}", common + ["--seed", str(seed)], out=out)
        return seed, summary, logs

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        jobs = [pool.submit(one, seed) for seed in range(args.seed, args.seed + args.seeds)]
        for job in as_completed(jobs):
            seed, summary, logs = job.result()
            res["per_seed"][seed] = {
                "final_eval_return": round(float(summary["final_eval_return_mean"]), 1),
                "steps_per_s": summary["steps_per_s"], "compile_s": summary["compile_s"],
                "process_s": summary["process_s"],
                "curve": [(x["step"], x.get("episode_return_mean")) for x in logs if "step" in x]}
            print(json.dumps({"seed": seed, **{k: v for k, v in res["per_seed"][seed].items() if k != "curve"}}),
                  file=sys.stderr, flush=True)
    finals = [v["final_eval_return"] for v in res["per_seed"].values()]
    res["mean"] = round(float(np.mean(finals)), 1)
    res["seeds_at_200"] = int(sum(f >= 200 for f in finals))
    return res


def main():
    from angle_jax.cli import Parser  # one-line errors, exit code 2

    p = Parser(prog="bench_host_env.py")
    p.add_argument("what", choices=["overhead", "retro", "lunarlander"])
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ppo-steps", type=int, default=65_536)
    p.add_argument("--eval-episodes", type=int, help="final evaluation episodes (default: retro 2, lunarlander 20)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--parallel", type=int, default=2, help="train.py processes at a time")
    p.add_argument("--total-steps", dest="ppo_steps_total", type=int, help="env steps per seed (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="lunarlander: extra train.py override")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    for name in ("num_envs", "steps", "repeats", "ppo_steps", "seeds", "parallel", "eval_episodes", "ppo_steps_total"):
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--total-steps" if name == "ppo_steps_total" else "--" + name.replace("_", "-")
            p.error(f"{flag} must be >= 1, got {value}")
    if args.eval_episodes is None:
        args.eval_episodes = 20 if args.what == "lunarlander" else 2
    res = {"overhead": overhead, "retro": retro, "lunarlander": lunarlander}[args.what](args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
