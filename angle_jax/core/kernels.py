"""The kernel bundle: how an algorithm's programs are spelled for one backend.

An algorithm is written once, in plain JAX, flax and optax. A `Kernels` bundle, chosen
once when the algorithm is made (`make(config, spec, kernels=...)`; the run config's
`kernels: auto | xla | cpu`), decides the few places where the spelling matters for
speed on one backend:

- `optimizer`: wraps every gradient transformation the algorithm builds;
- `once`: marks a value (key splits, replay indices) that should be computed once;
- `interceptor`: a flax method interceptor under which the algorithm's networks are
  applied (it may replace a layer's application by an equal function with another
  backward pass);
- `loop_options`, `run_once_options`, `lowering`: how the Trainer compiles training
  loops, programs that run once, and the context it lowers them in.

`XLA` is the plain bundle: it changes nothing, so programs are what GPU/TPU run and
every network and loss is differentiable in forward mode (`jax.jvp`, `jax.hessian`).
The bundle for XLA:CPU lives in `angle_jax.xla_cpu`.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax


def _same(x: Any) -> Any:
    return x


def _no_options() -> dict:
    return {}


class Kernels(NamedTuple):
    """A backend's spelling of the same programs; see the module docstring."""

    name: str = "xla"
    optimizer: Callable[[Any], Any] = _same
    once: Callable[[Any], Any] = _same
    interceptor: Callable[..., Any] | None = None
    loop_options: Callable[[], dict] = _no_options
    run_once_options: Callable[[], dict] = _no_options
    lowering: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def split(self, key: jax.Array, num: int = 2) -> jax.Array:
        """`jax.random.split(key, num)`, computed once."""
        return self.once(jax.random.split(key, num))

    def bind(self, fn: Callable | None) -> Callable | None:
        """`fn` whose networks are applied under this bundle's interceptor (`fn` itself for none)."""
        if fn is None or self.interceptor is None:
            return fn
        interceptor = self.interceptor

        @functools.wraps(fn)
        def bound(*args, **kwargs):
            with nn.intercept_methods(interceptor):
                return fn(*args, **kwargs)

        return bound


XLA = Kernels()
