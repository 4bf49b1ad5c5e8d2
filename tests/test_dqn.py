"""DQN / Rainbow: targets, C51 projection, noisy and dueling heads, config checks, learning on CartPole."""
import dataclasses
import functools
import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.algos import dqn, rainbow
from angle_jax.core.types import Transition
from angle_jax.config import load_config
from angle_jax.envs.base import Box, Discrete, EnvSpec
from angle_jax.networks.heads import NoisyDense, QNetwork, dueling_combine, resolve_torso
from angle_jax.training.off_policy import OffPolicyLoop, make_train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
VECTOR_SPEC = EnvSpec("vec", (4,), "float32", Discrete(2), num_envs=2, max_episode_steps=50)
MINATAR_SPEC = EnvSpec("grid", (10, 10, 4), "uint8", Discrete(3), num_envs=2, max_episode_steps=50)


# ---- targets ------------------------------------------------------------------------

class TargetTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_double_q_selects_with_online_evaluates_with_target(self):
        online = jnp.asarray([[5.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
        target = jnp.asarray([[1.0, 9.0, 3.0], [4.0, 7.0, -1.0]])
        returns = jnp.asarray([1.0, 0.5])
        discount = jnp.asarray([0.9, 0.0])
        double = self.variant(dqn.double_q_target)(online, target, returns, discount)
        np.testing.assert_allclose(np.asarray(double), [1.0 + 0.9 * 1.0, 0.5])     # target[a*=0], terminal
        plain = self.variant(dqn.q_learning_target)(target, returns, discount)
        np.testing.assert_allclose(np.asarray(plain), [1.0 + 0.9 * 9.0, 0.5])      # max of target

    @chex.variants(with_jit=True, without_jit=True)
    def test_categorical_projection_hand_computed(self):
        support = jnp.linspace(0.0, 4.0, 5)                          # atoms 0..4, Δz = 1
        onehot = lambda j: jnp.eye(5)[j]
        probs = jnp.stack([onehot(1), onehot(1), onehot(3), onehot(0), onehot(2)])
        returns = jnp.asarray([0.5, 1.0, 10.0, 2.3, -7.0])
        discount = jnp.asarray([1.0, 1.0, 0.9, 0.0, 0.5])
        out = np.asarray(self.variant(dqn.categorical_projection)(probs, support, returns, discount))
        expected = np.array([
            [0, 0.5, 0.5, 0, 0],     # 0.5 + 1 = 1.5: split between atoms 1 and 2
            [0, 0, 1.0, 0, 0],       # lands exactly on atom 2
            [0, 0, 0, 0, 1.0],       # clipped at v_max
            [0, 0, 0.7, 0.3, 0],     # terminal: the return 2.3 alone
            [1.0, 0, 0, 0, 0],       # clipped at v_min
        ])
        np.testing.assert_allclose(out, expected, atol=1e-6)

    def test_categorical_projection_matches_reference_and_conserves_mass(self):
        rng = np.random.default_rng(0)
        atoms, batch = 11, 64
        support = np.linspace(-3.0, 5.0, atoms)
        probs = rng.dirichlet(np.ones(atoms), size=batch)
        returns = rng.uniform(-6, 8, size=batch)
        discount = rng.choice([0.0, 0.5, 0.99, 1.0], size=batch)
        out = np.asarray(dqn.categorical_projection(*(jnp.asarray(x, jnp.float32)
                                                      for x in (probs, support, returns, discount))))
        # floor/ceil reference (Bellemare et al. 2017, Algorithm 1)
        dz = (support[-1] - support[0]) / (atoms - 1)
        ref = np.zeros((batch, atoms))
        for b in range(batch):
            for i in range(atoms):
                tz = np.clip(returns[b] + discount[b] * support[i], support[0], support[-1])
                pos = (tz - support[0]) / dz
                lo, hi = int(np.floor(pos)), int(np.ceil(pos))
                if lo == hi:
                    ref[b, lo] += probs[b, i]
                else:
                    ref[b, lo] += probs[b, i] * (hi - pos)
                    ref[b, hi] += probs[b, i] * (pos - lo)
        np.testing.assert_allclose(out, ref, atol=1e-5)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
        assert out.min() >= 0.0

    def test_categorical_double_selects_with_online(self):
        support = jnp.asarray([0.0, 1.0])
        # online prefers action 0, target prefers action 1; their distributions differ
        online = jnp.log(jnp.asarray([[[0.1, 0.9], [0.9, 0.1]]]))
        target = jnp.log(jnp.asarray([[[0.7, 0.3], [0.2, 0.8]]]))
        zero = jnp.zeros(1)
        double = dqn.categorical_double_q_target(online, target, zero, jnp.ones(1), support)
        np.testing.assert_allclose(np.asarray(double), [[0.7, 0.3]], atol=1e-6)   # target's dist of a*=0
        plain = dqn.categorical_q_target(target, zero, jnp.ones(1), support)
        np.testing.assert_allclose(np.asarray(plain), [[0.2, 0.8]], atol=1e-6)    # target's own greedy a=1
        loss = dqn.categorical_loss(jnp.log(jnp.asarray([[0.7, 0.3]])), double)
        np.testing.assert_allclose(float(loss[0]), -(0.7 * math.log(0.7) + 0.3 * math.log(0.3)), rtol=1e-5)

    def test_td_loss(self):
        td = jnp.asarray([0.5, -2.0])
        np.testing.assert_allclose(np.asarray(dqn.td_loss(td, "huber")), [0.125, 1.5])
        np.testing.assert_allclose(np.asarray(dqn.td_loss(td, "mse")), [0.125, 2.0])


# ---- acting ---------------------------------------------------------------------------

def test_epsilon_schedule_and_greedy():
    sched = [float(dqn.epsilon_schedule(s, 1.0, 0.1, 1000.0)) for s in (0, 250, 1000, 10**7)]
    np.testing.assert_allclose(sched, [1.0, 0.775, 0.1, 0.1], rtol=1e-6)
    assert float(dqn.epsilon_schedule(5, 1.0, 0.1, 0.0)) == pytest.approx(0.1)
    q = jnp.tile(jnp.asarray([[0.0, 3.0, 1.0, 2.0]]), (4000, 1))
    greedy = dqn.epsilon_greedy(q, jax.random.PRNGKey(0), 0.0)
    assert np.all(np.asarray(greedy) == 1)
    uniform = np.asarray(dqn.epsilon_greedy(q, jax.random.PRNGKey(1), 1.0))
    np.testing.assert_allclose(np.bincount(uniform, minlength=4) / 4000, 0.25, atol=0.03)
    mixed = np.asarray(dqn.epsilon_greedy(q, jax.random.PRNGKey(2), 0.4))
    np.testing.assert_allclose(np.mean(mixed == 1), 0.6 + 0.4 / 4, atol=0.03)


# ---- networks -------------------------------------------------------------------------

def test_noisy_dense_resamples_per_key_and_mean_mode():
    layer = NoisyDense(5, sigma0=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)
    p = params["params"]
    apply = jax.jit(layer.apply)
    y_mean = apply(params, x)
    np.testing.assert_allclose(np.asarray(y_mean), np.asarray(x @ p["mu_kernel"] + p["mu_bias"]), rtol=1e-5)
    y1 = apply(params, x, jax.random.PRNGKey(2))
    y1_again = apply(params, x, jax.random.PRNGKey(2))
    y2 = apply(params, x, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y1_again))
    assert not np.allclose(np.asarray(y1), np.asarray(y2))
    assert not np.allclose(np.asarray(y1), np.asarray(y_mean))
    np.testing.assert_allclose(np.asarray(p["sigma_kernel"]), 0.5 / 2.0)     # σ0 / sqrt(fan_in)
    # factorised noise: the noisy weight σ ⊙ f(ε_in) f(ε_out)ᵀ has rank one
    w_noise = apply(params, jnp.eye(4), jax.random.PRNGKey(2)) - (p["mu_kernel"] + p["mu_bias"])
    s = np.linalg.svd(np.asarray(w_noise / p["sigma_kernel"]), compute_uv=False)
    assert s[1] < 1e-4 * s[0]


def test_dueling_combine_is_identifiable():
    value = jnp.asarray([[[2.0]], [[-1.0]]])
    adv = jnp.asarray([[[1.0], [3.0], [5.0]], [[0.0], [0.0], [3.0]]])
    q = dueling_combine(value, adv)
    np.testing.assert_allclose(np.asarray(q.mean(axis=1)), np.asarray(value[:, 0]))
    np.testing.assert_allclose(np.asarray(q[0, :, 0]), [0.0, 2.0, 4.0])


@pytest.mark.parametrize("spec,torso", [(VECTOR_SPEC, "mlp"), (MINATAR_SPEC, "minatar")])
@pytest.mark.parametrize("dueling,atoms", [(False, 1), (True, 1), (False, 7), (True, 7)])
def test_qnetwork_output_shapes(spec, torso, dueling, atoms):
    net = QNetwork(spec.action_dim, (16,), torso, len(spec.obs_shape), dueling=dueling, noisy=True, num_atoms=atoms)
    obs = jnp.zeros((5, *spec.obs_shape), jnp.dtype(spec.obs_dtype))
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), obs)
    out = jax.eval_shape(net.apply, params, obs, jax.random.PRNGKey(1))
    assert out.shape == ((5, spec.action_dim) if atoms == 1 else (5, spec.action_dim, atoms))


