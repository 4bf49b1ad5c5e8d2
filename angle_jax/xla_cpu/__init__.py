"""Kernels and compile choices that make small RL programs faster on XLA:CPU, in one place.

`CPU` is the kernel bundle (`angle_jax.core.kernels.Kernels`) an algorithm is made with
when the run config says `kernels: cpu` (or `auto` on the CPU backend): dense and
convolution layers with backward passes XLA:CPU runs fast (`layers`), optimizers on flat
vectors (`optimizer`), key splits and replay indices behind optimisation barriers,
threefry lowered unrolled, and compiler options for loops and run-once programs
(`compile`). Every piece gives the same values and gradients as the plain path
(`angle_jax.core.kernels.XLA`), which is what runs on GPU/TPU; forward-mode
differentiation works only on the plain path.
"""
from __future__ import annotations

from angle_jax.core.kernels import XLA, Kernels
from angle_jax.xla_cpu.compile import computed_once, loop_options, run_once_options, unrolled_threefry
from angle_jax.xla_cpu.layers import conv2d_valid, dense, interceptor
from angle_jax.xla_cpu.optimizer import flattened

CPU = Kernels(name="cpu", optimizer=flattened, once=computed_once, interceptor=interceptor,
              loop_options=loop_options, run_once_options=run_once_options, lowering=unrolled_threefry)

KERNEL_CHOICES = ("auto", "xla", "cpu")


def select(choice: str, backend: str) -> Kernels:
    """The bundle for a run-config `kernels` value: `auto` is `cpu` on the CPU backend, `xla` elsewhere."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    if choice == "auto":
        choice = "cpu" if backend == "cpu" else "xla"
    return CPU if choice == "cpu" else XLA


__all__ = ["CPU", "KERNEL_CHOICES", "XLA", "computed_once", "conv2d_valid", "dense", "flattened", "interceptor",
           "loop_options", "run_once_options", "select", "unrolled_threefry"]
