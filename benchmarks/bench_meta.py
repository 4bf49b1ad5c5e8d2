"""TD3 on Pendulum-v1 with and without meta-gradient hyperparameter adaptation.

Seeds run in one program via `jax.vmap`. Prints one JSON object: per variant,
the final evaluation return per seed, the episode return and the meta-learned
hyperparameters after every chunk, compile time and env-steps/s (summed over
seeds, timed over the chunks after `learning_starts`, compile excluded), and
the relative slowdown of the meta variant.

    python benchmarks/bench_meta.py                         # small, about a minute
    python benchmarks/bench_meta.py --seeds 8 --steps 50000 # the full comparison
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from angle_jax import registry, xla_cpu
from angle_jax.algos import td3
from angle_jax.core.axes import seed_axes
from angle_jax.meta import MetaConfig, build_meta_learner
from angle_jax.training.off_policy import OffPolicyLoop, make_train


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=6000, help="env steps per seed")
    p.add_argument("--chunk", type=int, default=1000, help="env steps per compiled chunk")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="width of the two hidden layers")
    p.add_argument("--interval", type=int, default=10)
    p.add_argument("--params", default="gamma,critic_lr")
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--gamma-bounds", default="0.9,0.999")
    p.add_argument("--eval-envs", type=int, default=5)
    p.add_argument("--variants", default="baseline,meta")
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--plot", help="write a PNG of the meta-learned hyperparameters over env steps (needs matplotlib)")
    return p.parse_args()


def _rounded(x, digits: int) -> list:
    """Per-seed values as plain floats (NaN as null) for JSON."""
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.asarray(x, np.float64).ravel()]


def run_variant(name: str, args, env, eval_env, cfg) -> dict:
    kernels = xla_cpu.select("auto", jax.default_backend())
    algo = td3.make(cfg, env.spec, kernels=kernels)
    meta = None
    if name == "meta":
        low, high = (float(x) for x in args.gamma_bounds.split(","))
        meta_config = MetaConfig(kind="meta_gradient", interval=args.interval, params=tuple(args.params.split(",")),
                                 meta_lr=args.meta_lr, bounds={"gamma": [low, high]})
        meta = build_meta_learner(meta_config, (), algo, td3.SPEC, env.spec)
        meta = meta._replace(update=kernels.bind(meta.update))
    loop = OffPolicyLoop(num_envs=1, capacity_per_env=max(args.steps, 1), batch_size=args.batch_size,
                         learning_starts_iters=args.learning_starts, train_frequency=1, gradient_steps=1)
    train = make_train(algo, env, loop, eval_env=eval_env, meta=meta)

    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    axes = seed_axes(jax.eval_shape(train.init, keys[0]))
    init = jax.jit(jax.vmap(train.init, out_axes=axes))
    run = jax.jit(jax.vmap(lambda c: train.run(c, args.chunk), in_axes=(axes,), out_axes=(axes, 0)))
    evaluate = jax.jit(jax.vmap(train.evaluate, in_axes=(axes.agent, 0)))

    t0 = time.perf_counter()
    carry = init(keys)
    with kernels.lowering():
        compiled = run.lower(carry).compile(kernels.loop_options())  # compiled as the Trainer compiles its chunks
    compile_s = time.perf_counter() - t0

    chunks, timed_s, timed_steps = [], 0.0, 0
    for i in range(args.steps // args.chunk):
        t = time.perf_counter()
        carry, logs = compiled(carry)
        jax.block_until_ready(carry)
        dt = time.perf_counter() - t
        if i * args.chunk >= args.learning_starts:
            timed_s += dt
            timed_steps += args.chunk * args.seeds
        row = {"env_steps": (i + 1) * args.chunk,
               "episode_return": _rounded(logs["episode_return_mean"], 1)}
        for key in sorted(logs):
            if key.startswith("meta/"):
                row[key] = _rounded(logs[key], 6)
        chunks.append(row)

    returns = evaluate(carry.agent, jax.random.split(jax.random.PRNGKey(1), args.seeds))
    final = np.asarray(returns).mean(axis=-1)
    hparams = {n: _rounded(getattr(carry.agent.hparams, n), 6) for n in args.params.split(",")}
    return {
        "compile_s": round(compile_s, 2),
        "steps_per_s": round(timed_steps / timed_s, 1) if timed_s > 0 else None,
        "final_eval_return_per_seed": _rounded(final, 1),
        "final_eval_return_mean": round(float(final.mean()), 1),
        "final_hparams": hparams,
        "chunks": chunks,
    }


def main():
    args = parse_args()
    env = registry.make_env(args.env, 1)
    eval_env = registry.make_env(args.env, args.eval_envs)
    cfg = td3.Config(actor_hidden=(args.hidden,) * 2, critic_hidden=(args.hidden,) * 2)
    out = {"env": args.env, "algo": "td3", "seeds": args.seeds, "steps": args.steps, "chunk": args.chunk,
           "interval": args.interval, "params": args.params.split(","), "meta_lr": args.meta_lr,
           "backend": jax.default_backend(), "variants": {}}
    for name in args.variants.split(","):
        out["variants"][name] = run_variant(name, args, env, eval_env, cfg)
    v = out["variants"]
    if "baseline" in v and "meta" in v and v["baseline"]["steps_per_s"] and v["meta"]["steps_per_s"]:
        out["meta_slowdown"] = round(1.0 - v["meta"]["steps_per_s"] / v["baseline"]["steps_per_s"], 3)
    print(json.dumps(out))
    if args.plot and "meta" in v:
        plot_hparams(v["meta"]["chunks"], args.plot, f"TD3 {args.env}, {args.seeds} seeds, interval {args.interval}")


def plot_hparams(chunks: list, path: str, title: str) -> None:
    """One panel per meta-learned hyperparameter: every seed (thin) and their mean (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(k for k in chunks[0] if k.startswith("meta/") and not k.startswith("meta/meta"))
    names = [n for n in names if any(c.get(n) and c[n][0] is not None for c in chunks)]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    steps = [c["env_steps"] for c in chunks]
    for ax, name in zip(axes[0], names):
        values = np.array([[np.nan if x is None else x for x in c[name]] for c in chunks], np.float64)
        ax.plot(steps, values, lw=0.6, alpha=0.5)
        ax.plot(steps, np.nanmean(values, axis=1), lw=2.0, color="black", label="mean")
        ax.set_xlabel("env steps")
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
