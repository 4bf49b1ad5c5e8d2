"""Actor-critic networks and the distrax policy distributions built from their outputs.

Networks return plain arrays (logits, or mean and log-std, plus values) so they
pass through `jit`, `vmap` and `lax.scan`; `policy_distribution` turns those
arrays into a distrax distribution where log-probs and entropies are needed.

Continuous actions: the policy is an unbounded diagonal Gaussian with a
state-independent log-std. The sampled action is stored and scored as sampled;
only the copy sent to the env is clipped to the [-1, 1] bounds. Compared with a
tanh-squashed Gaussian this keeps log-probs exact (no atanh of actions near the
bounds when old samples are re-scored) and the entropy analytic, which the PPO
entropy bonus and approx-KL use.
"""
from __future__ import annotations

from typing import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.networks.cnn import MinAtarTorso, NatureCNN
from angle_jax.networks.initializers import orthogonal
from angle_jax.networks.mlp import MLP, as_float, flatten_obs
from angle_jax.networks.mlp import activation as get_activation


class MLPTorso(nn.Module):
    """Dense layers (orthogonal init, gain sqrt 2) over flattened observations."""

    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs):
        act = get_activation(self.activation)
        batch_shape = obs.shape[: obs.ndim - self.obs_ndim]
        x = as_float(obs).reshape(*batch_shape, -1)
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=orthogonal(np.sqrt(2)), bias_init=nn.initializers.zeros)(x))
        return x


class ImageTorso(nn.Module):
    """Picks the CNN from the observation's static shape: the Nature CNN for stacked
    Atari frames `[K, 84, 84]` (channels first, envpool's layout), the small MinAtar CNN
    for `[10, 10, C]` grids."""

    hidden: Sequence[int] = (128,)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        spatial = obs.shape[-3:]
        if max(spatial) > 32:
            channels_first = spatial[0] < min(spatial[1:])
            features = self.hidden[0] if self.hidden else 512
            return NatureCNN(features=features, channels_first=channels_first)(obs)
        return MinAtarTorso(tuple(self.hidden), self.activation, kernel_init=orthogonal(np.sqrt(2)))(obs)


def make_torso(kind: str, hidden: Sequence[int], activation: str, obs_ndim: int, name: str | None = None):
    """`kind` is "mlp", "cnn" or "auto" (cnn for image-shaped observations, else mlp)."""
    if kind == "auto":
        kind = "cnn" if obs_ndim == 3 else "mlp"
    if kind == "cnn":
        if obs_ndim != 3:
            raise ValueError(f"the cnn torso needs [H, W, C] or [K, H, W] observations, got {obs_ndim} axes")
        return ImageTorso(tuple(hidden), activation, name=name)
    if kind == "mlp":
        return MLPTorso(tuple(hidden), activation, obs_ndim, name=name)
    raise ValueError(f"unknown torso {kind!r}; choose 'mlp', 'cnn' or 'auto'")


class ActorCritic(nn.Module):
    """obs -> (policy outputs, values).

    Policy outputs are logits `[..., A]` (discrete) or `(mean, log_std)` each
    `[..., A]` (continuous, log-std a free parameter shared by all states).
    Values are `[...]`. `shared_torso` puts both heads on one torso.
    """

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    obs_ndim: int = 1
    torso: str = "auto"
    shared_torso: bool = False
    log_std_init: float = 0.0

    def setup(self):
        self.actor_torso = make_torso(self.torso, self.hidden, self.activation, self.obs_ndim)
        if not self.shared_torso:
            self.critic_torso = make_torso(self.torso, self.hidden, self.activation, self.obs_ndim)
        self.policy_head = nn.Dense(self.action_dim, kernel_init=orthogonal(0.01))
        self.value_head = nn.Dense(1, kernel_init=orthogonal(1.0))
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,))

    def policy_outputs(self, features):
        out = self.policy_head(features)
        if self.discrete:
            return out
        return out, jnp.broadcast_to(self.log_std, out.shape)

    def __call__(self, obs):
        features = self.actor_torso(obs)
        critic_features = features if self.shared_torso else self.critic_torso(obs)
        return self.policy_outputs(features), self.value_head(critic_features)[..., 0]

    def actor_outputs(self, obs):
        """Policy outputs only (no critic pass): what acting needs."""
        return self.policy_outputs(self.actor_torso(obs))

    def value(self, obs):
        features = self.actor_torso(obs) if self.shared_torso else self.critic_torso(obs)
        return self.value_head(features)[..., 0]


class Critic(nn.Module):
    """obs -> value `[...]` on a torso of its own."""

    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    obs_ndim: int = 1
    torso: str = "auto"

    @nn.compact
    def __call__(self, obs):
        x = make_torso(self.torso, self.hidden, self.activation, self.obs_ndim)(obs)
        return nn.Dense(1, kernel_init=orthogonal(1.0))(x)[..., 0]


def policy_distribution(outputs, discrete: bool) -> distrax.Distribution:
    """Categorical over logits, or a diagonal Gaussian from `(mean, log_std)`."""
    if discrete:
        return distrax.Categorical(logits=outputs)
    mean, log_std = outputs
    return distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))


class SquashedGaussianActor(nn.Module):
    """obs -> (mean, log_std) of the pre-tanh Gaussian; log_std is squashed into [min, max]."""

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    obs_ndim: int = 1
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs):
        out = MLP(tuple(self.hidden), self.activation, 2 * self.action_dim)(flatten_obs(obs, self.obs_ndim))
        mean, raw_log_std = jnp.split(out, 2, axis=-1)
        unit = 0.5 * (jnp.tanh(raw_log_std) + 1.0)
        return mean, self.log_std_min + (self.log_std_max - self.log_std_min) * unit


class ActorCriticHead(nn.Module):
    """features -> (policy outputs, value): the heads of `ActorCritic` on features computed
    elsewhere (e.g. a memory core's output), with the same initialisation."""

    action_dim: int
    discrete: bool
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, features):
        out = nn.Dense(self.action_dim, kernel_init=orthogonal(0.01), name="policy_head")(features)
        value = nn.Dense(1, kernel_init=orthogonal(1.0), name="value_head")(features)[..., 0]
        if self.discrete:
            return out, value
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,))
        return (out, jnp.broadcast_to(log_std, out.shape)), value
