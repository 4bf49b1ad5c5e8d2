"""Dense and convolution layers whose backward passes take XLA:CPU's fast paths, and the
flax interceptor that applies them in place of `nn.Dense` and `nn.Conv`.

The functions are equal to the layers they replace (values and gradients; tested against
the plain flax layers); only the spelling of their backward pass differs:

- `dense`: autodiff's kernel gradient `x^T g` contracts the batch axis, the major one of
  both operands, which XLA:CPU runs through a generic dot (1.5x slower than its YNNPACK
  path for 64x64 layers on a batch of 100, 4x for a small head). Here one operand of the
  kernel gradient is transposed first (the narrower one: the layer input into hidden
  layers, the cotangent into a small head), so every product of the backward pass
  contracts the minor axis of its left operand.
- `conv2d_valid`: the default kernel gradient of a convolution has transposed dimension
  labels that XLA:CPU only rewrites outside loops, so inside `lax.scan` (every compiled
  training loop) it ran ~15x slower (Nature CNN: ~300 vs ~20 ms). Here it is spelled as a
  canonical NHWC/HWIO convolution.

Both are `jax.custom_vjp` functions: reverse mode (and reverse over reverse, as
meta-gradients use) works; forward mode (`jax.jvp`, `jax.hessian`) does not, which is why
they are chosen only with `kernels: cpu`.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


# ---- dense ---------------------------------------------------------------------------

def _transpose_input(kernel: jax.Array) -> bool:
    """Which operand of the kernel gradient to transpose: the input if it is the narrower
    (e.g. observations into a hidden layer), else the cotangent (e.g. into a small head)."""
    return kernel.shape[0] <= kernel.shape[1]


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`x @ kernel + bias` for 2-D `x` `[B, in]`, kernel `[in, out]`, bias `[out]`."""
    return x @ kernel + bias


def _dense_fwd(x, kernel, bias):
    # the barrier keeps XLA from folding the transpose back into the product
    saved = jax.lax.optimization_barrier(x.T) if _transpose_input(kernel) else x
    return x @ kernel + bias, (saved, kernel)


def _dense_bwd(res, g):
    saved, kernel = res
    if _transpose_input(kernel):
        kernel_grad = saved @ g  # [in, B] @ [B, out]
    else:
        g_t = jax.lax.optimization_barrier(g.T)
        kernel_grad = jax.lax.optimization_barrier(g_t @ saved).T  # [out, B] @ [B, in], transposed
    return g @ kernel.T, kernel_grad, jnp.sum(g, axis=0)


dense.defvjp(_dense_fwd, _dense_bwd)


# ---- convolution -----------------------------------------------------------------------

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=_NHWC)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_valid(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID 2-D convolution, x `[N, H, W, C]`, kernel `[kh, kw, C, O]` -> `[N, H', W', O]`;
    the same values and gradients as `lax.conv_general_dilated`."""
    return _conv(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
    return _conv(x, kernel, stride), (x, kernel)


def _conv2d_bwd(stride, residuals, dy):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    _, input_vjp = jax.vjp(lambda x_: _conv(x_, kernel, stride), x)
    (dx,) = input_vjp(dy)
    # dK[i, j, c, o] = sum_{n, p, q} x[n, p*s + i, q*s + j, c] dy[n, p, q, o]: a stride-1
    # convolution of x (channels as batch) with dy (batch as input features), dilated by s.
    dk = jax.lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1),
                                      "VALID", rhs_dilation=(stride, stride), dimension_numbers=_NHWC)
    return dx, jnp.transpose(dk[:, :kh, :kw, :], (1, 2, 0, 3))


conv2d_valid.defvjp(_conv2d_fwd, _conv2d_bwd)


# ---- the interceptor --------------------------------------------------------------------

def _plain_dense(m: nn.Dense) -> bool:
    return (m.use_bias and m.dtype is None and m.precision is None and m.dot_general is None
            and m.dot_general_cls is None)


def _uniform(value: Any, default: int) -> int | None:
    """The single stride/dilation of an `nn.Conv` setting, or None when it differs by axis."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    values = tuple(value)
    return values[0] if len(set(values)) == 1 else None


def _plain_conv(m: nn.Conv, x: jax.Array) -> int | None:
    """The stride when `m` is a VALID, undilated, ungrouped conv over 2-D NHWC images, else None."""
    kernel_size = (m.kernel_size,) * 2 if isinstance(m.kernel_size, int) else tuple(m.kernel_size)
    plain = (x.ndim == 4 and len(kernel_size) == 2 and isinstance(m.padding, str) and m.padding.upper() == "VALID"
             and _uniform(m.input_dilation, 1) == 1 and _uniform(m.kernel_dilation, 1) == 1
             and m.feature_group_count == 1 and m.use_bias and m.mask is None and m.dtype is None
             and m.precision is None and m.conv_general_dilated is None and m.conv_general_dilated_cls is None)
    return _uniform(m.strides, 1) if plain else None


def interceptor(next_fun, args, kwargs, context):
    """A flax method interceptor applying `nn.Dense` through `dense` and plain VALID `nn.Conv`
    layers through `conv2d_valid`, over the layers' own parameters. Initialisation, other
    modules and layers with settings these functions do not cover run unchanged."""
    module = context.module
    if context.method_name != "__call__" or kwargs or len(args) != 1 or module.is_initializing():
        return next_fun(*args, **kwargs)
    (x,) = args
    if type(module) is nn.Dense and _plain_dense(module) and x.dtype == jnp.float32:
        params = module.variables["params"]
        y = dense(x.reshape(-1, x.shape[-1]), params["kernel"], params["bias"])
        return y.reshape(*x.shape[:-1], y.shape[-1])
    if type(module) is nn.Conv and x.dtype == jnp.float32:
        stride = _plain_conv(module, x)
        if stride is not None:
            params = module.variables["params"]
            return conv2d_valid(x, params["kernel"], stride) + params["bias"]
    return next_fun(*args, **kwargs)
