"""Compile choices in angle_jax/xla_cpu.py: accepted by XLA and result-preserving."""
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax import xla_cpu


def _draws(key):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (64,)), jax.random.uniform(k2, (3, 5)), jax.random.randint(k2, (7,), 0, 100)


def test_unrolled_threefry_gives_identical_bits():
    key = jax.random.PRNGKey(3)
    default = jax.jit(_draws).lower(key).compile()(key)
    with xla_cpu.unrolled_threefry():
        unrolled = jax.jit(_draws).lower(key).compile()(key)
    for a, b in zip(default, unrolled):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loop_and_run_once_options_compile_and_agree():
    def f(x, w):
        return jnp.sum(jnp.tanh(x @ w), axis=0)

    x = jax.random.normal(jax.random.PRNGKey(0), (100, 64))
    w = jax.random.normal(jax.random.PRNGKey(1), (64, 64)) / 8.0
    lowered = jax.jit(f).lower(x, w)
    reference = np.asarray(lowered.compile()(x, w))
    for options in (xla_cpu.loop_options(), xla_cpu.run_once_options()):
        assert isinstance(options, dict)
        np.testing.assert_allclose(np.asarray(lowered.compile(options)(x, w)), reference, rtol=1e-5, atol=1e-5)


def test_run_once_options_give_a_bit_identical_initial_carry():
    """The init program compiled for speed of compilation gives the same initial carry, bit for bit."""
    from angle_jax.config import load_config
    from angle_jax.training.trainer import Trainer

    config = load_config(None, ["agent.actor_hidden=[16]", "agent.critic_hidden=[16]", "buffer_size=64",
                                "batch_size=8", "tensorboard=false", "progress=false"],
                         algo="td3", env="Pendulum-v1", seeds=2, total_steps=100)
    trainer = Trainer(config)
    lowered = trainer._init.lower(trainer.keys, trainer.hparam_values)
    default = lowered.compile()(trainer.keys, trainer.hparam_values)
    once = lowered.compile(xla_cpu.run_once_options())(trainer.keys, trainer.hparam_values)
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(once)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_split_keys_and_computed_once_keep_values():
    key = jax.random.PRNGKey(7)
    for fn in (lambda k: xla_cpu.split_keys(k, 3), jax.jit(lambda k: xla_cpu.split_keys(k, 3))):
        np.testing.assert_array_equal(np.asarray(fn(key)), np.asarray(jax.random.split(key, 3)))
    x = (jnp.arange(5), jnp.ones(2))
    for a, b in zip(jax.jit(xla_cpu.computed_once)(x), x):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
