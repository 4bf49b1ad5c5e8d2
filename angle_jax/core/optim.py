"""Optimizer steps and traced hyperparameters, shared by every algorithm.

Learning rates, γ, τ and noise scales live in an agent state's `hparams` (a struct
dataclass or a dict of scalars), so sweeps vmap them and meta-gradients differentiate
them. Optimizers therefore produce only a *direction*; `apply_gradients` scales it by a
traced learning rate. `get_hparams` / `set_hparams` are the one way to read and write them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax


def direction_optimizer(max_grad_norm: float = 0.0, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam's direction without a learning rate (optional global-norm clipping first); the
    step size is applied by `apply_gradients` from a traced hyperparameter."""
    parts = []
    if max_grad_norm and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    # eps_root keeps d sqrt(v)/dv finite where a gradient is exactly zero (dead ReLU units):
    # without it, meta-gradients through this step are NaN (optax documents the same).
    parts.append(optax.scale_by_adam(eps=eps, eps_root=1e-16))
    return optax.chain(*parts)


def apply_gradients(tx: optax.GradientTransformation, params: Any, opt_state: Any,
                    grads: Any, learning_rate: jax.Array) -> tuple[Any, Any]:
    """One descent step of size `learning_rate` along `tx`'s direction."""
    direction, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, d: p - learning_rate * d, params, direction)
    return params, opt_state


def linear_decay(value: jax.Array, step: jax.Array, horizon: int | None) -> jax.Array:
    """`value` decayed linearly to 0 over `horizon` steps (and 0 after); `horizon` None or 0:
    `value` unchanged. The learning-rate annealing of every algorithm that has one."""
    if not horizon:
        return value
    return value * jnp.maximum(1.0 - jnp.asarray(step, jnp.float32) / horizon, 0.0)


def maybe_pmean(tree: Any, axis_name: str | None) -> Any:
    """Average over a mapped device axis when one is named (data-parallel training)."""
    if axis_name is None:
        return tree
    return jax.lax.pmean(tree, axis_name)


def gradient_step(objective: Callable[[Any], tuple[jax.Array, Any]], tx: optax.GradientTransformation,
                  params: Any, opt_state: Any, learning_rate: jax.Array, axis_name: str | None = None):
    """One optimizer step on `objective(params) -> (loss, aux)`; returns (params, opt_state, loss, aux).

    Gradients are averaged over `axis_name` when one is given (data-parallel training).
    """
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    grads = maybe_pmean(grads, axis_name)
    params, opt_state = apply_gradients(tx, params, opt_state, grads, learning_rate)
    return params, opt_state, loss, aux


def polyak_update(online: Any, target: Any, tau: jax.Array) -> Any:
    """target <- tau * online + (1 - tau) * target, leaf by leaf (tau = 1 copies exactly)."""
    return jax.tree.map(lambda o, t: tau * o + (1.0 - tau) * t, online, target)


# ---- traced hyperparameters ---------------------------------------------------------

def hparams_from_config(cls: type, config: Any) -> Any:
    """Build the traced hyperparameter pytree `cls` from same-named config fields."""
    return cls(**{f.name: jnp.asarray(getattr(config, f.name), jnp.float32) for f in dataclasses.fields(cls)})


def hparam_names(agent_state: Any) -> tuple[str, ...]:
    """Field names of `agent_state.hparams` (a struct dataclass or a dict); () when it has none."""
    hp = getattr(agent_state, "hparams", None)
    if isinstance(hp, Mapping):
        return tuple(hp)
    if dataclasses.is_dataclass(hp):
        return tuple(f.name for f in dataclasses.fields(hp))
    return ()


def get_hparams(agent_state: Any, names: Sequence[str]) -> dict:
    """The named traced hyperparameters of `agent_state`."""
    hp = agent_state.hparams
    if isinstance(hp, Mapping):
        return {n: hp[n] for n in names}
    return {n: getattr(hp, n) for n in names}


def set_hparams(agent_state: Any, values: Mapping[str, jax.Array]) -> Any:
    """A copy of `agent_state` whose named hparams take `values`, each cast to the old leaf's
    dtype and broadcast to its shape; every other field is untouched (differentiable in `values`)."""
    if not values:
        return agent_state
    old = get_hparams(agent_state, tuple(values))
    new = {n: jnp.broadcast_to(jnp.asarray(v).astype(jnp.result_type(old[n])), jnp.shape(old[n]))
           for n, v in values.items()}
    hp = agent_state.hparams
    hp = {**hp, **new} if isinstance(hp, Mapping) else hp.replace(**new)
    return agent_state.replace(hparams=hp)