def test_torso_selection_and_nature_cnn():
    assert resolve_torso("auto", (4,)) == ("mlp", False)
    assert resolve_torso("auto", (10, 10, 4)) == ("minatar", False)
    assert resolve_torso("auto", (84, 84, 4)) == ("nature", False)
    assert resolve_torso("auto", (4, 84, 84)) == ("nature", True)
    with pytest.raises(ValueError, match="image observations"):
        resolve_torso("minatar", (4,))
    net = QNetwork(6, (512,), "nature", 3, channels_first=True)
    obs = jax.ShapeDtypeStruct((2, 4, 84, 84), jnp.uint8)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), obs)
    assert jax.eval_shape(net.apply, params, obs).shape == (2, 6)
    assert params["params"]["NatureCNN_0"]["Conv_0"]["kernel"].shape == (8, 8, 4, 32)


def test_act_is_deterministic_and_explore_is_noisy():
    config = dqn.Config(hidden=(32,), noisy=True, dueling=True, epsilon_start=0.0, epsilon_end=0.0)
    algo = dqn.make(config, VECTOR_SPEC)
    state = jax.jit(algo.init)(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (256, 4))
    act, explore = jax.jit(algo.act), jax.jit(algo.explore)
    a1, a2 = act(state, obs), act(state, obs)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
    mean_q = jax.jit(QNetwork(2, (32,), "mlp", 1, dueling=True, noisy=True).apply)(state.params, obs)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(jnp.argmax(mean_q, -1)))
    explored = [np.asarray(explore(state, obs, jax.random.PRNGKey(k), jnp.int32(0))) for k in range(4)]
    assert any((e != np.asarray(a1)).any() for e in explored), "noisy exploration never changed an action"


