"""Compile choices and kernel selection in angle_jax/xla_cpu/: accepted by XLA, result-preserving,
and chosen by the run config's `kernels` key."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import xla_cpu
from angle_jax.config import ConfigError, load_config
from angle_jax.core.kernels import XLA
from angle_jax.training.trainer import Trainer
from conftest import xla_defaults


def _draws(key):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (64,)), jax.random.uniform(k2, (3, 5)), jax.random.randint(k2, (7,), 0, 100)


def test_unrolled_threefry_is_another_program_with_identical_bits():
    key = jax.random.PRNGKey(3)

    def lowered():
        # a fresh closure each time: jit's cache cannot hand back the program lowered outside the context
        return jax.jit(lambda k: _draws(k)).lower(key)

    default = lowered()
    with xla_cpu.unrolled_threefry():
        unrolled = lowered()
    # threefry is a 5-trip loop on CPU by default, straight-line code unrolled
    assert "while" in default.as_text() and "while" not in unrolled.as_text()
    for a, b in zip(default.compile()(key), unrolled.compile()(key)):
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


@xla_defaults
def test_run_once_options_give_a_bit_identical_initial_carry():
    """The init program compiled for speed of compilation gives the same initial carry, bit for bit."""
    config = load_config(None, ["agent.actor_hidden=[16]", "agent.critic_hidden=[16]", "buffer_size=64",
                                "batch_size=8", "tensorboard=false", "progress=false"],
                         algo="td3", env="Pendulum-v1", seeds=2, total_steps=100)
    trainer = Trainer(config)
    lowered = trainer.programs._init.lower(trainer.keys, trainer.hparam_values)
    default = lowered.compile()(trainer.keys, trainer.hparam_values)
    once = lowered.compile(xla_cpu.run_once_options())(trainer.keys, trainer.hparam_values)
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(once)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_split_keys_and_computed_once_keep_values():
    key = jax.random.PRNGKey(7)
    for fn in (lambda k: xla_cpu.CPU.split(k, 3), jax.jit(lambda k: xla_cpu.CPU.split(k, 3))):
        np.testing.assert_array_equal(np.asarray(fn(key)), np.asarray(jax.random.split(key, 3)))
    x = (jnp.arange(5), jnp.ones(2))
    for a, b in zip(jax.jit(xla_cpu.computed_once)(x), x):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernels_are_selected_by_the_run_config_and_the_backend():
    assert xla_cpu.select("auto", "cpu") is xla_cpu.CPU
    assert xla_cpu.select("auto", "gpu") is XLA and xla_cpu.select("auto", "tpu") is XLA
    assert xla_cpu.select("xla", "cpu") is XLA and xla_cpu.select("cpu", "gpu") is xla_cpu.CPU
    with pytest.raises(ValueError, match="kernels must be one of auto, xla, cpu"):
        xla_cpu.select("fast", "cpu")
    base = ["total_steps=100", "buffer_size=64", "batch_size=8", "agent.actor_hidden=[8]", "agent.critic_hidden=[8]"]
    for choice, expected in (("xla", "xla"), ("cpu", "cpu"), ("auto", "cpu")):  # the CPU backend here
        config = load_config(None, [*base, f"kernels={choice}"], algo="td3", env="Pendulum-v1")
        trainer = Trainer(config)
        assert trainer.kernels.name == expected and trainer.algo.kernels.name == expected
        opt = trainer.programs.carry_spec.agent.critic_opt
        flat = all(x.ndim <= 2 for x in jax.tree.leaves(opt))  # cpu: moments as flat vectors [runs, n]
        assert flat == (expected == "cpu")
    with pytest.raises(ConfigError, match="kernels must be one of"):
        load_config(None, ["kernels=fastest"], algo="td3", env="Pendulum-v1")
