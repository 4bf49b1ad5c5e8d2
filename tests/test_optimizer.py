import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from angle_jax.core.optim import apply_gradients, direction_optimizer
from angle_jax.xla_cpu import flattened


def _tree(key, shapes):
    keys = jax.random.split(key, len(shapes))
    return {f"w{i}": jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}


@pytest.mark.parametrize("shapes", [[(3, 4), (4,), (2, 5, 5)],            # small leaves only: one vector
                                    [(200, 100), (100,), (3, 100)],         # one big leaf beside small ones
                                    [(130, 130), (129, 129)]])              # big leaves only
@pytest.mark.parametrize("jit", [False, True])
def test_flattened_adam_equals_leaf_by_leaf_adam(shapes, jit):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam())
    flat = flattened(tx, big_leaf_size=10_000)
    params = _tree(jax.random.PRNGKey(0), shapes)
    flat_state, state = flat.init(params), tx.init(params)
    step = jax.jit(lambda t, g, s, p: t.update(g, s, p), static_argnums=0) if jit else (
        lambda t, g, s, p: t.update(g, s, p))
    for i in range(3):
        grads = jax.tree.map(lambda p: 3.0 * p + i, _tree(jax.random.PRNGKey(i + 1), shapes))
        u_flat, flat_state = step(flat, grads, flat_state, params)
        u, state = step(tx, grads, state, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(u_flat, u)
        chex.assert_trees_all_close(u_flat, u, rtol=1e-5, atol=1e-6)
        params = jax.tree.map(lambda p, d: p - 0.1 * d, params, u)
    # one vector per group of leaves (small, big), not one state per leaf
    sizes = {x.size for x in jax.tree.leaves(flat_state) if x.ndim == 1}
    small = sum(x.size for x in jax.tree.leaves(params) if x.size < 10_000)
    big = sum(x.size for x in jax.tree.leaves(params) if x.size >= 10_000)
    assert sizes == {s for s in (small, big) if s}


def test_direction_optimizer_step_moves_params_against_the_gradient():
    params = {"w": jnp.ones((3,)), "b": jnp.zeros(())}
    tx = direction_optimizer(max_grad_norm=10.0)
    grads = {"w": jnp.array([1.0, -1.0, 0.0]), "b": jnp.array(2.0)}
    new, _ = apply_gradients(tx, params, tx.init(params), grads, jnp.array(0.1))
    assert float(new["w"][0]) < 1.0 < float(new["w"][1]) and float(new["w"][2]) == 1.0 and float(new["b"]) < 0.0


def test_linear_decay_hand_computed():
    from angle_jax.core.optim import linear_decay

    values = [float(linear_decay(jnp.float32(2.0), jnp.int32(s), 4)) for s in (0, 1, 2, 4, 9)]
    np.testing.assert_allclose(values, [2.0, 1.5, 1.0, 0.0, 0.0])
    assert float(linear_decay(jnp.float32(2.0), jnp.int32(7), 0)) == 2.0
    assert float(linear_decay(jnp.float32(2.0), jnp.int32(7), None)) == 2.0
