"""Parameter initialisers that stay safe when initialisation is vmapped over seeds.

`orthogonal(scale)` draws the same matrices as `flax.linen.initializers.orthogonal`
(the same bits for the same key), but under `jax.vmap` it computes the QR
factorisation of one matrix at a time (`lax.map` over the batch) instead of one
batched QR.

Why: on XLA:CPU (jaxlib 0.10.2) a batched QR is a LAPACK FFI kernel
(`lapack_sgeqrf_ffi` / `lapack_sorgqr_ffi`) that runs on a worker of the
intra-op thread pool, splits its batch into tasks on that same pool and blocks
until they finish. When every worker of the pool is such a kernel (two host
devices each running a vmapped init, or two independent batched QRs of one
program running side by side on a small pool), no worker is left to run the
split-off tasks and the program never finishes. A QR of a single matrix runs
inline and cannot wait on the pool.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax


def orthogonal(scale: float = 1.0, column_axis: int = -1):
    """Orthogonal initialiser (flax's, bit for bit) whose QR is never batched under vmap."""
    base = nn.initializers.orthogonal(scale, column_axis)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = None) -> jax.Array:
        shape = tuple(int(d) for d in shape)

        @jax.custom_batching.custom_vmap
        def draw(k):
            return base(k, shape, dtype)

        @draw.def_vmap
        def draw_batched(axis_size, in_batched, k):
            del axis_size
            if not in_batched[0]:
                return draw(k), False
            return jax.lax.map(draw, k), True

        return draw(key)

    return init
