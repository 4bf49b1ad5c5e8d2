"""Fully connected networks: torso, deterministic actor, critic ensemble."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "swish": nn.swish,
    "silu": nn.silu,
    "tanh": nn.tanh,
    "elu": nn.elu,
    "gelu": nn.gelu,
}


def activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def as_float(x: jax.Array) -> jax.Array:
    """Integer or bool inputs (e.g. uint8 grids) as float32, without rescaling; float inputs as they
    are, so a network applied to float64 data computes in float64."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def flatten_obs(obs: jax.Array, obs_ndim: int) -> jax.Array:
    """Float observations (`as_float`) with all observation axes flattened into one."""
    batch_shape = obs.shape[: obs.ndim - obs_ndim]
    return as_float(obs.reshape(*batch_shape, -1))


class MLP(nn.Module):
    """Dense layers with an activation between them; `out` adds a linear head."""

    hidden: Sequence[int]
    activation: str = "relu"
    out: int | None = None
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        act = activation(self.activation)
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        if self.out is not None:
            init = nn.initializers.variance_scaling(self.out_scale, "fan_avg", "uniform")
            x = nn.Dense(self.out, kernel_init=init)(x)
        return x


class DeterministicActor(nn.Module):
    """obs -> action in [-1, 1]^A via tanh."""

    action_dim: int
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs):
        x = flatten_obs(obs, self.obs_ndim)
        return jnp.tanh(MLP(self.hidden, self.activation, self.action_dim)(x))


class QEnsemble(nn.Module):
    """`num_members` independent Q(s, a) critics in one module: output `[members, batch]`.

    The members are one `nn.vmap` over the parameters, so twin critics (TD3,
    SAC) and larger ensembles cost a single batched matmul chain.
    """

    num_members: int = 2
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([flatten_obs(obs, self.obs_ndim), as_float(action)], axis=-1)
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_members,
        )
        return ensemble(self.hidden, self.activation, 1)(x)[..., 0]
