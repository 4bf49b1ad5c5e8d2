"""Memory cores (LSTM, GRU) and networks built around one: encoder -> core -> head.

A recurrent network is applied one step at a time as `apply(params, obs, core, reset) ->
(out, core)`, and over a time-major sequence with `unroll`. `reset` (bool `[batch]`) marks
observations that start an episode: the core state is set to its initial value (zeros)
before that step, inside the computation (`jnp.where`, no Python branch), so a sequence that
crosses an episode end computes exactly what the two episodes would have separately.

`unroll` runs the encoder and the head once over all `[T, B]` steps and only the core inside
the `lax.scan`, so the per-step work in the loop is one cell update.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.networks.cnn import MinAtarTorso, NatureCNN
from angle_jax.networks.initializers import orthogonal
from angle_jax.networks.mlp import activation as get_activation
from angle_jax.networks.mlp import as_float

CORES = ("lstm", "gru")


def initial_core(kind: str, size: int, batch: int) -> Any:
    """The core state at an episode start for `batch` envs: zeros, `(c, h)` for an LSTM, `h` for a GRU."""
    if kind not in CORES:
        raise ValueError(f"core must be one of {', '.join(CORES)}, got {kind!r}")
    zeros = jnp.zeros((batch, size), jnp.float32)
    return (zeros, zeros) if kind == "lstm" else zeros


def reset_core(core: Any, reset: jax.Array) -> Any:
    """`core` with the rows where `reset` is true set to the initial (zero) state."""
    def one(c):
        return jnp.where(reset.reshape(reset.shape + (1,) * (c.ndim - reset.ndim)), jnp.zeros_like(c), c)

    return jax.tree.map(one, core)


class MemoryCore(nn.Module):
    """One step of an LSTM or a GRU, reset where an episode starts: `(core, x, reset) -> (core, y)`."""

    kind: str = "lstm"
    size: int = 64

    @nn.compact
    def __call__(self, core: Any, x: jax.Array, reset: jax.Array) -> tuple[Any, jax.Array]:
        if self.kind == "lstm":
            cell = nn.OptimizedLSTMCell(self.size, name="lstm")
        elif self.kind == "gru":
            cell = nn.GRUCell(self.size, name="gru")
        else:
            raise ValueError(f"core must be one of {', '.join(CORES)}, got {self.kind!r}")
        return cell(reset_core(core, reset), x)


def set_forget_bias(params: Any, value: float) -> Any:
    """`params` with the forget-gate bias of every LSTM core set to `value`, all else unchanged.

    flax starts every gate bias at 0, so a fresh LSTM keeps half its memory per step (σ(0)) and
    the gradient to a cue T steps back shrinks like 0.5^T; a bias of 1 (Jozefowicz et al. 2015,
    Keras' `unit_forget_bias`) lets memory and its gradient last over long sequences from the
    start of training. GRU parameters have no forget gate and are left as they are.
    """
    flat = traverse_util.flatten_dict(params)
    flat = {k: (jnp.full_like(v, value) if k[-3:] == ("lstm", "hf", "bias") else v) for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat)


class VectorEncoder(nn.Module):
    """Dense layers (orthogonal init, gain √2) over flattened observations of any batch shape."""

    hidden: Sequence[int] = (64,)
    activation: str = "relu"
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        x = as_float(obs).reshape(*obs.shape[: obs.ndim - self.obs_ndim], -1)
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=orthogonal(np.sqrt(2)), bias_init=nn.initializers.zeros)(x))
        return x


class GridEncoder(nn.Module):
    """The MinAtar CNN over `[..., 10, 10, C]` grids of any batch shape."""

    hidden: Sequence[int] = (128,)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        lead = obs.shape[:-3]
        x = MinAtarTorso(tuple(self.hidden), self.activation)(obs.reshape(-1, *obs.shape[-3:]))
        return x.reshape(*lead, x.shape[-1])


class FrameEncoder(nn.Module):
    """The Nature DQN CNN over stacked frames `[..., K, H, W]` (channels first, envpool's layout) of any
    batch shape, then dense layers `hidden` (`(512,)`: the Nature network); uint8 frames are scaled inside."""

    hidden: Sequence[int] = (512,)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        x = NatureCNN(None, channels_first=True)(obs)
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=orthogonal(np.sqrt(2)), bias_init=nn.initializers.zeros)(x))
        return x


ENCODERS = ("auto", "mlp", "cnn", "nature")


def make_encoder(kind: str, hidden: Sequence[int], activation: str, obs_shape: tuple[int, ...]) -> nn.Module:
    """The encoder `kind` for `obs_shape`, followed by dense layers `hidden`: "mlp" for vector observations,
    "nature" (the Nature CNN) for stacked frames `[K, H, W]` such as Atari's `[4, 84, 84]`, "cnn" the CNN
    for the shape (the MinAtar CNN for `[H, W, C]` grids with H, W <= 32, else "nature" for frames, as
    the policy-gradient torsos do), "auto": "cnn" for rank-3 observations, else "mlp"."""
    frames = len(obs_shape) == 3 and obs_shape[0] < min(obs_shape[1:]) and max(obs_shape[1:]) > 32
    if kind == "auto":
        kind = "cnn" if len(obs_shape) == 3 else "mlp"
    if kind == "cnn" and frames:
        kind = "nature"
    if kind == "nature":
        if not frames or min(obs_shape[1:]) < 36:
            raise ValueError(f"the nature encoder takes stacked frames [K, H, W] (channels first, H, W >= 36), "
                             f"got observations of shape {obs_shape}")
        return FrameEncoder(tuple(hidden), activation)
    if kind == "cnn":
        if len(obs_shape) != 3 or max(obs_shape[:2]) > 32:
            raise ValueError(f"the recurrent cnn encoder takes MinAtar-sized grids [H, W, C] (H, W <= 32) or "
                             f"stacked frames [K, H, W] (K < H, W), got observations of shape {obs_shape}")
        return GridEncoder(tuple(hidden), activation)
    if kind != "mlp":
        raise ValueError(f"torso must be one of {', '.join(repr(e) for e in ENCODERS)}, got {kind!r}")
    return VectorEncoder(tuple(hidden), activation, len(obs_shape))


class RecurrentNetwork(nn.Module):
    """`encoder` -> memory core -> `head`, one step: `(obs, core, reset, *head_args) -> (out, core)`.

    `encode`, `recur` and `decode` are the three stages on their own (what `unroll` calls);
    the head gets the core's output and `head_args` (e.g. a noise key).
    """

    encoder: nn.Module
    head: nn.Module
    core_kind: str = "lstm"
    core_size: int = 64

    def setup(self):
        self.core = MemoryCore(self.core_kind, self.core_size)

    def encode(self, obs: jax.Array) -> jax.Array:
        return self.encoder(obs)

    def recur(self, core: Any, x: jax.Array, reset: jax.Array) -> tuple[Any, jax.Array]:
        return self.core(core, x, reset)

    def decode(self, y: jax.Array, *head_args) -> Any:
        return self.head(y, *head_args)

    def __call__(self, obs: jax.Array, core: Any, reset: jax.Array, *head_args) -> tuple[Any, Any]:
        core, y = self.recur(core, self.encode(obs), reset)
        return self.decode(y, *head_args), core

    def initial(self, batch: int) -> Any:
        return initial_core(self.core_kind, self.core_size, batch)


def unroll(net: RecurrentNetwork, params: Any, obs: jax.Array, core: Any, reset: jax.Array, *head_args,
           method: str = "decode", all_cores: bool = False):
    """Apply `net` over a time-major sequence: obs `[T, B, ...]`, reset `[T, B]`, core leaves `[B, ...]`.

    Returns `(outputs [T, B, ...], final core)`, and with `all_cores` also the core state after
    every step (leaves `[T, B, ...]`). `method` names the head method applied to the core's
    outputs (the module's `decode`, or another method taking the core output first).
    """
    x = net.apply(params, obs, method=net.encode)

    def step(c, inputs):
        x_t, reset_t = inputs
        c, y = net.apply(params, c, x_t, reset_t, method=net.recur)
        return c, (y, c) if all_cores else y

    core, ys = jax.lax.scan(step, core, (x, reset))
    cores = None
    if all_cores:
        ys, cores = ys
    out = net.apply(params, ys, *head_args, method=getattr(net, method) if isinstance(method, str) else method)
    return (out, core, cores) if all_cores else (out, core)


def burn_in(net: RecurrentNetwork, params: Any, obs: jax.Array, core: Any, reset: jax.Array) -> Any:
    """The core state after running `net` over `obs [T, B, ...]` from `core`, with no gradient
    (R2D2's burn-in: the stored state is refreshed by the current parameters). `obs` may be a
    pytree of such arrays, as the encoder takes them (e.g. Agent57's `(obs, policy one-hot)`)."""
    if jax.tree.leaves(obs)[0].shape[0] == 0:
        return core
    x = net.apply(params, obs, method=net.encode)

    def step(c, inputs):
        c, _ = net.apply(params, c, *inputs, method=net.recur)
        return c, None

    core, _ = jax.lax.scan(step, core, (x, reset))
    return jax.lax.stop_gradient(core)