# ---- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    (dict(n_step=0), "n_step must be >= 1"),
    (dict(distributional=True, num_atoms=1), "num_atoms >= 2"),
    (dict(distributional=True, v_min=5.0, v_max=5.0), "v_min < v_max"),
    (dict(epsilon_start=0.1, epsilon_end=0.5), "must not exceed epsilon_start"),
    (dict(epsilon_start=1.5), "epsilon_start must be in"),
    (dict(gamma=1.2), "gamma must be in"),
    (dict(tau=0.0), "tau must be in"),
    (dict(target_update_interval=0), "target_update_interval"),
    (dict(prioritized=True, per_beta0=1.5), "per_beta0"),
    (dict(prioritized=True, per_eps=0.0), "per_eps must be positive"),
    (dict(noisy=True, noisy_sigma0=0.0), "noisy_sigma0"),
    (dict(loss="l1"), "loss must be one of"),
    (dict(torso="resnet"), "torso must be one of"),
    (dict(hidden=(64, 0)), "positive widths"),
    (dict(learning_rate=0.0), "learning_rate must be positive"),
    (dict(lr_decay_updates=-1), "lr_decay_updates must be >= 0"),
])
def test_bad_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(dqn.Config(), **changes).validate()


def test_allowed_combinations_and_wrong_action_space():
    dqn.Config(noisy=True, epsilon_start=0.5, epsilon_end=0.01).validate()    # both explorations apply
    dqn.Config(prioritized=False, per_beta0=7.0).validate()                 # PER settings unused
    rainbow.Config().validate()
    cont = EnvSpec("cont", (3,), "float32", Box.symmetric((1,)), 1, 10)
    with pytest.raises(ValueError, match="discrete actions"):
        dqn.make(dqn.Config(), cont)
    big_n = dqn.make(dqn.Config(n_step=50), VECTOR_SPEC)
    loop = OffPolicyLoop(2, 10, 4, 1, 1, 1)
    with pytest.raises(ValueError, match="cannot exceed"):
        big_n.make_buffer(loop)


