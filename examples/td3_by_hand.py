"""One TD3 update written out with plain flax and optax, beside `td3.make(...).update`: the
reference a reader can check the library against (tests/test_examples.py runs both and
compares every parameter after several updates).

Everything the library's update does is spelled here without it: the twin critics as one
`nn.vmap`-ed MLP, target policy smoothing, the clipped double-Q target, the summed squared
TD errors, Adam (optax.adam; the library applies Adam's direction times a traced learning
rate, the same arithmetic), the delayed actor step on Q_1 and the polyak sync of both targets.

    python examples/td3_by_hand.py       # prints the largest difference after 6 updates
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from angle_jax import Transition, make_env, td3

# TD3's defaults (td3.Config), written out
GAMMA, TAU, POLICY_DELAY = 0.99, 0.005, 2
TARGET_NOISE, NOISE_CLIP, LR = 0.2, 0.5, 3e-4


class Actor(nn.Module):
    action_dim: int
    hidden: tuple = (32, 32)

    @nn.compact
    def __call__(self, obs):
        x = obs
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        out_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
        return jnp.tanh(nn.Dense(self.action_dim, kernel_init=out_init)(x))


class Q(nn.Module):
    hidden: tuple = (32, 32)

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(1, kernel_init=nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"))(x)[..., 0]


class TwinCritic(nn.Module):
    """Two Q networks as one `nn.vmap` over their parameters: output `[2, batch]`."""

    @nn.compact
    def __call__(self, obs, action):
        twins = nn.vmap(Q, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, axis_size=2)
        return twins()(jnp.concatenate([obs, action], axis=-1))


class State(NamedTuple):
    actor: Any
    critic: Any
    actor_target: Any
    critic_target: Any
    actor_opt: Any
    critic_opt: Any
    step: jax.Array


def update(actor: Actor, critic: TwinCritic, tx: optax.GradientTransformation, s: State, batch: Transition, key):
    """TD3's update (Fujimoto et al. 2018), line by line."""
    noise = jnp.clip(TARGET_NOISE * jax.random.normal(key, batch.action.shape), -NOISE_CLIP, NOISE_CLIP)
    next_action = jnp.clip(actor.apply(s.actor_target, batch.next_obs) + noise, -1.0, 1.0)
    next_q = jnp.min(critic.apply(s.critic_target, batch.next_obs, next_action), axis=0)
    y = batch.reward + GAMMA * (1.0 - batch.terminated.astype(jnp.float32)) * next_q

    def critic_loss(p):
        return jnp.sum(jnp.mean(jnp.square(critic.apply(p, batch.obs, batch.action) - y), axis=1))

    grads = jax.grad(critic_loss)(s.critic)
    updates, critic_opt = tx.update(grads, s.critic_opt, s.critic)
    critic_params = optax.apply_updates(s.critic, updates)
    step = s.step + 1

    def actor_loss(p):
        return -jnp.mean(critic.apply(critic_params, batch.obs, actor.apply(p, batch.obs))[0])

    def actor_step(_):
        updates, actor_opt = tx.update(jax.grad(actor_loss)(s.actor), s.actor_opt, s.actor)
        actor_params = optax.apply_updates(s.actor, updates)
        soft = lambda new, old: jax.tree.map(lambda n, o: TAU * n + (1.0 - TAU) * o, new, old)  # noqa: E731
        return actor_params, actor_opt, soft(actor_params, s.actor_target), soft(critic_params, s.critic_target)

    def skip(_):
        return s.actor, s.actor_opt, s.actor_target, s.critic_target

    actor_params, actor_opt, actor_target, critic_target = jax.lax.cond(step % POLICY_DELAY == 0, actor_step, skip,
                                                                        None)
    return State(actor_params, critic_params, actor_target, critic_target, actor_opt, critic_opt, step)


def compare(updates: int = 6, batch_size: int = 32) -> float:
    """The largest absolute difference between the parameters of the two after `updates` updates."""
    env = make_env("Pendulum-v1", 1)
    algo = td3.make(td3.Config(actor_hidden=(32, 32), critic_hidden=(32, 32)), env.spec)  # plain kernels
    lib = algo.init(jax.random.PRNGKey(0), env.spec)
    actor, critic = Actor(1), TwinCritic()
    tx = optax.adam(LR, eps=1e-8, eps_root=1e-16)
    # the same initial parameters: the library's, re-labelled into these modules' trees
    actor_params = {"params": {f"Dense_{i}": lib.actor_params["params"]["MLP_0"][f"Dense_{i}"] for i in range(3)}}
    critic_params = {"params": {"VmapQ_0": lib.critic_params["params"]["VmapMLP_0"]}}
    s = State(actor_params, critic_params, actor_params, critic_params, tx.init(actor_params),
              tx.init(critic_params), jnp.zeros((), jnp.int32))
    by_hand = jax.jit(lambda s, b, k: update(actor, critic, tx, s, b, k))
    library = jax.jit(algo.update)
    worst = 0.0
    for i in range(updates):
        k = jax.random.PRNGKey(100 + i)
        obs = jax.random.normal(k, (batch_size, 3))
        batch = Transition(obs, jax.random.uniform(k, (batch_size, 1), minval=-1, maxval=1),
                           jax.random.normal(jax.random.fold_in(k, 1), (batch_size,)),
                           jax.random.bernoulli(jax.random.fold_in(k, 2), 0.1, (batch_size,)),
                           jnp.zeros(batch_size, bool), jax.random.normal(jax.random.fold_in(k, 3), (batch_size, 3)))
        s = by_hand(s, batch, k)
        lib, _ = library(lib, batch, k)
        pairs = [(s.actor, lib.actor_params), (s.critic, lib.critic_params), (s.actor_target, lib.actor_target),
                 (s.critic_target, lib.critic_target)]
        for mine, theirs in pairs:
            for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
                worst = max(worst, float(jnp.max(jnp.abs(a - b))))
    return worst


if __name__ == "__main__":
    print(f"largest parameter difference after 6 updates: {compare():.3g}")
