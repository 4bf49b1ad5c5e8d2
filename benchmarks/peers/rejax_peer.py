"""Time a rejax 0.1.3 algorithm with rejax's own gymnax config, for side-by-side comparison.

rejax needs gymnax 0.0.9, so it runs from its own venv:
    python -m venv /opt/rejax-venv && /opt/rejax-venv/bin/pip install rejax==0.1.3 gymnax==0.0.9
    /opt/rejax-venv/bin/python benchmarks/peers/rejax_peer.py td3 --seeds 1 --total-steps 50000
Prints one JSON line: compile_s, train_s, steps_per_s (agent-steps/s over all seeds), final return.
The configs below are rejax's configs/gymnax/{pendulum,cartpole}.yaml (not shipped in its wheel).
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
from rejax import get_algo

CONFIGS = {
    "td3": dict(
        env="Pendulum-v1", actor_kwargs={"activation": "swish"}, critic_kwargs={"activation": "swish"},
        num_envs=1, buffer_size=10_000, fill_buffer=1000, batch_size=100, learning_rate=0.001,
        num_epochs=1, gamma=0.99, polyak=0.95, max_grad_norm=100, exploration_noise=0.3,
        target_noise=0.2, target_noise_clip=0.5, policy_delay=2, normalize_observations=True),
    "sac": dict(
        env="Pendulum-v1", agent_kwargs={"activation": "swish"}, num_envs=1, buffer_size=10_000,
        fill_buffer=256, batch_size=256, learning_rate=0.01, num_epochs=1, gamma=0.99, polyak=0.98,
        target_entropy_ratio=None, normalize_observations=True),
    "dqn": dict(
        env="CartPole-v1", agent="DuelingQNetwork", agent_kwargs={"activation": "swish"}, num_envs=10,
        buffer_size=50_000, fill_buffer=5_000, batch_size=100, max_grad_norm=10, learning_rate=0.001,
        num_epochs=5, polyak=0.98, eps_start=1, eps_end=0.05, exploration_fraction=0.5, gamma=0.99,
        ddqn=True, normalize_observations=False),
    "ppo": dict(
        env="CartPole-v1", agent_kwargs={"activation": "tanh"}, num_envs=5, num_steps=100, num_epochs=5,
        num_minibatches=5, learning_rate=0.00075, max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95,
        clip_eps=0.2, ent_coef=0.01, vf_coef=0.5),
}

p = argparse.ArgumentParser()
p.add_argument("algo", choices=sorted(CONFIGS))
p.add_argument("--seeds", type=int, default=1)
p.add_argument("--total-steps", type=int, default=50_000)
p.add_argument("--eval-freq", type=int, default=None, help="default: total/10")
p.add_argument("--no-normalize", action="store_true", help="switch off rejax's observation normalisation")
args = p.parse_args()

config = dict(CONFIGS[args.algo])
if args.no_normalize and "normalize_observations" in config:
    config["normalize_observations"] = False
algo = get_algo(args.algo).create(total_timesteps=args.total_steps,
                                  eval_freq=args.eval_freq or max(args.total_steps // 10, 1), **config)
keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
train = jax.jit(jax.vmap(algo.train))
t0 = time.perf_counter()
compiled = train.lower(keys).compile()
compile_s = time.perf_counter() - t0
t0 = time.perf_counter()
_, (lengths, returns) = compiled(keys)
jax.block_until_ready(returns)
train_s = time.perf_counter() - t0
final = jnp.mean(returns[:, -1], axis=-1)
print(json.dumps({
    "peer": "rejax-0.1.3", "algo": args.algo, "env": config["env"], "seeds": args.seeds,
    "total_steps": args.total_steps, "normalize_observations": config.get("normalize_observations"),
    "compile_s": round(compile_s, 2), "train_s": round(train_s, 2),
    "steps_per_s": round(args.seeds * args.total_steps / train_s, 1),
    "final_return_mean": round(float(final.mean()), 1),
    "final_return_per_seed": [round(float(x), 1) for x in final],
}))
