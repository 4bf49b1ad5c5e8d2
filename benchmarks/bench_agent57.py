"""Agent57: hard-exploration targets, the bandit's choices, and what the intrinsic reward costs.

    python benchmarks/bench_agent57.py mountaincar   # MountainCar-v0: Agent57 vs R2D2 (no intrinsic reward), 5 seeds x 1M
    python benchmarks/bench_agent57.py deepsea       # DeepSea-bsuite size 20: Agent57 vs ε-greedy DQN, 5 seeds x 10,000 episodes
    python benchmarks/bench_agent57.py plot RUN_DIR  # arm choices and intrinsic vs extrinsic return of a run (PNG)
    python benchmarks/bench_agent57.py speed         # steps/s of Agent57 and R2D2 at the same sizes; the cost split

`mountaincar` and `deepsea` run train.py (the user's command) into runs/bench_agent57/ and print one
JSON object per arm. Success is judged on the greedy evaluations of the exploit arm (β = 0, γ_max),
run every `--eval-interval` env steps: MountainCar is reached when an evaluation's mean return is
above −200 (the flag within 200 steps), DeepSea's treasure when it is above 0.5 (+1 at the bottom
right, minus at most 0.01 of move costs). A greedy policy from an untrained network can reach
MountainCar's flag in some episodes by chance (a smoke run's evaluation before any update did), so
the share of the final evaluation's episodes that succeed is printed too. `--steps` and `--seeds`
shrink both for a smoke run (steps/s then include the warm-up's random acting).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
OUT = REPO / "runs" / "bench_agent57"

from bench_recurrent import call_us, loop_speed, train  # noqa: E402


def first_success(logs: list[dict], summary: dict, threshold: float) -> list[int | None]:
    """Per seed, the first env step at which a greedy evaluation's mean return exceeded `threshold`."""
    evals = [(row["step"], row["eval_return_per_seed"]) for row in logs if "eval_return_per_seed" in row]
    evals.append((summary["total_steps"], summary["final_eval_return_per_seed"]))
    seeds = len(summary["final_eval_return_per_seed"])
    first: list[int | None] = [None] * seeds
    for step, per_seed in evals:
        for s in range(seeds):
            if first[s] is None and per_seed[s] > threshold:
                first[s] = int(step)
    return first


def report(bench: str, arm: str, summary: dict, logs: list[dict], threshold: float, extra: dict) -> None:
    first = first_success(logs, summary, threshold)
    seen = [[row["per_seed"]["episode_return_max"][s] for row in logs if "per_seed" in row] for s in range(len(first))]
    train_max = [max((x for x in xs if x is not None), default=float("nan")) for xs in seen]
    print(json.dumps({"bench": bench, "arm": arm, **extra, "seeds": len(first),
                      "seeds_solved_by_greedy_eval": sum(f is not None for f in first), "first_solved_step": first,
                      "final_greedy_eval_per_seed": [round(x, 3) for x in summary["final_eval_return_per_seed"]],
                      # the share of the final evaluation's episodes past the threshold: an untrained network's
                      # greedy policy can reach MountainCar's flag in some episodes by chance
                      "final_eval_episode_success_per_seed": [round(float(np.mean(np.asarray(r) > threshold)), 2)
                                                              for r in summary["final_eval_returns"]],
                      "best_training_episode_per_seed": [round(x, 3) for x in train_max],
                      "compile_s": summary["compile_s"], "steps_per_s": summary["steps_per_s"],
                      "process_s": summary["process_s"], "run_dir": str(OUT / f"{bench}_{arm}")}), flush=True)


# the R2D2 arm takes Agent57's preset sizes (network, sequences, replay, learning rate, ε ladder)
R2D2_FROM_PRESET = ["hidden", "core", "core_size", "head_hidden", "burn_in", "unroll", "n_step", "period",
                    "learning_rate", "adam_eps", "max_grad_norm", "target_update_interval", "epsilon",
                    "epsilon_alpha"]


def preset(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "configs" / name).read_text())


def r2d2_args(preset_file: str) -> list[str]:
    """`--config` of an R2D2 run at an Agent57 preset's sizes, γ = its γ_max (written to OUT)."""
    import yaml

    cfg = preset(preset_file)
    agent = {k: v for k, v in cfg["agent"].items() if k in R2D2_FROM_PRESET}
    agent["gamma"] = cfg["agent"]["gamma_max"]
    run_keys = {k: v for k, v in cfg.items() if k not in ("agent", "algo")}
    path = OUT / f"r2d2_{preset_file}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"algo": "r2d2", **run_keys, "agent": agent}, sort_keys=False))
    return ["--config", str(path)]


