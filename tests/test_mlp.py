"""MLP runs its layers as `dense_stack` once initialised: same function, same derivatives."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.networks.mlp import MLP, QEnsemble, activation


def reference(params, x, act_name, linear_last):
    """The dense chain written out from the same parameters (the flax `nn.Dense` semantics)."""
    act = activation(act_name)
    n = len(params)
    for i in range(n):
        layer = params[f"Dense_{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        if i + 1 < n or not linear_last:
            x = act(x)
    return x


def perturbed(params):
    return jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)


@pytest.mark.parametrize("act", ["relu", "swish", "tanh"])
@pytest.mark.parametrize("out", [None, 3])
def test_mlp_matches_the_dense_chain(act, out):
    net = MLP((8, 8), act, out)
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 4, 6))
    params = perturbed(net.init(jax.random.PRNGKey(0), x))

    def stacked(p, x):
        return net.apply(p, x)

    def plain(p, x):
        return reference(p["params"], x, act, out is not None)

    def loss(f):
        return lambda p, x, s: jnp.sum(jnp.sin(s * f(p, x)))

    chex.assert_trees_all_close(stacked(params, x), plain(params, x), atol=1e-6)
    chex.assert_shape(stacked(params, x), (5, 4, out or 8))
    for f in (jax.jit, lambda g: g):  # under jit and eagerly
        chex.assert_trees_all_close(f(jax.grad(loss(stacked), argnums=(0, 1)))(params, x, 1.0),
                                    jax.grad(loss(plain), argnums=(0, 1))(params, x, 1.0), atol=1e-5)

    def second(f):  # reverse over the hand-written backward pass, as meta-gradients do
        g = jax.grad(loss(f))
        return jax.grad(lambda s: sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g(params, x, s))))(1.0)

    np.testing.assert_allclose(second(stacked), second(plain), rtol=1e-4)


def test_critic_ensemble_gradients_match_per_member_chains():
    """Twin critics (nn.vmap over the members) through dense_stack: values, gradients in the
    parameters and in the action (what the deterministic policy loss uses)."""
    critic = QEnsemble(num_members=2, hidden=(8, 8), activation="swish")
    obs, action = jax.random.normal(jax.random.PRNGKey(3), (7, 3)), jax.random.normal(jax.random.PRNGKey(4), (7, 2))
    params = perturbed(critic.init(jax.random.PRNGKey(0), obs, action))

    def plain(p, obs, action):
        x = jnp.concatenate([obs, action], axis=-1)
        members = p["params"]["VmapMLP_0"]
        return jnp.stack([reference(jax.tree.map(lambda a: a[m], members), x, "swish", True)[:, 0]
                          for m in range(2)])

    def loss(f):
        return lambda p, a: jnp.sum(jnp.cos(f(p, obs, a)))

    chex.assert_trees_all_close(critic.apply(params, obs, action), plain(params, obs, action), atol=1e-6)
    chex.assert_trees_all_close(jax.grad(loss(critic.apply), argnums=(0, 1))(params, action),
                                jax.grad(loss(plain), argnums=(0, 1))(params, action), atol=1e-5)