def test_registry_and_configs_parse():
    assert {"dqn", "rainbow"} <= set(registry.algo_names())
    assert registry.algo_spec("rainbow").action_kind == "discrete"
    run = load_config(CONFIGS / "dqn_cartpole.yaml")
    assert run.algo == "dqn" and run.env == "CartPole-v1" and isinstance(run.agent, dqn.Config)
    assert run.agent.double and run.agent.hidden == (256, 256) and run.agent.n_step == 1
    assert run.agent.tau == 0.01 and run.agent.target_update_interval == 1 and run.agent.gamma == 0.995
    assert run.agent.learning_rate == 1e-3 and run.agent.lr_decay_updates == 30_000
    # PureJaxRL's CartPole settings mapped onto ours (benchmarks/bench_dqn.py speed): equal work per env step
    run = load_config(CONFIGS / "dqn_cartpole_purejaxrl.yaml")
    a = run.agent
    assert (run.num_envs, run.total_steps, run.buffer_size, run.batch_size) == (10, 500_000, 10_000, 128)
    assert (run.learning_starts, run.train_frequency, run.gradient_steps) == (10_000, 1, 1)
    assert not (a.double or a.dueling or a.prioritized or a.distributional or a.noisy)
    assert (a.n_step, a.loss, a.hidden, a.max_grad_norm) == (1, "mse", (120, 84), 0.0)
    # 500 env steps between hard copies = 50 vectorised steps of 10 envs, one update each
    assert (a.target_update_interval, a.tau, a.epsilon_decay_steps) == (50, 1.0, 250_000)
    run = load_config(CONFIGS / "rainbow_minatar.yaml")
    assert run.algo == "rainbow" and run.env == "Breakout-MinAtar" and isinstance(run.agent, rainbow.Config)
    a = run.agent
    # the MinAtar preset: double + dueling + 3-step + C51, ε-greedy; noisy nets and PER off (benchmarks/RESULTS.md)
    assert a.double and a.dueling and a.distributional and a.n_step == 3
    assert not (a.noisy or a.prioritized)
    assert (a.epsilon_start, a.epsilon_end, a.epsilon_decay_steps, a.learning_rate) == (1.0, 0.1, 100_000, 2.5e-4)
    with pytest.raises(ValueError, match="v_min < v_max"):
        load_config(CONFIGS / "rainbow_minatar.yaml", overrides=["agent.v_min=20"])


# ---- updates --------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=1)
def fake_step(key, spec):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    n = spec.num_envs
    obs = jax.random.bernoulli(k1, 0.2, (n, *spec.obs_shape)).astype(jnp.dtype(spec.obs_dtype))
    return Transition(obs, jax.random.randint(k2, (n,), 0, spec.action_dim), jax.random.normal(k3, (n,)),
                      jax.random.bernoulli(k4, 0.1, (n,)), jnp.zeros(n, jnp.bool_), obs)


def test_rainbow_update_on_minatar_batch():
    config = dataclasses.replace(rainbow.Config(), hidden=(32,), target_update_interval=2, num_atoms=11)
    algo = rainbow.SPEC.make(config, MINATAR_SPEC)
    buf = algo.make_buffer(OffPolicyLoop(2, 16, 8, 1, 1, 1))
    assert buf.update_priorities is not None
    state = jax.jit(algo.init)(jax.random.PRNGKey(0))
    bstate = buf.init(fake_step(jax.random.PRNGKey(1), MINATAR_SPEC))
    add = jax.jit(buf.add)
    for k in range(12):
        bstate = add(bstate, fake_step(jax.random.PRNGKey(k + 2), MINATAR_SPEC))

    @jax.jit
    def step(state, bstate, key):
        k_sample, k_update = jax.random.split(key)
        batch = buf.sample(bstate, k_sample)
        state, metrics = algo.update(state, batch, k_update)
        return state, buf.update_priorities(bstate, batch, metrics["priorities"]), metrics, batch

    init_params = state.params
    s1, bstate, m1, batch = step(state, bstate, jax.random.PRNGKey(20))
    assert batch.rewards.shape == (8, 3) and batch.obs.dtype == jnp.uint8
    assert np.isfinite(float(m1["loss"])) and m1["priorities"].shape == (8,)
    assert np.all(np.asarray(m1["priorities"]) >= 0)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), s1.params, init_params)
    assert all(jax.tree.leaves(changed))
    chex.assert_trees_all_equal(s1.target_params, init_params)            # no sync after 1 update
    s2, bstate, _, _ = step(s1, bstate, jax.random.PRNGKey(21))
    chex.assert_trees_all_equal(s2.target_params, s2.params)              # hard copy after 2
    assert int(s2.step) == 2
    a = jax.jit(algo.act)(s2, batch.obs)
    assert a.shape == (8,) and a.dtype == jnp.int32


