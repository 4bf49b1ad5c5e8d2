"""The compiled loop: seeds under vmap, and a learning smoke test."""
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax import registry
from angle_jax.algos import td3
from angle_jax.core.axes import seed_axes
from angle_jax.training.off_policy import OffPolicyLoop, make_train

ENV = registry.make_env("Pendulum-v1", 1)
EVAL = registry.make_env("Pendulum-v1", 8)


def small_train(hidden=(32, 32), learning_starts=500):
    algo = td3.make(td3.Config(actor_hidden=hidden, critic_hidden=hidden, actor_lr=1e-3, critic_lr=1e-3,
                               tau=0.01, exploration_noise=0.2), ENV.spec)
    loop = OffPolicyLoop(num_envs=1, capacity_per_env=10_000, batch_size=64,
                         learning_starts_iters=learning_starts, train_frequency=1, gradient_steps=1)
    return make_train(algo, ENV, loop, EVAL)


def test_vmapped_seeds_equal_separate_runs():
    train = small_train(hidden=(8,), learning_starts=50)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    axes = seed_axes(jax.eval_shape(train.init, keys[0]))
    run = jax.jit(jax.vmap(lambda c: train.run(c, 120), in_axes=(axes,), out_axes=(axes, 0)))
    both, _ = run(jax.vmap(train.init, out_axes=axes)(keys))
    single = jax.jit(lambda c: train.run(c, 120))
    for i in range(2):
        one, _ = single(train.init(keys[i]))
        for a, b in zip(jax.tree.leaves(one.agent.actor_params), jax.tree.leaves(both.agent.actor_params)):
            np.testing.assert_allclose(a, b[i], rtol=2e-5, atol=2e-6)
    assert both.iteration.shape == () and both.buffer.pos.shape == ()


def test_td3_improves_pendulum_on_small_budget():
    train = small_train()
    carry = jax.jit(train.init)(jax.random.PRNGKey(3))
    evaluate = jax.jit(train.evaluate)
    before = float(evaluate(carry.agent, jax.random.PRNGKey(7)).mean())
    carry, logs = jax.jit(lambda c: train.run(c, 8000))(carry)
    after = float(evaluate(carry.agent, jax.random.PRNGKey(7)).mean())
    assert int(carry.iteration) == 8000 and float(logs["episodes"]) == 40
    # A random-init policy scores about -1200 on Pendulum; learning should at least halve the cost.
    assert after > before + 300 and after > -700, (before, after)
