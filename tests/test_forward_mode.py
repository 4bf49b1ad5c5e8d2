"""Forward-mode differentiation (`jax.jvp`, `jax.hessian`) through every network and every
algorithm's update with the plain kernels, checked against reverse mode; the CPU kernels are
reverse-mode only and say so."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import a2c, ddpg, dqn, ppo, rainbow, rnd, sac, td3
from angle_jax.core.optim import get_hparams, set_hparams
from angle_jax.core.types import Rollout, Transition
from angle_jax.networks import (MLP, ActorCritic, Critic, DeterministicActor, MinAtarTorso, NatureCNN, NoisyDense,
                                QEnsemble, QNetwork, SquashedGaussianActor)
from angle_jax.xla_cpu import CPU

K = jax.random.PRNGKey


def _vec(shape, seed):
    return jax.random.normal(K(seed), shape)


def _frames(shape, seed):
    return jax.random.randint(K(seed), shape, 0, 2).astype(jnp.uint8)


# name -> (module, example inputs, extra apply kwargs)
NETWORKS = {
    "mlp": (MLP((8, 8), "swish", 3), (_vec((4, 5), 0),), {}),
    "deterministic_actor": (DeterministicActor(2, (8,)), (_vec((4, 3), 0),), {}),
    "q_ensemble": (QEnsemble(2, (8,)), (_vec((4, 3), 0), _vec((4, 2), 1)), {}),
    "squashed_gaussian_actor": (SquashedGaussianActor(2, (8,)), (_vec((4, 3), 0),), {}),
    "actor_critic_discrete": (ActorCritic(3, True, (8,)), (_vec((4, 5), 0),), {}),
    "actor_critic_continuous_shared": (ActorCritic(2, False, (8,), shared_torso=True), (_vec((4, 5), 0),), {}),
    "actor_critic_minatar": (ActorCritic(3, True, (8,), activation="relu"), (_frames((2, 10, 10, 4), 0),), {}),
    "critic": (Critic((8,)), (_vec((4, 5), 0),), {}),
    "q_network": (QNetwork(3, (8,)), (_vec((4, 5), 0),), {}),
    "q_network_rainbow": (QNetwork(3, (8,), dueling=True, noisy=True, num_atoms=5), (_vec((4, 5), 0), K(3)), {}),
    "nature_cnn": (NatureCNN(16), (_frames((2, 4, 36, 36), 0),), {}),
    "minatar_torso": (MinAtarTorso((8,)), (_frames((2, 10, 10, 4), 0),), {}),
    "noisy_dense": (NoisyDense(3), (_vec((4, 5), 0), K(4)), {}),
    "rnd_embedding": (rnd.Embedding((8,), 4, "relu", 1, "mlp"), (_vec((4, 5), 0),), {}),
}


def _scalar(tree) -> jax.Array:
    """A fixed smooth scalar function of every float leaf of `tree` (so its derivatives are generic)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return sum(jnp.sum(jnp.sin(1.3 * x + 0.1 * i)) for i, x in enumerate(leaves))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_jvp_and_hessian_through_every_network(name):
    net, args, kwargs = NETWORKS[name]
    params = net.init(K(1), *args, **kwargs)

    def f(p):
        return _scalar(net.apply(p, *args, **kwargs))

    def g(s):  # the same function along a ray of parameter scales, for the second order
        return f(jax.tree.map(lambda p: s * p, params))

    @jax.jit  # one program for all four derivatives: one compile
    def derivatives(p, t, s):
        value, forward = jax.jvp(f, (p,), (t,))
        reverse = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(jax.grad(f)(p)), jax.tree.leaves(t)))
        return value, forward, reverse, jax.hessian(g)(s), jax.grad(jax.grad(g))(s)

    tangent = jax.tree.map(lambda p: jax.random.normal(K(2), p.shape, p.dtype), params)
    value, forward, reverse, hessian, rev_rev = derivatives(params, tangent, jnp.float32(0.9))
    assert np.isfinite(float(value))
    np.testing.assert_allclose(float(forward), float(reverse), rtol=2e-4, atol=1e-4)
    # forward over reverse (jax.hessian) against reverse over reverse
    np.testing.assert_allclose(float(hessian), float(rev_rev), rtol=2e-3, atol=1e-3)


# ---- algorithms: forward-mode meta-gradients through a whole update -----------------------------------

def _pendulum_batch(spec, b=16):
    key = K(5)
    return Transition(jax.random.normal(key, (b, *spec.obs_shape)),
                      jax.random.uniform(key, (b, spec.action_dim), minval=-1, maxval=1),
                      jax.random.normal(K(6), (b,)), jnp.zeros(b, bool).at[3].set(True), jnp.zeros(b, bool),
                      jax.random.normal(K(7), (b, *spec.obs_shape)))


def _cartpole_batch(spec, b=16):
    return Transition(jax.random.normal(K(5), (b, *spec.obs_shape)),
                      jax.random.randint(K(6), (b,), 0, spec.action_dim),
                      jnp.ones(b), jnp.zeros(b, bool).at[2].set(True), jnp.zeros(b, bool),
                      jax.random.normal(K(7), (b, *spec.obs_shape)))