def test_dqn_update_accepts_plain_transitions():
    algo = dqn.make(dqn.Config(hidden=(16,), double=True), VECTOR_SPEC)
    state = jax.jit(algo.init)(jax.random.PRNGKey(0))
    batch = fake_step(jax.random.PRNGKey(1), dataclasses.replace(VECTOR_SPEC, num_envs=6))
    batch = batch.replace(obs=batch.obs.astype(jnp.float32), next_obs=batch.next_obs.astype(jnp.float32))
    state, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(2))
    assert np.isfinite(float(metrics["loss"])) and "priorities" not in metrics


def test_lr_decay_reaches_zero_and_then_freezes_the_params():
    """lr_decay_updates 2: the first update moves at the full rate, the second at half, the third not at all."""
    algo = dqn.make(dqn.Config(hidden=(16,), lr_decay_updates=2, learning_rate=1e-2), VECTOR_SPEC)
    state = jax.jit(algo.init)(jax.random.PRNGKey(0))
    batch = fake_step(jax.random.PRNGKey(1), dataclasses.replace(VECTOR_SPEC, num_envs=6))
    batch = batch.replace(obs=batch.obs.astype(jnp.float32), next_obs=batch.next_obs.astype(jnp.float32))
    update = jax.jit(algo.update)
    rates, moved = [], []
    for i in range(3):
        new, metrics = update(state, batch, jax.random.PRNGKey(2 + i))
        rates.append(float(metrics["learning_rate"]))
        moved.append(max(float(jnp.max(jnp.abs(a - b))) for a, b in
                         zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params))))
        state = new
    np.testing.assert_allclose(rates, [1e-2, 5e-3, 0.0], rtol=1e-6)
    assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0.0
    constant = dqn.make(dqn.Config(hidden=(16,)), VECTOR_SPEC)
    _, metrics = jax.jit(constant.update)(jax.jit(constant.init)(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(2))
    assert "learning_rate" not in metrics


# ---- learning -------------------------------------------------------------------------

def test_dqn_learns_cartpole():
    """Double DQN on gymnax CartPole-v1, 10k env steps: greedy return must rise far above random (~10-20)."""
    num_envs = 4
    env = registry.make_env("CartPole-v1", num_envs)
    eval_env = registry.make_env("CartPole-v1", 8)
    config = dqn.Config(hidden=(64, 64), double=True, learning_rate=1e-3, target_update_interval=100,
                        epsilon_decay_steps=5000, epsilon_end=0.05)
    algo = dqn.make(config, env.spec)
    loop = OffPolicyLoop(num_envs=num_envs, capacity_per_env=5000, batch_size=64, learning_starts_iters=125,
                         train_frequency=1, gradient_steps=1)
    train = make_train(algo, env, loop, eval_env)
    carry = jax.jit(train.init)(jax.random.PRNGKey(0))
    run = jax.jit(train.run, static_argnums=1)
    evaluate = jax.jit(train.evaluate)
    before = float(evaluate(carry.agent, jax.random.PRNGKey(1)).mean())
    returns = []
    for _ in range(5):
        carry, logs = run(carry, 500)
        returns.append(float(logs["episode_return_mean"]))
    after = float(evaluate(carry.agent, jax.random.PRNGKey(1)).mean())
    assert int(carry.iteration) == 2500
    assert returns[-1] > 2.5 * returns[0], returns
    assert after > 100.0 and after > 4 * before, (before, after, returns)
