"""How fast can a loop get? Time the gradient update alone, without env, acting or replay.

A training step is at least one update (plus sampling, acting and the env step). Timing
`algo.update` alone on a fixed batch, compiled the way the Trainer compiles its loops, gives
a floor for the step at these settings, and so a ceiling on any speed ratio against a peer
that does the same update: peer step time / our update time.

    python benchmarks/bench_floor.py td3            # rejax's TD3 Pendulum settings
    python benchmarks/bench_floor.py sac            # rejax's SAC Pendulum settings
    python benchmarks/bench_floor.py dqn            # PureJaxRL's DQN CartPole settings
    python benchmarks/bench_floor.py ppo            # rejax's PPO CartPole settings: the update
                                                    # phase (epochs x minibatches) of one rollout

Prints one JSON object: µs per update (best of `--repeats` timed scans) and, with `--peer-steps-per-s`,
the largest ratio any loop could reach against that peer.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def settings(name: str):
    """(algo, env, config file, overrides, env steps per update) of the peers' settings."""
    if name == "td3":
        from bench_td3 import REJAX_EQUIVALENT
        return "td3", "Pendulum-v1", None, REJAX_EQUIVALENT, 1
    if name == "sac":
        from bench_sac import REJAX_EQUIVALENT
        return "sac", "Pendulum-v1", None, REJAX_EQUIVALENT, 1
    if name == "dqn":
        return "dqn", "CartPole-v1", "dqn_cartpole_purejaxrl.yaml", [], 10
    raise SystemExit(f"unknown setting {name!r}: choose td3, sac, dqn or ppo")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", choices=["td3", "sac", "dqn", "ppo"])
    parser.add_argument("--updates", type=int, default=5000, help="updates per timed scan")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-steps-per-s", type=float, default=None,
                        help="the peer's measured env steps/s at the same settings")
    args = parser.parse_args(argv)

    import jax

    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.build import build_parts
    from bench_td3 import machine

    key = jax.random.key(0)
    if args.setting == "ppo":
        algo, agent, batch, env_steps_per_update, batch_size = _ppo_rollout(key)
    else:
        algo_name, env_name, cfg_file, overrides, env_steps_per_update = settings(args.setting)
        config = load_config(CONFIG_DIR / cfg_file if cfg_file else None, overrides, algo=algo_name,
                             env=env_name, seeds=1, total_steps=10_000)
        parts = build_parts(config, jax.default_backend())
        algo, train = parts.algo, parts.train
        batch_size = config.batch_size
        with algo.kernels.lowering():
            carry = jax.jit(train.init)(key)
            # fill the replay with real transitions so the batch looks like one from training
            carry, _ = jax.jit(lambda c: train.run(c, train.loop.learning_starts_iters + 1))(carry)
            batch = jax.jit(lambda c, k: _sample(train, c, k, algo.kernels))(carry, key)
        agent = carry.agent

    with algo.kernels.lowering():

        def updates(agent, batch, k):
            def body(a, kk):
                a, metrics = algo.update(a, batch, kk)
                return a, None
            return jax.lax.scan(body, agent, jax.random.split(k, args.updates))[0]

        # the batch is an argument, not a constant XLA could fold parts of the update into
        compiled = jax.jit(updates).lower(agent, batch, key).compile(algo.kernels.loop_options())
    out = compiled(agent, batch, key)
    jax.block_until_ready(out)
    best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(agent, batch, key))
        best = min(best, time.perf_counter() - t)
    us = best / args.updates * 1e6
    result = {"bench": "update_floor", "setting": args.setting, "batch_size": batch_size,
              "us_per_update": round(us, 2), "env_steps_per_update": env_steps_per_update,
              "env_steps_per_s_ceiling": round(env_steps_per_update / (us * 1e-6), 1), "machine": machine()}
    if args.peer_steps_per_s:
        peer_us = env_steps_per_update / args.peer_steps_per_s * 1e6
        result["peer_us_per_update"] = round(peer_us, 2)
        result["max_ratio_vs_peer"] = round(peer_us / us, 2)
    print(json.dumps(result))
    return result


def _ppo_rollout(key):
    """PPO at rejax's CartPole settings, and one real rollout to update on."""
    import jax

    from angle_jax import registry, xla_cpu
    from angle_jax.algos import ppo
    from angle_jax.training import on_policy
    from angle_jax.training.reporting import EpisodeAccumulator
    from bench_ppo import PRESETS

    preset = PRESETS["rejax"]
    n = preset["num_envs"]
    config = ppo.Config(**preset["agent"])
    env = registry.make_env("CartPole-v1", n)
    algo = ppo.make(config, env.spec, total_steps=500_000, kernels=xla_cpu.select("auto", jax.default_backend()))
    agent = algo.init(key, env.spec)
    obs, env_state = env.reset(key)
    rollout = jax.jit(lambda a, s, o, k: on_policy.collect(
        algo, env, a, s, o, k, config.rollout_length, EpisodeAccumulator.zeros(), 0)[0])(agent, env_state, obs, key)
    return algo, agent, rollout, config.rollout_length * n, config.rollout_length * n // config.minibatches


def _sample(train, carry, key, algo_kernels):
    from angle_jax.replay.buffer import uniform_replay

    loop = train.loop
    buffer = uniform_replay(loop.capacity_per_env, loop.batch_size, kernels=algo_kernels)
    return buffer.sample(carry.buffer, key)


if __name__ == "__main__":
    main()
