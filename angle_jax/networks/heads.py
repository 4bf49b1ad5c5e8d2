"""Q-network pieces for the value-based family (DQN to Rainbow).

Torsos turn observations into features (vector obs, MinAtar grids, Atari
frames; integer observations are cast to float inside the network so replay
can keep them small). Heads turn features into action values: plain, dueling
(Wang et al. 2016) and categorical (C51, Bellemare et al. 2017), each with
plain or factorised-noisy (Fortunato et al. 2018) dense layers.

Noise is never hidden state: every noisy layer takes an explicit `key`;
`key=None` means the deterministic network with the mean weights.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from angle_jax.networks.cnn import MinAtarTorso, NatureCNN
from angle_jax.networks.mlp import activation as get_activation
from angle_jax.networks.mlp import as_float, flatten_obs

TORSOS = ("auto", "mlp", "minatar", "nature")


# ---- noisy dense ----------------------------------------------------------------

def scaled_noise(key: jax.Array, size: int) -> jax.Array:
    """f(ε) = sign(ε) sqrt(|ε|) for ε ~ N(0, 1): the factorised-noise transform."""
    eps = jax.random.normal(key, (size,), jnp.float32)
    return jnp.sign(eps) * jnp.sqrt(jnp.abs(eps))


def _symmetric_uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NoisyDense(nn.Module):
    """Dense layer with learned factorised Gaussian noise on weights and bias.

    y = x (μ_W + σ_W ⊙ f(ε_in) f(ε_out)ᵀ) + μ_b + σ_b ⊙ f(ε_out), with the noise
    drawn from `key`, shared by the whole batch. `key=None` gives y = x μ_W + μ_b.
    The noisy product is computed as ((x ⊙ f(ε_in)) σ_W) ⊙ f(ε_out), so the
    noisy weight matrix is never formed.
    """

    features: int
    sigma0: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        fan_in = x.shape[-1]
        bound = 1.0 / math.sqrt(fan_in)
        sigma_init = nn.initializers.constant(self.sigma0 / math.sqrt(fan_in))
        mu_w = self.param("mu_kernel", _symmetric_uniform(bound), (fan_in, self.features))
        sigma_w = self.param("sigma_kernel", sigma_init, (fan_in, self.features))
        mu_b = self.param("mu_bias", _symmetric_uniform(bound), (self.features,))
        sigma_b = self.param("sigma_bias", sigma_init, (self.features,))
        x = as_float(x)
        y = x @ mu_w + mu_b
        if key is None:
            return y
        k_in, k_out = jax.random.split(key)
        eps_in = scaled_noise(k_in, fan_in)
        eps_out = scaled_noise(k_out, self.features)
        return y + ((x * eps_in) @ sigma_w) * eps_out + sigma_b * eps_out


class DenseStack(nn.Module):
    """Dense layers with an activation between them and a linear `out` layer.

    With `noisy`, every layer is a NoisyDense; layer i draws its noise from
    `fold_in(key, i)`.
    """

    hidden: Sequence[int]
    out: int
    noisy: bool = False
    sigma0: float = 0.5
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        act = get_activation(self.activation)
        sizes = (*self.hidden, self.out)
        for i, width in enumerate(sizes):
            if self.noisy:
                x = NoisyDense(width, self.sigma0)(x, None if key is None else jax.random.fold_in(key, i))
            else:
                x = nn.Dense(width)(x)
            if i < len(sizes) - 1:
                x = act(x)
        return x


# ---- heads ----------------------------------------------------------------------

def dueling_combine(value: jax.Array, advantage: jax.Array) -> jax.Array:
    """Q = V + A - mean_a A (Wang et al. 2016), the identifiable dueling form.

    value: `[..., 1, atoms]`; advantage: `[..., actions, atoms]` (atoms = 1 for plain Q values):
    the mean is over the actions axis, whatever the batch axes in front (one batch axis when
    acting, time and batch when a recurrent head runs over a sequence); atoms are combined
    elementwise, so the same form serves C51 logits.
    """
    return value + advantage - jnp.mean(advantage, axis=-2, keepdims=True)


def _split_key(key: jax.Array | None, i: int) -> jax.Array | None:
    return None if key is None else jax.random.fold_in(key, i)


class QHead(nn.Module):
    """features -> Q values `[batch, actions]`."""

    num_actions: int
    hidden: Sequence[int] = ()
    noisy: bool = False
    sigma0: float = 0.5
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, key=None):
        return DenseStack(self.hidden, self.num_actions, self.noisy, self.sigma0, self.activation)(x, key)


class CategoricalHead(nn.Module):
    """features -> return-distribution logits `[batch, actions, atoms]` (C51)."""

    num_actions: int
    num_atoms: int = 51
    hidden: Sequence[int] = ()
    noisy: bool = False
    sigma0: float = 0.5
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, key=None):
        out = DenseStack(self.hidden, self.num_actions * self.num_atoms, self.noisy, self.sigma0,
                         self.activation)(x, key)
        return out.reshape(*out.shape[:-1], self.num_actions, self.num_atoms)


class DuelingHead(nn.Module):
    """Separate value and advantage streams combined by `dueling_combine`.

    `num_atoms=1` returns Q values `[batch, actions]`; `num_atoms>1` returns
    categorical logits `[batch, actions, atoms]` (dueling over logits, as in Rainbow).
    """

    num_actions: int
    num_atoms: int = 1
    hidden: Sequence[int] = ()
    noisy: bool = False
    sigma0: float = 0.5
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, key=None):
        stream = lambda out, name: DenseStack(self.hidden, out, self.noisy, self.sigma0, self.activation, name=name)
        value = stream(self.num_atoms, "value")(x, _split_key(key, 0))
        advantage = stream(self.num_actions * self.num_atoms, "advantage")(x, _split_key(key, 1))
        lead = x.shape[:-1]
        value = value.reshape(*lead, 1, self.num_atoms)
        advantage = advantage.reshape(*lead, self.num_actions, self.num_atoms)
        out = dueling_combine(value, advantage)
        return out[..., 0] if self.num_atoms == 1 else out


# ---- torsos ---------------------------------------------------------------------

class VectorTorso(nn.Module):
    """Flat float features from vector (or any) observations."""

    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs):
        return flatten_obs(obs, self.obs_ndim)


def resolve_torso(torso: str, obs_shape: tuple[int, ...]) -> tuple[str, bool]:
    """Pick the torso for an observation shape; returns `(name, channels_first)`.

    "auto": rank-1 (or other non-image) obs -> "mlp"; rank-3 images of side at
    most 32 -> "minatar"; larger rank-3 images -> "nature". Channels-first is
    assumed when the first axis is the smallest (e.g. `(4, 84, 84)`).
    """
    if torso not in TORSOS:
        raise ValueError(f"torso must be one of {TORSOS}, got {torso!r}")
    image = len(obs_shape) == 3
    channels_first = image and obs_shape[0] < min(obs_shape[1], obs_shape[2])
    if torso == "auto":
        if not image:
            return "mlp", False
        side = max(obs_shape[1:]) if channels_first else max(obs_shape[:2])
        torso = "minatar" if side <= 32 else "nature"
    if torso in ("minatar", "nature") and not image:
        raise ValueError(f"torso {torso!r} needs image observations [H, W, C], got shape {obs_shape}")
    return torso, channels_first


class QNetwork(nn.Module):
    """obs -> Q values `[batch, actions]` (`num_atoms=1`) or logits `[batch, actions, atoms]`.

    torso ("mlp" / "minatar" / "nature", see `resolve_torso`), then `hidden`
    dense layers and the output layer, either one stream or dueling streams
    (each with its own `hidden` layers); all dense layers are noisy with `noisy`.
    """

    num_actions: int
    hidden: Sequence[int] = (256, 256)
    torso: str = "mlp"
    obs_ndim: int = 1
    channels_first: bool = False
    dueling: bool = False
    noisy: bool = False
    sigma0: float = 0.5
    num_atoms: int = 1
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, key: jax.Array | None = None) -> jax.Array:
        if self.torso == "minatar":
            x = MinAtarTorso()(obs)
        elif self.torso == "nature":
            # The Nature DQN CNN without its dense layer (the head follows), flax's default init.
            x = NatureCNN(None, self.channels_first, nn.initializers.lecun_normal())(obs)
        else:
            x = VectorTorso(self.obs_ndim)(obs)
        head_args = dict(hidden=self.hidden, noisy=self.noisy, sigma0=self.sigma0, activation=self.activation)
        if self.dueling:
            return DuelingHead(self.num_actions, self.num_atoms, **head_args)(x, key)
        if self.num_atoms > 1:
            return CategoricalHead(self.num_actions, self.num_atoms, **head_args)(x, key)
        return QHead(self.num_actions, **head_args)(x, key)
