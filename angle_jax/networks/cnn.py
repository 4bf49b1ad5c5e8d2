"""Convolutional torsos for image observations: the Nature DQN CNN (Mnih et al. 2015) for
stacked Atari frames and the one-layer MinAtar CNN (Young & Tian 2019) for 10x10 grids."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.networks.initializers import orthogonal
from angle_jax.networks.mlp import activation, as_float


def scale_frames(obs: jax.Array) -> jax.Array:
    """uint8 (any integer) frames -> float32 in [0, 1]; float inputs are taken as already scaled.

    Scaling inside the network lets replay and rollouts keep 1-byte frames.
    """
    if jnp.issubdtype(obs.dtype, jnp.integer):
        return obs.astype(jnp.float32) / 255.0
    return as_float(obs)


class NatureCNN(nn.Module):
    """Conv 32x8x8/4, 64x4x4/2, 64x3x3/1, then Dense(`features`) (None: flat conv features).

    Input `[..., K, H, W]` (`channels_first`, envpool's layout) or `[..., H, W, K]`;
    any leading batch axes. Output `[..., features]` float.
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
            x = nn.relu(nn.Conv(ch, (k, k), strides=(s, s), padding="VALID", kernel_init=self.kernel_init)(x))
        x = x.reshape(x.shape[0], -1)
        if self.features is not None:
            x = nn.relu(nn.Dense(self.features, kernel_init=self.kernel_init)(x))
        return x.reshape(*batch_shape, x.shape[-1])


class MinAtarTorso(nn.Module):
    """One 3x3 conv with `channels` channels on `[..., 10, 10, C]` grids, then `hidden`
    dense layers, each followed by the activation; flat features `[..., F]`.

    MinAtar observations are 0/1 (stored as uint8), so they are cast, not scaled.
    """

    hidden: Sequence[int] = ()
    activation: str = "relu"
    channels: int = 16
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        act = activation(self.activation)
        batch_shape = obs.shape[:-3]
        x = as_float(obs).reshape(-1, *obs.shape[-3:])
        x = act(nn.Conv(self.channels, (3, 3), padding="VALID", kernel_init=self.kernel_init)(x))
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=self.kernel_init)(x))
        return x.reshape(*batch_shape, -1)
