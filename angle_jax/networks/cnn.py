"""The Nature DQN convolutional torso (Mnih et al. 2015) for stacked Atari frames."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def scale_frames(obs: jax.Array) -> jax.Array:
    """uint8 (any integer) frames -> float32 in [0, 1]; float inputs are taken as already scaled.

    Scaling inside the network lets replay and rollouts keep 1-byte frames.
    """
    if jnp.issubdtype(obs.dtype, jnp.integer):
        return obs.astype(jnp.float32) / 255.0
    return obs.astype(jnp.float32)


class NatureCNN(nn.Module):
    """Conv 32x8x8/4, 64x4x4/2, 64x3x3/1, then Dense(`features`) (None: flat conv features).

    Input `[..., K, H, W]` (`channels_first`, envpool's layout) or `[..., H, W, K]`;
    any leading batch axes. Output `[..., features]` float32.
    `kernel_init` defaults to orthogonal(sqrt 2), the usual choice for PPO and fine for DQN.
    """

    features: int | None = 512
    channels_first: bool = True
    kernel_init: Callable = nn.initializers.orthogonal(np.sqrt(2))

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
