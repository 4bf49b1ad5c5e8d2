"""The NGU / Agent57 family of N policies: intrinsic-reward weights β_j, discounts γ_j, and the
Q-value of policy j from its extrinsic and intrinsic heads.

Policy j acts greedily on `Q_j = h(h⁻¹(Q_e) + β_j h⁻¹(Q_i))` with discount γ_j; j = 0 is the
purely exploitative member (β_0 = 0, the longest horizon γ_max), j = N−1 the most exploratory
(β_max, γ_min). Networks are conditioned on `policy_one_hot(j, N)`; the meta-controller
(`angle_jax.bandits`) chooses j per episode. Imports only `angle_jax.core`.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from angle_jax.core.returns import inverse_value_rescale, value_rescale


def _check_size(num_policies: int) -> None:
    if int(num_policies) < 1:
        raise ValueError(f"num_policies must be >= 1, got {num_policies}")


def betas(num_policies: int, beta_max: float | jax.Array) -> jax.Array:
    """NGU's intrinsic-reward weights `[N]` float32 (Badia et al. 2020b, "Never Give Up", appendix):

        β_j = 0                                     if j = 0
        β_j = β                                     if j = N − 1
        β_j = β · σ(10 (2j − (N − 2)) / (N − 2))    otherwise (σ the logistic sigmoid)

    Most members sit near 0 or near β, with a quick crossing in the middle. Both ends are exact.
    A family of one is the exploitative policy alone: `[0]`.
    """
    _check_size(num_policies)
    n = num_policies
    beta_max = jnp.asarray(beta_max, jnp.float32)
    j = jnp.arange(n, dtype=jnp.float32)
    if n > 2:
        middle = beta_max * jax.nn.sigmoid(10.0 * (2.0 * j - (n - 2)) / (n - 2))
    else:
        middle = jnp.zeros((n,), jnp.float32)  # no member between the two ends
    out = jnp.where(j == n - 1, beta_max, middle)
    return jnp.where(j == 0, 0.0, out).astype(jnp.float32)


def gammas(num_policies: int, gamma_max: float | jax.Array, gamma_min: float | jax.Array) -> jax.Array:
    """NGU's discounts `[N]` float32 (Badia et al. 2020b, appendix), 1 − γ_j log-linear in j:

        γ_j = 1 − exp(((N − 1 − j) log(1 − γ_max) + j log(1 − γ_min)) / (N − 1))

    so γ_0 = γ_max (the β = 0 member looks furthest ahead) and γ_{N−1} = γ_min, both set exactly.
    Computed with log1p / expm1, so γ close to 1 keeps its precision. A family of one: `[γ_max]`.
    """
    _check_size(num_policies)
    n = num_policies
    gamma_max = jnp.asarray(gamma_max, jnp.float32)
    gamma_min = jnp.asarray(gamma_min, jnp.float32)
    if n == 1:
        return jnp.reshape(gamma_max, (1,))
    j = jnp.arange(n, dtype=jnp.float32)
    log_max, log_min = jnp.log1p(-gamma_max), jnp.log1p(-gamma_min)
    out = -jnp.expm1(((n - 1 - j) * log_max + j * log_min) / (n - 1))
    out = jnp.where(j == n - 1, gamma_min, out)
    return jnp.where(j == 0, gamma_max, out).astype(jnp.float32)


def policy_one_hot(j: jax.Array | int, num_policies: int) -> jax.Array:
    """The one-hot `[..., N]` float32 of policy index j (an index outside [0, N) gives zeros)."""
    return jax.nn.one_hot(j, num_policies, dtype=jnp.float32)


def combined_q(q_extrinsic: jax.Array, q_intrinsic: jax.Array, beta: float | jax.Array,
               eps: float | jax.Array = 1e-3) -> jax.Array:
    """Agent57's Q of policy j from its two heads (Badia et al. 2020, "state-action value function
    parameterization"):

        Q_j = h(h⁻¹(Q_e) + β_j h⁻¹(Q_i))

    with h = `core.returns.value_rescale` (and its inverse) of parameter `eps`: each head learns
    its own rescaled values, and the two are summed in return space. q_extrinsic, q_intrinsic:
    `[..., A]`; beta: a scalar or `[...]` (one β per row), broadcast over the actions.
    """
    chex.assert_equal_shape([q_extrinsic, q_intrinsic])
    beta = jnp.asarray(beta, jnp.float32)
    if beta.ndim:
        chex.assert_shape(beta, q_extrinsic.shape[:-1])
        beta = beta[..., None]
    returns = inverse_value_rescale(q_extrinsic, eps) + beta * inverse_value_rescale(q_intrinsic, eps)
    return value_rescale(returns, eps)


def check_family(betas: np.ndarray, gammas: np.ndarray, num_policies: int) -> None:
    """Raise ValueError (one line) unless `betas` and `gammas` are `[num_policies]`, every β is
    finite and >= 0 and every γ in (0, 1). For concrete values, before anything is compiled."""
    _check_size(num_policies)
    b, g = np.asarray(betas, np.float64), np.asarray(gammas, np.float64)
    if b.shape != (num_policies,):
        raise ValueError(f"betas must have shape ({num_policies},), got {b.shape}")
    if g.shape != (num_policies,):
        raise ValueError(f"gammas must have shape ({num_policies},), got {g.shape}")
    bad = np.flatnonzero(~(np.isfinite(b) & (b >= 0.0)))
    if bad.size:
        raise ValueError(f"betas must be finite and >= 0, got {b[bad[0]]} at index {bad[0]}")
    bad = np.flatnonzero(~((g > 0.0) & (g < 1.0)))
    if bad.size:
        raise ValueError(f"gammas must be in (0, 1), got {g[bad[0]]} at index {bad[0]}")