def mountaincar(args) -> None:
    common = ["--seeds", str(args.seeds), "--total-steps", str(args.steps),
              "--set", f"eval_interval={args.eval_interval}", "--set", f"log_interval={args.eval_interval}"]
    arms = {"agent57": ["--algo", "agent57", "--env", "MountainCar-v0"],
            "r2d2": r2d2_args("agent57_mountaincar.yaml")}
    for arm in args.arms:
        summary, logs = train(f"mountaincar_{arm}", arms[arm] + common, OUT)
        report("mountaincar", arm, summary, logs, -200.0, {"steps": args.steps})


def deepsea(args) -> None:
    size = args.size
    episodes = args.steps // size
    common = ["--seeds", str(args.seeds), "--total-steps", str(args.steps), "--set", f"env_kwargs.size={size}",
              "--set", f"eval_interval={args.eval_interval}", "--set", f"log_interval={args.eval_interval}"]
    dqn = ["--algo", "dqn", "--env", "DeepSea-bsuite", "--no-preset", "--set", "num_envs=16",
           "--set", "buffer_size=100000", "--set", "learning_starts=3200", "--set", "batch_size=32",
           "--set", "agent.hidden=[64,64]", "--set", "agent.epsilon_decay_steps=50000", "--set", "agent.gamma=0.997"]
    arms = {"agent57": ["--algo", "agent57", "--env", "DeepSea-bsuite"], "dqn": dqn}
    for arm in args.arms:
        summary, logs = train(f"deepsea_{arm}", arms[arm] + common, OUT)
        report("deepsea", arm, summary, logs, 0.5, {"size": size, "steps": args.steps, "episodes": episodes})


