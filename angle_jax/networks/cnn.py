"""Convolutions for image observations: a VALID conv layer whose kernel gradient is
written in XLA's canonical layout, and the Nature DQN torso (Mnih et al. 2015)."""
from __future__ import annotations

from functools import partial
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.networks.initializers import orthogonal


def scale_frames(obs: jax.Array) -> jax.Array:
    """uint8 (any integer) frames -> float32 in [0, 1]; float inputs are taken as already scaled.

    Scaling inside the network lets replay and rollouts keep 1-byte frames.
    """
    if jnp.issubdtype(obs.dtype, jnp.integer):
        return obs.astype(jnp.float32) / 255.0
    return obs.astype(jnp.float32)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=_NHWC)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_valid(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID 2-D convolution, x `[N, H, W, C]`, kernel `[kh, kw, C, O]` -> `[N, H', W', O]`.

    Same values and gradients as `lax.conv_general_dilated`. The kernel gradient is
    spelled as a canonical NHWC/HWIO convolution: the default one has transposed
    dimension labels that XLA:CPU only rewrites outside loops, so inside `lax.scan`
    (every compiled training loop) it ran ~15x slower (Nature CNN: ~300 vs ~20 ms).
    """
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


class Conv(nn.Module):
    """`nn.Conv` with VALID padding and square kernel/stride on `[N, H, W, C]`, through
    `conv2d_valid` (same parameter names and shapes: `kernel` HWIO, `bias`)."""

    features: int
    kernel_size: int
    stride: int = 1
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, x.shape[-1],
                                                         self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv2d_valid(x, kernel, self.stride) + bias


class NatureCNN(nn.Module):
    """Conv 32x8x8/4, 64x4x4/2, 64x3x3/1, then Dense(`features`) (None: flat conv features).

    Input `[..., K, H, W]` (`channels_first`, envpool's layout) or `[..., H, W, K]`;
    any leading batch axes. Output `[..., features]` float32.
    `kernel_init` defaults to orthogonal(sqrt 2), the usual choice for PPO and fine for DQN.
    """

    features: int | None = 512
    channels_first: bool = True
    kernel_init: Callable = orthogonal(np.sqrt(2))

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = scale_frames(obs)
        if self.channels_first:
            x = jnp.moveaxis(x, -3, -1)
        batch_shape = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        for ch, k, s in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            x = nn.relu(Conv(ch, k, s, kernel_init=self.kernel_init)(x))
        x = x.reshape(x.shape[0], -1)
        if self.features is not None:
            x = nn.relu(nn.Dense(self.features, kernel_init=self.kernel_init)(x))
        return x.reshape(*batch_shape, x.shape[-1])
