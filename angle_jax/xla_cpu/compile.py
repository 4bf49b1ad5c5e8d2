"""How programs are compiled and lowered for XLA:CPU; only the spelling changes, the results
are identical (except that wider vectors, `loop_options`, reorder float reductions)."""
from __future__ import annotations

import contextlib
import functools

import jax
try:  # JAX internals: where they moved, threefry is lowered as JAX lowers it
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as _threefry
except ImportError:
    mlir = _threefry = None


def run_once_options() -> dict:
    """Compiler options for programs that run once (init): on CPU, LLVM at -O1 and XLA's
    older (non-MLIR) fusion emitters take their compile from ~1.3 s to ~0.7 s for TD3's init
    (one core), with bit-identical results; their run time does not matter."""
    if jax.default_backend() != "cpu":
        return {}
    return {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}


@functools.lru_cache(maxsize=None)
def cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def loop_options() -> dict:
    """Compiler options for the training loops: on a CPU with AVX-512, vectorise for 512-bit
    registers. XLA:CPU prefers 256-bit vectors by default; the 512-bit code ran TD3's step
    13-18% faster on an AMD EPYC (benchmarks/RESULTS.md). Reductions are vectorised
    differently, so float results change in the last bits (not run to run)."""
    if jax.default_backend() == "cpu" and cpu_has_avx512():
        return {"xla_cpu_prefer_vector_width": 512}
    return {}


@contextlib.contextmanager
def unrolled_threefry():
    """Lower threefry (every `jax.random` draw) unrolled on CPU while the block runs.

    JAX lowers threefry on CPU as a 5-trip `while` loop to keep compile times low;
    inside a training loop that runs every step, each trip costs a few thunk
    launches, and a TD3 step spends ~25% of its time there (benchmarks/RESULTS.md).
    The unrolled form is the one JAX uses on GPU/TPU and gives identical bits.
    Does nothing if JAX's internals differ from the version tested.
    """
    prim = getattr(_threefry, "threefry2x32_p", None)
    unrolled = getattr(_threefry, "_threefry2x32_lowering_rule", None)
    rolled = getattr(_threefry, "_threefry2x32_cpu_lowering_rule", None)
    if mlir is None or prim is None or unrolled is None or rolled is None:
        yield
        return
    mlir.register_lowering(prim, unrolled, platform="cpu")
    try:
        yield
    finally:
        mlir.register_lowering(prim, rolled, platform="cpu")


def computed_once(tree):
    """`tree` as it is, behind `jax.lax.optimization_barrier`: XLA's passes cannot move or
    duplicate computation across it while it stands. XLA:CPU removes the barrier before it
    fuses (it is absent from the compiled program), so it does not decide fusions: e.g. it
    does not stop a reduction from being fused into a concatenation (`flattened`). Measured
    when a run is traced without vmap (as runs on external envs such as envpool are): SAC's
    Pendulum loop, in a variant with hand-written dense layers, compiled in 6.8 s without
    barriers on its key splits and 2.9 s with them (benchmarks/RESULTS.md). Same values."""
    return jax.lax.optimization_barrier(tree)
