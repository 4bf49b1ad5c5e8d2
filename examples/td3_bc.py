"""A new algorithm from angle_jax's exported pieces: TD3+BC (Fujimoto & Gu 2021).

TD3 with one change: the actor maximises λ Q(s, π(s)) - (π(s) - a)², with λ = α / mean|Q|,
so it stays close to the actions in its data. Written without touching the library: the twin
target, critic step, gradient step, polyak sync and the deterministic agent are angle_jax's;
only `bc_actor_loss` and the update that composes them are new. Here it trains online on
Pendulum through `off_policy.make_train` (the BC term then pulls toward the replay's
actions); with a replay filled from a fixed dataset it is the offline algorithm of the paper.

    python examples/td3_bc.py            # ~20k env steps on Pendulum-v1
"""
from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax import (XLA, Algorithm, OffPolicyLoop, bind_kernels, gradient_step, make_env, off_policy,
                       polyak_update, td3, xla_cpu)
from angle_jax.algos import actor_critic as ac


@dataclasses.dataclass(frozen=True)
class Config(td3.Config):
    alpha: float = 2.5  # weight of the Q term against behaviour cloning


@struct.dataclass
class HParams(td3.TD3HParams):
    alpha: jax.Array  # traced like the rest: sweepable, and meta-learnable (examples/meta_gradient_bc.py)


def bc_actor_loss(q: jax.Array, action: jax.Array, data_action: jax.Array, alpha: jax.Array) -> jax.Array:
    """-λ mean Q(s, π(s)) + mean (π(s) - a)², λ = α / mean|Q| with mean|Q| held constant
    (α stays differentiable, for meta-gradients). q: [batch]."""
    lam = alpha / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)))
    return -lam * jnp.mean(q) + jnp.mean(jnp.square(action - data_action))


def make(config: Config, spec, *, total_steps=None, kernels=XLA) -> Algorithm:
    actor, critic, tx, init, act, explore = ac.deterministic_parts("td3_bc", config, spec, td3.networks, HParams,
                                                                   kernels)

    def update(state, batch, key):
        hp = state.hparams
        next_q = td3.target_q(actor, critic, state, batch.next_obs, key, hp.target_noise, hp.target_noise_clip)
        target = td3.twin_q_target(next_q, batch.reward, batch.terminated, hp.gamma)
        critic_params, critic_opt, c_loss, _ = ac.critic_step(critic, tx, state.critic_params, state.critic_opt,
                                                              batch.obs, batch.action, target, hp.critic_lr)
        step = state.step + 1

        def actor_step(_):
            def objective(params):
                pi = actor.apply(params, batch.obs)
                q = td3.first_member_q(critic, critic_params, batch.obs, pi)
                return bc_actor_loss(q, pi, batch.action, hp.alpha), None

            params, opt, loss, _ = gradient_step(objective, tx, state.actor_params, state.actor_opt, hp.actor_lr)
            targets = polyak_update((params, critic_params), (state.actor_target, state.critic_target), hp.tau)
            return params, opt, *targets, loss

        def skip(_):
            return state.actor_params, state.actor_opt, state.actor_target, state.critic_target, jnp.nan * c_loss

        actor_params, actor_opt, actor_target, critic_target, a_loss = jax.lax.cond(
            step % config.policy_delay == 0, actor_step, skip, None)
        new = state.replace(actor_params=actor_params, critic_params=critic_params, actor_target=actor_target,
                            critic_target=critic_target, actor_opt=actor_opt, critic_opt=critic_opt, step=step)
        return new, {"critic_loss": c_loss, "actor_loss": a_loss}

    return bind_kernels(Algorithm(init=init, update=update, act=act, explore=explore, config=config,
                                  kernels=kernels))


def train(steps: int = 20_000, seed: int = 0, hidden=(64, 64), alpha: float = 10.0, meta=None):
    """TD3+BC on Pendulum-v1 through the library's compiled loop (the TD3 preset's settings; online,
    a larger α than the paper's offline 2.5 lets Q lead); returns (carry, logs, eval returns).
    `meta(algo, config, spec) -> MetaLearner` adds a meta-learner (examples/meta_gradient_bc.py)."""
    env, eval_env = make_env("Pendulum-v1", 1), make_env("Pendulum-v1", 10)
    kernels = xla_cpu.select("auto", jax.default_backend())  # the CPU kernels on a CPU, plain JAX elsewhere
    config = Config(actor_hidden=hidden, critic_hidden=hidden, actor_lr=1e-3, critic_lr=1e-3, tau=0.01,
                    exploration_noise=0.2, alpha=alpha)
    algo = make(config, env.spec, kernels=kernels)
    loop = OffPolicyLoop(num_envs=1, capacity_per_env=steps, batch_size=128,
                         learning_starts_iters=min(1000, steps // 4), train_frequency=1, gradient_steps=1)
    learner = None if meta is None else meta(algo, config, env.spec)
    if learner is not None:  # its networks applied with the algorithm's kernels, as the Trainer does
        learner = learner._replace(update=kernels.bind(learner.update))
    fns = off_policy.make_train(algo, env, loop, eval_env=eval_env, meta=learner)
    carry, logs = jax.jit(fns.train, static_argnums=1)(jax.random.PRNGKey(seed), steps)
    return carry, logs, jax.jit(fns.evaluate)(carry.agent, jax.random.PRNGKey(seed + 1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=10.0)
    args = parser.parse_args()
    _, logs, returns = train(args.steps, args.seed, alpha=args.alpha)
    print(f"critic loss {float(logs['critic_loss']):.3f}  actor loss {float(logs['actor_loss']):.3f}  "
          f"eval return {float(returns.mean()):.1f}")
