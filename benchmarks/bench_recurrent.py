"""Recurrent agents: learning on partially observed envs, and what memory costs in speed.

    python benchmarks/bench_recurrent.py ppo              # CartPoleNoVel-v1: recurrent vs feed-forward PPO
    python benchmarks/bench_recurrent.py memory-chain     # MemoryChain-bsuite: R2D2 vs feed-forward DQN
    python benchmarks/bench_recurrent.py speed            # steps/s and R2D2's cost split

`ppo` and `memory-chain` run train.py (the user's command) into runs/bench_recurrent/ and print one
JSON object per arm. Success on MemoryChain is the share of episodes answered right (return +1)
among each seed's last 1,000 training episodes, read from the last log chunk (sized to hold them).
"""
from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "runs" / "bench_recurrent"


def train(name: str, args: list[str], out: Path = OUT) -> tuple[dict, list[dict]]:
    """Run train.py into out/name (fresh); its summary and its log chunks."""
    run_dir = out / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = [sys.executable, str(REPO / "train.py"), *args, "--set", "progress=false", "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["process_s"] = round(time.perf_counter() - t0, 1)
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return summary, logs


def ppo(args) -> None:
    """Recurrent PPO (the preset), the same PPO without a core, and the preset without its observation /
    reward normalisation; 8 seeds x 300k steps each."""
    common = ["--algo", "ppo", "--env", "CartPoleNoVel-v1", "--seeds", str(args.seeds),
              "--total-steps", str(args.steps), "--set", "eval_episodes=100"]
    arms = {"lstm": [], "feed_forward": ["--set", "agent.core=none", "--set", "agent.hidden=[64,64]"],
            "lstm_unnormalised": ["--set", "agent.normalize_obs=false", "--set", "agent.normalize_reward=false"]}
    for arm in args.arms:
        extra = arms[arm]
        summary, logs = train(f"ppo_{arm}", common + extra)
        per_seed = summary["final_eval_return_per_seed"]
        print(json.dumps({"bench": "ppo_cartpole_novel", "arm": arm, "seeds": args.seeds, "steps": args.steps,
                          "eval_mean": round(float(np.mean(per_seed)), 1),
                          "eval_per_seed": [round(x, 1) for x in per_seed],
                          "seeds_at_475": int(sum(x >= 475 for x in per_seed)),
                          "compile_s": summary["compile_s"], "steps_per_s": summary["steps_per_s"]}), flush=True)


def memory_chain(args) -> None:
    """R2D2 (the preset, sequences sized to the episode) and DQN at memory lengths 10 and 30."""
    for length in args.lengths:
        episode = length + 1
        steps = episode * args.episodes
        chunk = episode * 1000  # env steps of 1,000 episodes: the last log chunk holds each seed's last 1,000
        common = ["--env", "MemoryChain-bsuite", "--seeds", str(args.seeds), "--total-steps", str(steps),
                  "--set", f"env_kwargs.memory_length={length}", "--set", f"log_interval={chunk}",
                  "--set", "num_envs=8", "--set", "eval_episodes=100"]
        unroll = 2 * episode + 2
        r2d2 = ["--algo", "r2d2", "--set", f"agent.unroll={unroll}", "--set", f"agent.period={episode + 1}"]
        dqn = ["--algo", "dqn", "--set", "buffer_size=50000", "--set", "learning_starts=2000",
               "--set", "agent.epsilon_decay_steps=20000", "--set", "gradient_steps=1"]
        for arm, extra in (("r2d2", r2d2), ("dqn", dqn)):
            summary, logs = train(f"memory_chain_{length}_{arm}", common + extra)
            last = logs[-1] if logs[-1].get("episodes", 0) >= 900 * args.seeds else logs[-2]
            returns = np.asarray(last["per_seed"]["episode_return_mean"], np.float64)
            episodes = last["per_seed"]["episodes"]
            success = (returns + 1.0) / 2.0
            print(json.dumps({"bench": "memory_chain", "memory_length": length, "arm": arm, "seeds": args.seeds,
                              "steps": steps, "episodes_per_seed": args.episodes,
                              "last_chunk_episodes_per_seed": episodes,
                              "success_last_1000": [round(float(s), 3) for s in success],
                              "success_mean": round(float(success.mean()), 3),
                              "greedy_eval_per_seed": summary["final_eval_return_per_seed"],
                              "compile_s": summary["compile_s"], "steps_per_s": summary["steps_per_s"],
                              "process_s": summary["process_s"]}), flush=True)


def loop_speed(config, seeds: int, kernels, repeats: int) -> tuple[float, float]:
    """Env steps/s of `config`'s whole training loop over `seeds` runs (best of `repeats`), and its
    compile time in seconds."""
    import jax

    from angle_jax import registry
    from angle_jax.core.axes import seed_axes
    from angle_jax.training.build import build_train
    from angle_jax.training.programs import map_runs

    env = registry.make_env(config.env, config.num_envs, **config.env_kwargs)
    _, tr = build_train(config, registry.algo_spec(config.algo), env, None, kernels)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    axes = seed_axes(jax.eval_shape(tr.init, keys[0]))
    iters = tr.loop.num_iterations if hasattr(tr.loop, "num_iterations") else config.total_steps // config.num_envs
    # runs built one after another, as the Trainer does (vmapped orthogonal initialisers become
    # batched LAPACK QRs, which can hang XLA:CPU's thread pool)
    init = jax.jit(lambda k: map_runs(tr.init, axes, k)) if seeds > 1 else jax.jit(tr.init)
    if seeds > 1:
        run = jax.jit(jax.vmap(lambda c: tr.run(c, iters), in_axes=(axes,), out_axes=(axes, 0)))
    else:
        run = jax.jit(lambda c: tr.run(c, iters))
    carry = init(keys if seeds > 1 else keys[0])
    t0 = time.perf_counter()
    with kernels.lowering():
        compiled = run.lower(carry).compile(kernels.loop_options())
    compile_s = time.perf_counter() - t0
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = compiled(carry)
        jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return iters * tr.steps_per_iteration * seeds / best, compile_s


def call_us(fn, *a, calls: int) -> float:
    """Microseconds per call of `fn(*a)` jitted, over `calls` calls after a warm-up."""
    import jax

    f = jax.jit(fn)
    jax.block_until_ready(f(*a))
    t0 = time.perf_counter()
    for _ in range(calls):
        out = f(*a)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls * 1e6


def speed(args) -> None:
    """Env steps/s of recurrent and feed-forward PPO at the same sizes (CartPole-v1, 1 and 8 seeds),
    and R2D2's time per learner step split into acting, replay add/sample, burn-in and update."""
    import jax
    import jax.numpy as jnp

    from angle_jax import registry
    from angle_jax.algos import r2d2
    from angle_jax.config import load_config
    from angle_jax.core.types import SequenceStep
    from angle_jax.networks.recurrent import burn_in
    from angle_jax.training.build import loop_from_config
    from angle_jax.xla_cpu import select

    kernels = select("auto", jax.default_backend())

    rows = {}
    for core in ("none", "lstm", "gru") if "ppo" in args.parts else ():
        overrides = [f"agent.core={core}", "agent.hidden=[64]", "num_envs=8", "total_steps=65536",
                     "agent.rollout_length=128", "agent.minibatches=4", "agent.epochs=4"]
        config = load_config(None, ["algo=ppo", "env=CartPole-v1", *overrides])
        for seeds in (1, 8):
            sps, compile_s = loop_speed(config, seeds, kernels, args.repeats)
            rows[f"ppo_{core}_{seeds}"] = {"steps_per_s": round(sps), "compile_s": round(compile_s, 2)}
            print(json.dumps({"bench": "speed", "algo": "ppo", "core": core, "seeds": seeds, **rows[f"ppo_{core}_{seeds}"]}),
                  flush=True)
    config = load_config(None, ["algo=r2d2", "env=MemoryChain-bsuite", "env_kwargs.memory_length=10",
                                f"total_steps={args.r2d2_steps}", "learning_starts=400", "batch_size=32", "num_envs=8", "buffer_size=48000",
                                "agent.burn_in=4", "agent.unroll=24", "agent.n_step=1", "agent.period=12"])
    for seeds in (1, 8) if "r2d2" in args.parts else ():
        sps, compile_s = loop_speed(config, seeds, kernels, args.repeats)
        print(json.dumps({"bench": "speed", "algo": "r2d2", "seeds": seeds, "steps_per_s": round(sps),
                          "compile_s": round(compile_s, 2)}), flush=True)

    if "split" not in args.parts:
        return
    # R2D2's parts, each jitted alone at the preset's sizes (batch 32), best of many calls
    env = registry.make_env("MemoryChain-bsuite", 8, memory_length=10)
    agent_config = config.agent
    algo = r2d2.make(agent_config, env.spec, kernels=kernels)
    buffer = algo.make_buffer(loop_from_config(config))
    state = algo.init(jax.random.PRNGKey(0))
    obs, _ = env.reset(jax.random.PRNGKey(1))
    core = algo.memory.initial(8)
    reset = jnp.ones(8, jnp.bool_)
    item = SequenceStep(obs, jnp.zeros(8, jnp.int32), jnp.zeros(8), reset, reset, reset, core)
    buf = buffer.init(item)
    for i in range(200):
        buf = jax.jit(buffer.add)(buf, item.replace(reward=jnp.full((8,), float(i))))
    batch = buffer.sample(buf, jax.random.PRNGKey(2))
    net = r2d2.network(agent_config, env.spec)
    timed = functools.partial(call_us, calls=args.calls)
    head = slice(0, agent_config.burn_in)
    parts = {
        "act_us": timed(lambda s, o, c, r, k: algo.explore(s, o, c, r, k), state, obs, core, reset,
                        jax.random.PRNGKey(3)),
        "replay_add_us": timed(buffer.add, buf, item),
        "replay_sample_us": timed(buffer.sample, buf, jax.random.PRNGKey(4)),
        "burn_in_us": timed(lambda p, b: burn_in(net, p, b.obs[head], b.core, b.reset[head]), state.params, batch),
        "update_us": timed(algo.update, state, batch, jax.random.PRNGKey(5)),
    }
    print(json.dumps({"bench": "r2d2_cost_split", "batch": config.batch_size, "sequence": agent_config.sequence_length,
                      "burn_in": agent_config.burn_in, **{k: round(v, 1) for k, v in parts.items()}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ppo")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--arms", nargs="+", default=["lstm", "feed_forward", "lstm_unnormalised"],
                   choices=["lstm", "feed_forward", "lstm_unnormalised"])
    p.set_defaults(fn=ppo)
    m = sub.add_parser("memory-chain")
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--episodes", type=int, default=10_000)
    m.add_argument("--lengths", type=int, nargs="+", default=[10, 30])
    m.set_defaults(fn=memory_chain)
    s = sub.add_parser("speed")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--calls", type=int, default=200)
    s.add_argument("--r2d2-steps", type=int, default=4000, help="env steps of each R2D2 loop timed")
    s.add_argument("--parts", nargs="+", default=["ppo", "r2d2", "split"], choices=["ppo", "r2d2", "split"])
    s.set_defaults(fn=speed)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
