import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.core.kernels import XLA
from angle_jax.networks.mlp import MLP, QEnsemble, activation
from angle_jax.xla_cpu import CPU


def _layers_by_hand(params, x, act_name, has_out):
    """The MLP written out with plain jnp ops over its `nn.Dense` parameters."""
    act = activation(act_name)
    names = sorted(params, key=lambda n: int(n.split("_")[1]))
    for i, name in enumerate(names):
        x = x @ params[name]["kernel"] + params[name]["bias"]
        if i + 1 < len(names) or not has_out:
            x = act(x)
    return x


@pytest.mark.parametrize("kernels", [XLA, CPU], ids=lambda k: k.name)
@pytest.mark.parametrize("act,out,shape,hidden", [("swish", 3, (6, 5, 4), (16, 8)), ("relu", None, (7, 4), (16, 8)),
                                                  ("tanh", 1, (4,), (16, 8)), ("relu", 8, (7, 4), ())])
def test_mlp_equals_its_layers_written_out_in_values_and_gradients(act, out, shape, hidden, kernels):
    """The plain MLP and the MLP applied through the CPU kernels' dense layers, against jnp."""
    net = MLP(hidden, act, out)
    apply = kernels.bind(net.apply)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    x = jax.random.normal(jax.random.PRNGKey(2), shape)

    def by_hand(p, x):
        return _layers_by_hand(p["params"], x, act, out is not None)

    def loss(apply):
        return lambda p, scale: jnp.sum(jnp.sin(scale * apply(p, x)))

    y = jax.jit(apply)(params, x)
    assert y.shape == (*shape[:-1], out or (hidden[-1] if hidden else shape[-1]))
    chex.assert_trees_all_close(y, by_hand(params, x), atol=1e-6)
    chex.assert_trees_all_close(jax.grad(loss(apply))(params, 1.0), jax.grad(loss(by_hand))(params, 1.0),
                                atol=1e-5)

    def second(apply):  # reverse over the hand-written backward pass, as meta-gradients do
        return jax.grad(lambda s: sum(jnp.sum(g ** 2) for g in jax.tree.leaves(jax.grad(loss(apply))(params, s))))(1.0)

    np.testing.assert_allclose(second(apply), second(by_hand), rtol=1e-4)
    if kernels is CPU and hidden:  # the kernel is applied, and its backward pass (with its barriers) differentiated
        assert "custom_vjp_call" in str(jax.make_jaxpr(apply)(params, x))
        assert "optimization_barrier" in str(jax.make_jaxpr(jax.grad(loss(apply)))(params, 1.0))


def test_mlp_without_layers_is_the_identity():
    x = jnp.arange(6.0).reshape(2, 3) - 3.0
    net = MLP((), "relu", None)
    np.testing.assert_array_equal(net.apply(net.init(jax.random.PRNGKey(0), x), x), x)


def test_q_ensemble_members_match_their_layers_written_out():
    critic = QEnsemble(num_members=3, hidden=(16, 16), activation="swish")
    obs, action = jax.random.normal(jax.random.PRNGKey(3), (5, 3)), jax.random.normal(jax.random.PRNGKey(4), (5, 2))
    params = critic.init(jax.random.PRNGKey(0), obs, action)
    q = critic.apply(params, obs, action)
    assert q.shape == (3, 5)
    x = jnp.concatenate([obs, action], axis=-1)
    for m in range(3):
        member = jax.tree.map(lambda p: p[m], params["params"]["VmapMLP_0"])
        np.testing.assert_allclose(q[m], _layers_by_hand(member, x, "swish", True)[:, 0], atol=1e-6)