def _rollout(spec, t=8, continuous=False):
    n = spec.num_envs
    obs = jax.random.normal(K(5), (t, n, *spec.obs_shape))
    action = (jax.random.normal(K(6), (t, n, spec.action_dim)) if continuous
              else jax.random.randint(K(6), (t, n), 0, spec.action_dim))
    z = jnp.zeros((t, n))
    return Rollout(obs, action, z + 1.0, (z.at[3, 0].set(1.0)).astype(bool), z.astype(bool),
                   jax.random.normal(K(7), (t, n, *spec.obs_shape)), z)


def _setting(name):
    pendulum, cartpole = registry.make_env("Pendulum-v1", 2).spec, registry.make_env("CartPole-v1", 2).spec
    small = dict(actor_hidden=(8,), critic_hidden=(8,))
    if name == "td3":
        return td3.make(td3.Config(**small, policy_delay=1), pendulum), pendulum, _pendulum_batch(pendulum), \
            ("critic_lr", "gamma")
    if name == "sac":
        return sac.make(sac.Config(**small), pendulum), pendulum, _pendulum_batch(pendulum), ("critic_lr", "gamma")
    if name == "ddpg":
        return ddpg.make(ddpg.Config(**small), pendulum), pendulum, _pendulum_batch(pendulum), ("critic_lr", "gamma")
    if name == "dqn":
        config = dqn.Config(hidden=(8,), double=True, target_update_interval=1, tau=0.5)
        return dqn.make(config, cartpole), cartpole, _cartpole_batch(cartpole), ("learning_rate", "tau")
    if name == "rainbow":
        config = rainbow.Config(hidden=(8,), num_atoms=5, target_update_interval=1)
        return rainbow.SPEC.make(config, cartpole), cartpole, _cartpole_batch(cartpole), ("learning_rate", "gamma")
    if name == "ppo":
        config = ppo.Config(hidden=(8,), rollout_length=4, epochs=1, minibatches=1)
        return ppo.make(config, cartpole, total_steps=1000), cartpole, _rollout(cartpole, t=4), \
            ("learning_rate", "gae_lambda")
    config = a2c.Config(hidden=(8,), rollout_length=4)
    return a2c.make(config, pendulum), pendulum, _rollout(pendulum, t=4, continuous=True), ("learning_rate", "gamma")


ALGOS = ["td3", "sac", "ddpg", "dqn", "rainbow", "ppo", "a2c_continuous"]


def _float64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@pytest.mark.parametrize("name", ALGOS)
def test_forward_mode_meta_gradients_and_hessians_through_every_update(name):
    """The new parameters after one `update`, as a function of traced hyperparameters η:
    `jax.jvp` equals the reverse-mode directional derivative, and `jax.hessian` (forward over
    reverse) is symmetric and its learning-rate entry equals central differences of the
    reverse-mode gradient. In float64, so that the differences resolve the curvature."""
    algo, spec, batch, names = _setting(name)
    assert algo.kernels.name == "xla"
    with jax.enable_x64(True):
        state = _float64(algo.init(K(0), spec))
        batch = _float64(batch)
        eta0 = {n: jnp.asarray(v, jnp.float64) for n, v in get_hparams(state, names).items()}

        def f(eta, warm):
            new, metrics = algo.update(set_hparams(warm, eta), batch, K(9))
            params = [getattr(new, a) for a in ("params", "critic_params", "actor_params") if hasattr(new, a)]
            return _scalar(params)

        @jax.jit  # one program for the three derivatives: one compile
        def derivatives(eta, t):
            # two updates first, so that Adam's moments are not those of a fresh state
            warm = jax.lax.scan(lambda st, k: (algo.update(st, batch, k)[0], None), state,
                                jax.random.split(K(8), 2))[0]
            _, forward = jax.jvp(lambda e: f(e, warm), (eta,), (t,))
            return forward, jax.grad(f)(eta, warm), jax.hessian(f)(eta, warm)

        tangent = {n: jnp.float64(0.5 + i) for i, n in enumerate(names)}
        forward, grads, hessian = derivatives(eta0, tangent)
        reverse = sum(grads[n] * tangent[n] for n in names)
        np.testing.assert_allclose(float(forward), float(reverse), rtol=1e-6, atol=1e-9)
        lr = names[0]
        assert abs(float(grads[lr])) > 0
        for a in names:
            for b in names:
                h_ab, h_ba = float(hessian[a][b]), float(hessian[b][a])
                assert np.isfinite(h_ab), (a, b)
                np.testing.assert_allclose(h_ab, h_ba, rtol=1e-6, atol=1e-9, err_msg=f"{a},{b}")
        h = 1e-4 * float(eta0[lr])
        grad_at = lambda x: float(derivatives({**eta0, lr: x}, tangent)[1][lr])  # noqa: E731
        central = (grad_at(eta0[lr] + h) - grad_at(eta0[lr] - h)) / (2 * h)
        np.testing.assert_allclose(float(hessian[lr][lr]), central, rtol=1e-5)


def test_cpu_kernels_are_reverse_mode_only():
    """With `kernels: cpu` the dense layers have a custom backward pass: reverse mode (and reverse
    over reverse) works, forward mode is refused by JAX."""
    net = MLP((8,), "relu", 2)
    x = _vec((4, 3), 0)
    params = net.init(K(1), x)
    apply = CPU.bind(net.apply)
    f = lambda p: jnp.sum(apply(p, x) ** 2)  # noqa: E731
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(jax.grad(f)(params)))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f, (params,), (params,))
