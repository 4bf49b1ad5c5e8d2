"""Fully connected networks: torso, deterministic actor, critic ensemble."""
from __future__ import annotations

import functools
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


def flatten_obs(obs: jax.Array, obs_ndim: int) -> jax.Array:
    """Float32 observations with all observation axes flattened into one."""
    batch_shape = obs.shape[: obs.ndim - obs_ndim]
    return obs.reshape(*batch_shape, -1).astype(jnp.float32)


class MLP(nn.Module):
    """Dense layers with an activation between them; `out` adds a linear head."""

    hidden: Sequence[int]
    activation: str = "relu"
    out: int | None = None
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        act = activation(self.activation)
        if not self.is_initializing():
            return self._stacked(x, act)
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        if self.out is not None:
            init = nn.initializers.variance_scaling(self.out_scale, "fan_avg", "uniform")
            x = nn.Dense(self.out, kernel_init=init)(x)
        return x

    def _stacked(self, x, act):
        """The same layers as one `dense_stack` over the `nn.Dense` parameters (faster
        gradients on CPU); the activation after a last hidden layer stays outside it."""
        num = len(self.hidden) + (self.out is not None)
        if num == 0:
            return x
        params = self.variables["params"]
        layers = tuple((params[f"Dense_{i}"]["kernel"], params[f"Dense_{i}"]["bias"]) for i in range(num))
        y = dense_stack(self.activation, layers, x.reshape(-1, x.shape[-1]))
        if self.out is None:
            y = act(y)
        return y.reshape(*x.shape[:-1], y.shape[-1])


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
        x = jnp.concatenate([flatten_obs(obs, self.obs_ndim), action.astype(jnp.float32)], axis=-1)
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_members,
        )
        return ensemble(self.hidden, self.activation, 1)(x)[..., 0]


# ---- a dense stack whose backward pass runs feature-major -------------------------------

def _derivative_from_output(name: str):
    """act'(z) written in the activation's output h = act(z), for activations that allow it."""
    if name == "tanh":
        return lambda h: 1.0 - jnp.square(h)
    if name == "relu":
        return lambda h: (h > 0).astype(h.dtype)
    return None


def _stack_forward(act_name: str, layers, x):
    act = activation(act_name)
    inputs, pre = [], []
    for i, (kernel, bias) in enumerate(layers):
        inputs.append(x)
        z = x @ kernel + bias
        pre.append(z)
        x = act(z) if i + 1 < len(layers) else z
    return x, inputs, pre


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense_stack(act_name: str, layers, x):
    """`x @ W_0 + b_0 -> act -> ... -> x @ W_L + b_L` over 2-D `x` `[B, in]`; `layers` is a
    tuple of `(kernel [in, out], bias [out])`, the activation follows every layer but the last.

    The same function as a chain of `nn.Dense`, with a hand-written backward pass for CPU
    speed. Autodiff's kernel gradient `x^T g` contracts the batch axis, the major one of
    both operands, which XLA:CPU runs through a generic dot (1.5x slower than its YNNPACK
    path for 64x64 layers on a batch of 100, 4x for a small head). Here one operand of each
    kernel gradient is transposed first (the narrower one: the layer input into hidden
    layers, the cotangent into a small head), so every product of the backward pass
    contracts the minor axis of its left operand. Reverse-over-reverse differentiation
    (meta-gradients) goes through the hand-written backward pass like any JAX code.
    """
    return _stack_forward(act_name, layers, x)[0]


def _transpose_input(kernel) -> bool:
    """Which operand of a layer's kernel gradient to transpose: the input if it is the narrower
    (e.g. observations into a hidden layer), else the cotangent (e.g. into a small head)."""
    return kernel.shape[0] <= kernel.shape[1]


def _stack_fwd(act_name, layers, x):
    out, inputs, pre = _stack_forward(act_name, layers, x)
    hidden = inputs[1:]  # act(pre[i]) is the input of layer i + 1
    # the barriers keep XLA from folding these transposes back into the products
    inputs = [jax.lax.optimization_barrier(v.T) if _transpose_input(w) else v
              for v, (w, _) in zip(inputs, layers)]
    return out, (layers, inputs, hidden, pre)


def _stack_bwd(act_name, res, g):
    layers, inputs, hidden, pre = res
    from_output = _derivative_from_output(act_name)
    act = activation(act_name)
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        kernel = layers[i][0]
        if i + 1 < len(layers):
            if from_output is not None:
                g = g * from_output(hidden[i])
            else:
                g = jax.vjp(act, pre[i])[1](g)[0]
        if _transpose_input(kernel):
            kernel_grad = inputs[i] @ g  # [in, B] @ [B, out]
        else:
            g_t = jax.lax.optimization_barrier(g.T)
            kernel_grad = jax.lax.optimization_barrier(g_t @ inputs[i]).T  # [out, B] @ [B, in], transposed
        grads[i] = (kernel_grad, jnp.sum(g, axis=0))
        g = g @ kernel.T  # [B, in]
    return tuple(grads), g


dense_stack.defvjp(_stack_fwd, _stack_bwd)
