"""Code-generation choices for XLA:CPU that make small RL programs faster.

Nothing here changes a result: only how the same computation is compiled.
"""
from __future__ import annotations

import contextlib

import jax


def run_once_options() -> dict:
    """Compiler options for programs that run once (init): on CPU, LLVM at -O1 about
    halves their compile time, and their run time does not matter."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else {}


@contextlib.contextmanager
def unrolled_threefry():
    """Lower threefry (every `jax.random` draw) unrolled on CPU while the block runs.

    JAX lowers threefry on CPU as a 5-trip `while` loop to keep compile times low;
    inside a training loop that runs every step, each trip costs a few thunk
    launches, and a TD3 step spends ~25% of its time there (benchmarks/RESULTS.md).
    The unrolled form is the one JAX uses on GPU/TPU and gives identical bits.
    Falls back to doing nothing if JAX's internals differ from the version tested.
    """
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        prim, unrolled, rolled = tf.threefry2x32_p, tf._threefry2x32_lowering_rule, tf._threefry2x32_cpu_lowering_rule
    except (ImportError, AttributeError):
        yield
        return
    mlir.register_lowering(prim, unrolled, platform="cpu")
    try:
        yield
    finally:
        mlir.register_lowering(prim, rolled, platform="cpu")