def plot(args) -> None:
    """policy_share_j (the share of envs running policy j) per log chunk, and the last finished episodes'
    extrinsic and intrinsic returns, from a run's metrics.jsonl, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(args.run_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("policy_share_0") is not None]   # warm-up chunks have no updates
    if not rows:
        raise SystemExit(f"{run}/metrics.jsonl has no agent57 learning rows")
    steps = np.array([r["step"] for r in rows])
    n = sum(1 for k in rows[0] if k.startswith("policy_share_"))
    shares = np.array([[r[f"policy_share_{j}"] for j in range(n)] for r in rows])
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    a.stackplot(steps, shares.T, labels=[f"j={j}" for j in range(n)])
    a.set_ylabel("share of envs on policy j")
    a.set_title(f"{run.name}: the bandits' choices (j=0: exploit, β=0)")
    a.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    b.plot(steps, [r["last_episode_return"] for r in rows], label="extrinsic", marker=".")
    b2 = b.twinx()
    b2.plot(steps, [r["last_episode_intrinsic_return"] for r in rows], color="tab:orange", label="intrinsic", marker=".")
    b.set_xlabel("env steps")
    b.set_ylabel("extrinsic return (last episodes)")
    b2.set_ylabel("intrinsic return (last episodes)", color="tab:orange")
    fig.tight_layout()
    out = Path(args.out) if args.out else REPO / "benchmarks" / f"agent57_{run.name}.png"
    fig.savefig(out, dpi=100)
    print(json.dumps({"bench": "plot", "run": str(run), "png": str(out), "chunks": len(rows)}))


def speed(args) -> None:
    """Env steps/s of the whole loop for Agent57 and R2D2 at the same sizes (the MountainCar preset's
    network, sequences, batch and envs), after compiling; and Agent57's parts jitted alone: acting,
    the observe hook (embedding, episodic lookup, RND), the episodic lookup alone, the replay add (standalone:
    it copies the store, which the loop updates in place), the update, and R2D2's update on the same
    sequences. Shares are of one loop iteration as the whole loop ran it."""
    import jax
    import jax.numpy as jnp

    from angle_jax import registry
    from angle_jax.algos import agent57
    from angle_jax.config import load_config
    from angle_jax.core.types import SequenceStep
    from angle_jax.episodic import novelty
    from angle_jax.training.build import loop_from_config
    from angle_jax.xla_cpu import select

    kernels = select("auto", jax.default_backend())
    base = [f"total_steps={args.loop_steps}", "learning_starts=0", "log_interval=1000000"]
    a57 = load_config(REPO / "configs" / "agent57_mountaincar.yaml", base)
    r2d2_file = Path(r2d2_args("agent57_mountaincar.yaml")[1])
    r2d2 = load_config(r2d2_file, base)

    loop_sps = {}
    for name, config in (("agent57", a57), ("r2d2", r2d2)):
        sps, compile_s = loop_speed(config, 1, kernels, args.repeats)
        loop_sps[name] = sps
        print(json.dumps({"bench": "speed", "algo": name, "env": config.env, "num_envs": config.num_envs,
                          "batch": config.batch_size, "steps_timed": config.total_steps,
                          "steps_per_s": round(sps), "compile_s": round(compile_s, 1)}), flush=True)

    cfg = a57.agent
    n = a57.num_envs
    env = registry.make_env(a57.env, n)
    algo = agent57.make(cfg, env.spec, kernels=kernels)
    state = jax.jit(algo.init)(jax.random.PRNGKey(0))
    obs, _ = env.reset(jax.random.PRNGKey(1))
    core = algo.memory.initial(n)
    reset = jnp.ones(n, jnp.bool_)
    flag = jnp.zeros(n, jnp.bool_)
    step = SequenceStep(obs, jnp.zeros(n, jnp.int32), jnp.zeros(n), flag, flag, reset, core)
    observe = jax.jit(algo.observe)
    for i in range(cfg.memory_size):  # a full memory per env, as at an episode's end
        state, _ = observe(state, step.replace(obs=obs + 0.01 * i), obs + 0.01 * (i + 1), jax.random.PRNGKey(i))
    buffer = algo.make_buffer(loop_from_config(a57))
    example = jax.eval_shape(algo.observe, state, step, obs, jax.random.PRNGKey(0))[1]
    buf = buffer.init(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example))
    add = jax.jit(buffer.add)
    _, item = observe(state, step, obs, jax.random.PRNGKey(0))
    for _ in range(cfg.sequence_length + cfg.period):
        buf = add(buf, item)
    batch = buffer.sample(buf, jax.random.PRNGKey(2))
    emb = jax.random.normal(jax.random.PRNGKey(3), (n, cfg.embed_dim))

    timed = functools.partial(call_us, calls=args.calls)
    parts = {
        "act_us": timed(lambda s, o, c, r, k: algo.explore(s, o, c, r, k), state, obs, core, reset,
                        jax.random.PRNGKey(4)),
        "observe_us": timed(algo.observe, state, step, obs, jax.random.PRNGKey(5)),
        "episodic_lookup_us": timed(lambda m, e: novelty.episodic_reward(m, e, cfg.episodic_k), state.memory, emb),
        "replay_add_us": timed(buffer.add, buf, item),
        "update_us": timed(algo.update, state, batch, jax.random.PRNGKey(6)),
    }
    r2d2_algo = registry.algo_spec("r2d2").make(r2d2.agent, env.spec, kernels=kernels)
    # the same sequences (an Agent57Batch is a SequenceBatch; R2D2 reads the fields they share)
    parts["r2d2_update_us"] = timed(r2d2_algo.update, jax.jit(r2d2_algo.init)(jax.random.PRNGKey(0)), batch,
                                    jax.random.PRNGKey(6))
    # one loop iteration (num_envs env steps, one update) as the whole loop ran it
    iteration_us = 1e6 * n / loop_sps["agent57"]
    memory_bytes = cfg.memory_size * cfg.embed_dim * 4 + 3 * 4   # embeddings, count, d²_m and its count
    print(json.dumps({"bench": "agent57_cost_split", "num_envs": n, "batch": a57.batch_size,
                      "sequence": cfg.sequence_length, "memory_size": cfg.memory_size, "embed_dim": cfg.embed_dim,
                      **{k: round(v, 1) for k, v in parts.items()},
                      "loop_iteration_us": round(iteration_us, 1),
                      "episodic_lookup_share_of_iteration": round(parts["episodic_lookup_us"] / iteration_us, 4),
                      "observe_share_of_iteration": round(parts["observe_us"] / iteration_us, 4),
                      "episodic_memory_bytes_per_env": memory_bytes}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mountaincar")
    m.add_argument("--seeds", type=int, default=5)
    m.add_argument("--steps", type=int, default=1_000_000)
    m.add_argument("--eval-interval", type=int, default=50_000)
    m.add_argument("--arms", nargs="+", default=["agent57", "r2d2"], choices=["agent57", "r2d2"])
    m.set_defaults(fn=mountaincar)
    d = sub.add_parser("deepsea")
    d.add_argument("--seeds", type=int, default=5)
    d.add_argument("--size", type=int, default=20)
    d.add_argument("--steps", type=int, default=200_000, help="env steps (10,000 episodes at size 20)")
    d.add_argument("--eval-interval", type=int, default=20_000)
    d.add_argument("--arms", nargs="+", default=["agent57", "dqn"], choices=["agent57", "dqn"])
    d.set_defaults(fn=deepsea)
    p = sub.add_parser("plot")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=plot)
    s = sub.add_parser("speed")
    s.add_argument("--loop-steps", type=int, default=8_000, help="env steps of each loop timed")
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--calls", type=int, default=100)
    s.set_defaults(fn=speed)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
