"""Never Give Up's controllable-state embedding `f(x)`, learned by inverse dynamics.

An encoder maps an observation to `f(x) ∈ R^D`; a classifier (one hidden layer) reads
`[f(x_t), f(x_{t+1})]` and predicts the action `a_t` taken between them. Trained by
cross-entropy on that action, `f` keeps what the agent's actions change and drops what they
do not (Pathak et al. 2017; Badia et al. 2020b, "Never Give Up", section 2 and appendix: a
32-unit embedding and a 128-unit classifier). `embed` is what an episodic memory stores; the
embedding is trained with its own optimizer, never by the agent's Q-loss.

`inverse_dynamics_loss` is the pure loss; `sequence_pairs` takes the `(x_t, x_{t+1}, a_t)`
pairs of one episode out of time-major sequences (pairs that cross an episode start are masked).
"""
from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.networks.initializers import orthogonal
from angle_jax.networks.mlp import activation as get_activation
from angle_jax.networks.recurrent import make_encoder


class InverseDynamics(nn.Module):
    """`embed(obs) -> [..., embed_dim]`; `__call__(obs, next_obs) -> [..., num_actions]` action logits.

    The encoder is `recurrent.make_encoder(torso, hidden, activation, obs_shape)` (dense layers
    for vectors, the MinAtar CNN for grids, the Nature CNN for stacked frames), then a linear
    layer of `embed_dim` units (no activation: distances in the memory use the whole range).
    """

    num_actions: int
    obs_shape: tuple[int, ...]
    embed_dim: int = 32
    hidden: Sequence[int] = (64,)
    classifier_hidden: int = 128
    activation: str = "relu"
    torso: str = "auto"

    def setup(self):
        self.encoder = make_encoder(self.torso, tuple(self.hidden), self.activation, tuple(self.obs_shape))
        self.project = nn.Dense(self.embed_dim, kernel_init=orthogonal(1.0), name="embedding")
        self.hidden_layer = nn.Dense(self.classifier_hidden, kernel_init=orthogonal(np.sqrt(2)), name="classifier")
        self.logits = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01), name="logits")

    def embed(self, obs: jax.Array) -> jax.Array:
        return self.project(self.encoder(obs))

    def classify(self, emb: jax.Array, next_emb: jax.Array) -> jax.Array:
        x = jnp.concatenate([emb, next_emb], axis=-1)
        return self.logits(get_activation(self.activation)(self.hidden_layer(x)))

    def __call__(self, obs: jax.Array, next_obs: jax.Array) -> jax.Array:
        return self.classify(self.embed(obs), self.embed(next_obs))


def inverse_dynamics_loss(logits: jax.Array, action: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy `−log softmax(logits)[a]` over the samples where `mask` is true.

    logits `[..., A]`, action `[...]` (integers in [0, A)), mask `[...]` (None: all); 0 when no
    sample is masked in.
    """
    chex.assert_equal_shape_prefix([logits, action], action.ndim)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, action.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    if mask is None:
        return jnp.mean(nll)
    chex.assert_equal_shape([nll, mask])
    m = mask.astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)


def sequence_pairs(obs: jax.Array, action: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array,
                                                                                  jax.Array]:
    """The consecutive pairs of time-major sequences: `(x_t, x_{t+1}, a_t, same_episode)`.

    obs `[L, B, ...]`, action and reset `[L, B]` (reset: obs starts an episode). Returns
    `[L − 1, B, ...]` arrays; `same_episode[t]` is false where `x_{t+1}` starts a new episode
    (the pair did not come from one env step).
    """
    chex.assert_equal_shape_prefix([obs, action, reset], 2)
    return obs[:-1], obs[1:], action[:-1], jnp.logical_not(reset[1:])
