"""A complete custom env: a 1-D point mass, registered by name and trained with TD3.

The agent pushes a mass on a rail with a force in [-1, 1] and is paid for
staying near the origin. Leaving the rail (|x| > 2) terminates the episode;
after `max_steps` steps it is truncated. Run:

    python examples/custom_env.py            # about 30 s on 2 CPU cores
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax import Box, Env, EnvSpec, OffPolicyLoop, TimeStep, off_policy, registry, td3, xla_cpu

ENV_NAME = "PointMass-v0"


@struct.dataclass
class PointMassState:
    """Per-env state, leading axis num_envs."""

    x: jax.Array
    v: jax.Array
    t: jax.Array


class PointMass(Env):
    """Batched 1-D point mass with auto-reset."""

    def __init__(self, num_envs: int, max_steps: int = 100, dt: float = 0.1, rail: float = 2.0):
        if max_steps < 1 or dt <= 0 or rail <= 1:
            raise ValueError(f"PointMass: need max_steps >= 1, dt > 0, rail > 1; got {max_steps}, {dt}, {rail}")
        self.dt, self.rail = float(dt), float(rail)
        self.spec = EnvSpec(name=ENV_NAME, obs_shape=(2,), obs_dtype="float32",
                            action_space=Box.symmetric((1,)), num_envs=int(num_envs),
                            max_episode_steps=int(max_steps))

    @staticmethod
    def _obs(s: PointMassState) -> jax.Array:
        return jnp.stack([s.x, s.v])

    def _reset_one(self, key):
        x = jax.random.uniform(key, (), minval=-1.0, maxval=1.0)
        s = PointMassState(x, jnp.zeros(()), jnp.zeros((), jnp.int32))
        return self._obs(s), s

    def _step_one(self, s: PointMassState, action, key):
        force = jnp.clip(action[0], -1.0, 1.0)
        v = s.v + self.dt * force
        x = s.x + self.dt * v
        moved = PointMassState(x, v, s.t + 1)
        terminated = jnp.abs(x) > self.rail
        truncated = jnp.logical_and(moved.t >= self.spec.max_episode_steps, jnp.logical_not(terminated))
        reward = jnp.where(terminated, -10.0, -(x ** 2 + 0.1 * v ** 2 + 0.01 * force ** 2))
        next_obs = self._obs(moved)                      # the true successor, kept for replay
        reset_obs, reset_state = self._reset_one(key)
        done = jnp.logical_or(terminated, truncated)
        state = jax.tree.map(lambda r, m: jnp.where(done, r, m), reset_state, moved)
        obs = jnp.where(done, reset_obs, next_obs)       # what the agent acts on next
        return state, obs, next_obs, reward, terminated, truncated

    def reset(self, key):
        return jax.vmap(self._reset_one)(jax.random.split(key, self.spec.num_envs))

    def step(self, state, action, key):
        keys = jax.random.split(key, self.spec.num_envs)
        state, obs, next_obs, reward, term, trunc = jax.vmap(self._step_one)(state, action, keys)
        return state, TimeStep(obs=obs, reward=reward.astype(jnp.float32), terminated=term,
                               truncated=trunc, next_obs=next_obs, info={})


registry.register_env(ENV_NAME, lambda num_envs, **kwargs: PointMass(num_envs, **kwargs), overwrite=True)


def train(iterations: int = 6_000, num_envs: int = 4, seed: int = 0, chunks: int = 4, verbose: bool = True):
    """Train TD3 on the registered env; returns (carry, evaluation returns before and after)."""
    env = registry.make_env(ENV_NAME, num_envs)          # RescaleAction + EpisodeStatistics
    eval_env = registry.make_env(ENV_NAME, 8)
    kernels = xla_cpu.select("auto", jax.default_backend())  # the CPU kernels on a CPU, plain JAX elsewhere
    algo = td3.make(td3.Config(actor_hidden=(64, 64), critic_hidden=(64, 64)), env.spec, kernels=kernels)
    loop = OffPolicyLoop(num_envs=num_envs, capacity_per_env=50_000 // num_envs, batch_size=128,
                         learning_starts_iters=250, train_frequency=1, gradient_steps=1)
    fns = off_policy.make_train(algo, env, loop, eval_env=eval_env)
    run = jax.jit(fns.run, static_argnums=1)
    evaluate = jax.jit(fns.evaluate)
    carry = jax.jit(fns.init)(jax.random.PRNGKey(seed))
    before = evaluate(carry.agent, jax.random.PRNGKey(seed + 1))
    start = time.time()
    for i in range(chunks):
        carry, logs = run(carry, iterations // chunks)
        if verbose:
            print(f"chunk {i + 1}/{chunks}: env steps {int(carry.iteration) * num_envs:>6}  "
                  f"episode return {float(logs['episode_return_mean']):8.2f}  ({time.time() - start:.1f} s)")
    after = evaluate(carry.agent, jax.random.PRNGKey(seed + 1))
    return carry, before, after


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _, before, after = train(args.iterations, seed=args.seed)
    print(f"evaluation return: before {float(before.mean()):.2f}, after {float(after.mean()):.2f}")
