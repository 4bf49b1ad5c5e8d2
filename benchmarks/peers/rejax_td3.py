"""Time rejax 0.1.3's TD3 on Pendulum-v1 with its own Pendulum config.

Runs in a separate venv (rejax needs gymnax 0.0.9):
    python -m venv /opt/rejax-venv && /opt/rejax-venv/bin/pip install rejax==0.1.3 gymnax==0.0.9
    /opt/rejax-venv/bin/python benchmarks/peers/rejax_td3.py --seeds 1 --total-steps 50000
Prints one JSON line: compile_s, steps_per_s (agent-steps/s over all seeds), final return.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
from rejax import get_algo

CONFIG = dict(  # rejax configs/gymnax/pendulum.yaml, td3 section
    env="Pendulum-v1", actor_kwargs={"activation": "swish"}, critic_kwargs={"activation": "swish"},
    num_envs=1, buffer_size=10_000, fill_buffer=1000, batch_size=100, learning_rate=0.001,
    num_epochs=1, gamma=0.99, polyak=0.95, max_grad_norm=100, exploration_noise=0.3,
    target_noise=0.2, target_noise_clip=0.5, policy_delay=2, normalize_observations=True,
)

p = argparse.ArgumentParser()
p.add_argument("--seeds", type=int, default=1)
p.add_argument("--total-steps", type=int, default=50_000)
p.add_argument("--eval-freq", type=int, default=5_000)
args = p.parse_args()

algo = get_algo("td3").create(total_timesteps=args.total_steps, eval_freq=args.eval_freq, **CONFIG)
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
    "peer": "rejax-0.1.3", "algo": "td3", "seeds": args.seeds, "total_steps": args.total_steps,
    "compile_s": round(compile_s, 2), "train_s": round(train_s, 2),
    "steps_per_s": round(args.seeds * args.total_steps / train_s, 1),
    "final_return_mean": float(final.mean()), "final_return_per_seed": [float(x) for x in final],
}))
