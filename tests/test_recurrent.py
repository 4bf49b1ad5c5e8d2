"""Recurrent policies and R2D2: memory cores against step-by-step references, burn-in gradients, value
rescaling, sequence n-step targets by hand and NumPy loops, the R2D2 update, the loop's stored cores,
seeds under vmap, and bad input through the CLI."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from angle_jax import registry
from angle_jax.algos import r2d2
from angle_jax.core import returns
from angle_jax.core.axes import seed_axes
from angle_jax.envs.base import Discrete, EnvSpec
from angle_jax.networks.heads import QHead
from angle_jax.networks.recurrent import (RecurrentNetwork, VectorEncoder, burn_in, initial_core, make_encoder,
                                          reset_core, set_forget_bias, unroll)
from angle_jax.training.off_policy import OffPolicyLoop, make_train
from conftest import run_in_process

OBS_DIM, ACTIONS, CORE, BATCH = 5, 3, 8, 3
EPS = 1e-3


def close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def max_abs(tree):
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def tree_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---- memory cores ------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["lstm", "gru"])
def core_net(request):
    """A tiny encoder -> core -> Q head, its params, a jitted one-step apply and a jitted unroll."""
    kind = request.param
    net = RecurrentNetwork(VectorEncoder((8,)), QHead(ACTIONS, hidden=(8,)), kind, CORE)
    obs = jnp.zeros((BATCH, OBS_DIM))
    params = net.init(jax.random.PRNGKey(0), obs, initial_core(kind, CORE, BATCH), jnp.ones(BATCH, bool))
    apply = jax.jit(net.apply)
    run = jax.jit(functools.partial(unroll, net), static_argnames="all_cores")
    return kind, net, params, apply, run


def random_core(kind, batch, seed, scale=0.5):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    c = [scale * jax.random.normal(k, (batch, CORE)) for k in keys]
    return (c[0], c[1]) if kind == "lstm" else c[0]


def random_obs(seed, steps, batch=BATCH):
    return jax.random.normal(jax.random.PRNGKey(seed), (steps, batch, OBS_DIM))


def step_by_step(apply, params, obs, core, reset):
    """`net.apply` one step at a time: (outputs [T, B, A], final core, the core after every step)."""
    outs, cores = [], []
    for t in range(obs.shape[0]):
        out, core = apply(params, obs[t], core, reset[t])
        outs.append(out)
        cores.append(core)
    return jnp.stack(outs), core, cores


def test_unroll_equals_stepping_the_network(core_net):
    kind, _, params, apply, run = core_net
    obs, core0 = random_obs(1, 6), random_core(kind, BATCH, 2)
    reset = jnp.zeros((6, BATCH), bool)
    out, final, cores = run(params, obs, core0, reset, all_cores=True)
    ref_out, ref_final, ref_cores = step_by_step(apply, params, obs, core0, reset)
    assert out.shape == (6, BATCH, ACTIONS)
    close(out, ref_out)
    close(final, ref_final)
    for t in range(6):
        close(jax.tree.map(lambda c: c[t], cores), ref_cores[t])
    assert max_abs(jax.tree.map(lambda a, b: a - b, final, core0)) > 1e-3  # the core moved


@pytest.mark.parametrize("dueling", [False, True])
def test_r2d2_network_unrolled_equals_stepped(dueling):
    """R2D2's own network (dense encoder, LSTM, Q or dueling head) over [T, B] equals its one-step apply."""
    spec = EnvSpec("vec", (OBS_DIM,), "float32", Discrete(ACTIONS), num_envs=BATCH, max_episode_steps=50)
    cfg = r2d2.Config(hidden=(8,), core_size=CORE, head_hidden=(8,), dueling=dueling)
    net = r2d2.network(cfg, spec)
    params = r2d2.make(cfg, spec).init(jax.random.PRNGKey(2)).params
    obs, core0 = random_obs(11, 4), random_core("lstm", BATCH, 12)
    reset = jnp.zeros((4, BATCH), bool).at[2, 1].set(True)
    out, final = jax.jit(functools.partial(unroll, net))(params, obs, core0, reset)
    ref_out, ref_final, _ = step_by_step(jax.jit(net.apply), params, obs, core0, reset)
    close(final, ref_final)
    close(out, ref_out)


def test_an_episode_end_inside_a_sequence_equals_two_separate_episodes(core_net):
    """Reset at step k for envs 0 and 2: their outputs from k on are a fresh episode's, values and gradients."""
    kind, _, params, apply, run = core_net
    T, k, flagged = 6, 3, np.array([0, 2])
    obs, core0 = random_obs(3, T), random_core(kind, BATCH, 4)
    reset = np.zeros((T, BATCH), bool)
    reset[k, flagged] = True
    reset = jnp.asarray(reset)
    no_reset = jnp.zeros((T, BATCH), bool)
    out, _ = run(params, obs, core0, reset)

    first, _, _ = step_by_step(apply, params, obs[:k], core0, no_reset[:k])
    close(out[:k], first)                                         # the first episode is untouched
    through, _, _ = step_by_step(apply, params, obs, core0, no_reset)
    close(out[:, 1], through[:, 1])                               # env 1 never resets
    zeros2, fresh_reset = initial_core(kind, CORE, 2), jnp.zeros((T - k, 2), bool)
    second, _, _ = step_by_step(apply, params, obs[k:, flagged], zeros2, fresh_reset)
    close(out[k:][:, flagged], second)
    assert np.max(np.abs(np.asarray(through[k:][:, flagged] - second))) > 1e-4  # the reset mattered

    w = jax.random.normal(jax.random.PRNGKey(5), (T - k, 2, ACTIONS))
    combined = jax.jit(jax.grad(lambda p: jnp.sum(w * unroll(core_net[1], p, obs, core0, reset)[0][k:][:, flagged])))
    separate = jax.grad(lambda p: jnp.sum(w * step_by_step(apply, p, obs[k:, flagged], zeros2, fresh_reset)[0]))
    g_combined, g_separate = combined(params), separate(params)
    assert max_abs(g_separate) > 1e-3
    close(g_combined, g_separate, rtol=1e-4, atol=1e-6)
    core_grads = g_combined["params"]["core"]
    assert max_abs(core_grads) > 1e-4                              # the core's weights are learned from it


@pytest.mark.parametrize("kind", ["lstm", "gru", "tree"])
def test_reset_core_zeroes_exactly_the_flagged_rows(kind):
    rng = np.random.default_rng(0)
    B = 5
    if kind == "tree":
        core = {"a": jnp.asarray(rng.normal(size=(B, 4)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(B, 2, 3)), jnp.float32)}
    else:
        core = random_core(kind, B, 6)
    reset = jnp.asarray([True, False, False, True, False])
    for fn in (reset_core, jax.jit(reset_core)):
        out = fn(core, reset)
        for before, after in zip(jax.tree.leaves(core), jax.tree.leaves(out), strict=True):
            before, after = np.asarray(before), np.asarray(after)
            assert after.shape == before.shape and after.dtype == before.dtype
            np.testing.assert_array_equal(after[[0, 3]], 0.0)
            np.testing.assert_array_equal(after[[1, 2, 4]], before[[1, 2, 4]])
            assert np.all(before[[0, 3]] != 0.0)
    equal(reset_core(core, jnp.zeros(B, bool)), core)
    grads = jax.grad(lambda c: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(reset_core(c, reset))))(core)
    for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(core)):
        np.testing.assert_array_equal(np.asarray(g)[[0, 3]], 0.0)
        np.testing.assert_allclose(np.asarray(g)[[1, 2, 4]], 2 * np.asarray(c)[[1, 2, 4]])


def test_initial_core_and_encoder_choice_are_checked():
    c, h = initial_core("lstm", 4, 2)
    assert c.shape == h.shape == (2, 4) and not np.any(np.asarray(c)) and not np.any(np.asarray(h))
    assert initial_core("gru", 4, 3).shape == (3, 4)
    with pytest.raises(ValueError, match="core must be one of lstm, gru"):
        initial_core("rnn", 4, 2)
    assert isinstance(make_encoder("auto", (8,), "relu", (3,)), VectorEncoder)
    with pytest.raises(ValueError, match="MinAtar-sized grids"):
        make_encoder("cnn", (8,), "relu", (84, 84, 4))


# ---- burn-in -----------------------------------------------------------------------------

def test_burn_in_then_unroll_equals_the_whole_episode_and_passes_no_gradient(core_net):
    """A sequence starting P steps into an episode from the actor's stored core: b burn-in steps, then T learned."""
    kind, net, params, apply, run = core_net
    P, b, T = 2, 3, 5
    obs = random_obs(7, P + b + T)
    reset = np.zeros((P + b + T, BATCH), bool)
    reset[0] = True                   # the episode start
    reset[P + 1, 1] = True            # env 1: a new episode inside the burn-in
    reset[P + b + 2, 2] = True        # env 2: a new episode inside the learned part
    reset = jnp.asarray(reset)
    start = initial_core(kind, CORE, BATCH)
    whole, _ = run(params, obs, start, reset)
    _, stored, _ = step_by_step(apply, params, obs[:P], start, reset[:P])   # what the actor had at step P
    seq, rs = obs[P:], reset[P:]

    state = burn_in(net, params, seq[:b], stored, rs[:b])
    _, after_b, _ = step_by_step(apply, params, obs[:P + b], start, reset[:P + b])
    close(state, after_b)
    rest, _ = run(params, seq[b:], state, rs[b:])
    close(rest, whole[P + b:])
    equal(burn_in(net, params, seq[:0], stored, rs[:0]), stored)  # no burn-in: the stored core itself

    w = jax.random.normal(jax.random.PRNGKey(8), (T, BATCH, ACTIONS))

    def learned(p):
        s = burn_in(net, p, seq[:b], stored, rs[:b])
        return jnp.sum(w * unroll(net, p, seq[b:], s, rs[b:])[0])

    def stepped(p, stop):
        c, outs = stored, []
        for t in range(b + T):
            if t == b and stop:
                c = jax.lax.stop_gradient(c)
            out, c = apply(p, seq[t], c, rs[t])
            outs.append(out)
        return jnp.sum(w * jnp.stack(outs[b:]))

    g = jax.jit(jax.grad(learned))(params)
    g_stop = jax.grad(functools.partial(stepped, stop=True))(params)
    g_through = jax.grad(functools.partial(stepped, stop=False))(params)
    close(g, g_stop, rtol=1e-4, atol=1e-6)
    assert tree_diff(g_through, g_stop) > 1e-4  # a gradient through the burn-in would be visible

    # parameters used only by the burn-in get exactly no gradient; those of the learned part do
    other = jax.tree.map(lambda x: 1.3 * x + 0.01, params)

    def split(p_burn, p_learn):
        s = burn_in(net, p_burn, seq[:b], stored, rs[:b])
        return jnp.sum(w * unroll(net, p_learn, seq[b:], s, rs[b:])[0])

    g_burn, g_learn = jax.jit(jax.grad(split, argnums=(0, 1)))(other, params)
    for leaf in jax.tree.leaves(g_burn):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    assert max_abs(g_learn) > 1e-3
    through = jax.grad(lambda pb: jnp.sum(w * unroll(net, params, seq[b:], unroll(
        net, pb, seq[:b], stored, rs[:b])[1], rs[b:])[0]))(other)
    assert max_abs(through) > 1e-4  # without burn_in's stop-gradient the same loss reaches them


# ---- value rescaling ---------------------------------------------------------------------

GRID = np.unique(np.concatenate([[0.0], np.logspace(-6, 4, 41), -np.logspace(-6, 4, 41),
                                 [0.5, 1.0, 3.0, -3.0, 99.0]]).astype(np.float32))


def h64(x, eps=EPS):
    x = np.asarray(x, np.float64)
    return np.sign(x) * (np.sqrt(np.abs(x) + 1.0) - 1.0) + eps * x


def h64_inverse(y, eps=EPS):
    """h⁻¹ by solving ε s² + s − (1 + ε + |y|) = 0 for s = √(|x| + 1) (float64)."""
    y = np.asarray(y, np.float64)
    s = (-1.0 + np.sqrt(1.0 + 4.0 * eps * (1.0 + eps + np.abs(y)))) / (2.0 * eps)
    return np.sign(y) * (s * s - 1.0)


def test_value_rescale_by_hand_odd_and_monotone():
    h, h_inv = returns.value_rescale, returns.inverse_value_rescale
    x = jnp.asarray([0.0, 3.0, -8.0, 99.0, 1e4])
    # h(3) = √4 − 1 + 0.003; h(−8) = −(√9 − 1) − 0.008; h(99) = √100 − 1 + 0.099; h(1e4) = √10001 − 1 + 10
    np.testing.assert_allclose(np.asarray(h(x)), [0.0, 1.003, -2.008, 9.099, 109.004999875], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(h(jnp.float32(3.0), 0.1)), 1.3, rtol=1e-6)   # 2 − 1 + 0.3
    np.testing.assert_allclose(np.asarray(h_inv(jnp.asarray([1.003, -2.008, 9.099]))), [3.0, -8.0, 99.0],
                               rtol=1e-4)
    g = jnp.asarray(GRID)
    np.testing.assert_array_equal(np.asarray(h(-g)), -np.asarray(h(g)))
    np.testing.assert_array_equal(np.asarray(h_inv(-g)), -np.asarray(h_inv(g)))
    assert np.all(np.diff(np.asarray(h(g))) > 0)          # GRID is sorted, without repeats
    away = jnp.asarray(GRID[np.abs(GRID) >= 1e-2])
    assert np.all(np.diff(np.asarray(h_inv(away))) > 0)


def test_value_rescale_derivative_matches_the_analytic_one():
    """h'(x) = 1 / (2√(|x| + 1)) + ε away from 0, and (h⁻¹)'(h(x)) = 1 / h'(x); checked by finite differences."""
    x = np.array([-1e3, -3.0, -0.5, -1e-2, 1e-2, 0.5, 3.0, 1e3], np.float32)
    grad = np.asarray(jax.vmap(jax.grad(returns.value_rescale))(jnp.asarray(x)))
    analytic = 1.0 / (2.0 * np.sqrt(np.abs(x.astype(np.float64)) + 1.0)) + EPS
    np.testing.assert_allclose(grad, analytic, rtol=1e-5)
    d = 1e-4 * np.maximum(np.abs(x.astype(np.float64)), 1.0)
    np.testing.assert_allclose(analytic, (h64(x + d) - h64(x - d)) / (2 * d), rtol=1e-6)
    inv_grad = np.asarray(jax.vmap(jax.grad(returns.inverse_value_rescale))(jnp.asarray(h64(x), jnp.float32)))
    np.testing.assert_allclose(inv_grad, 1.0 / analytic, rtol=1e-3)


def test_value_rescale_and_its_inverse_are_float32_precise():
    """h, h⁻¹ and both compositions to float32 precision from 0 and ±1e-6 to ±1e4."""
    g = jnp.asarray(GRID)
    h, h_inv = returns.value_rescale, returns.inverse_value_rescale
    np.testing.assert_array_equal(np.sign(np.asarray(h_inv(g))), np.sign(GRID))
    assert np.all(np.diff(np.asarray(h_inv(g))) > 0)
    np.testing.assert_allclose(np.asarray(h(g)), h64(GRID), rtol=1e-5, atol=0)
    np.testing.assert_allclose(np.asarray(h_inv(g)), h64_inverse(GRID), rtol=1e-5, atol=0)
    np.testing.assert_allclose(np.asarray(h_inv(h(g))), GRID, rtol=1e-5, atol=0)
    np.testing.assert_allclose(np.asarray(h(h_inv(g))), GRID, rtol=1e-5, atol=0)


# ---- sequence n-step returns and R2D2's pieces ----------------------------------------------

def reference_sequence_returns(rewards, terminated, truncated, bootstrap, gamma, n):
    """Per (t, env) loop: sum rewards until the window's n steps or an episode end, bootstrap after n steps."""
    L, B = rewards.shape
    U = L - n
    G, valid = np.zeros((U, B)), np.ones((U, B), bool)
    for b in range(B):
        for t in range(U):
            g, ended = 0.0, False
            for k in range(n):
                s = t + k
                g += gamma ** k * rewards[s, b]
                if terminated[s, b]:
                    ended = True
                    break
                if truncated[s, b]:
                    ended, valid[t, b] = True, False
                    break
            if not ended:
                g += gamma ** n * bootstrap[t + n, b]
            G[t, b] = g
    return G, valid


class SequenceTargetsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_sequence_nstep_returns_by_hand(self):
        # U = 3, n = 2, γ = 0.9: windows {0,1}, {1,2}, {2,3}, bootstrapped from steps 2, 3, 4
        F, T = False, True
        rewards = jnp.asarray([[1.0, 0.5, 1.0], [2.0, -1.0, 1.0], [3.0, 2.0, 1.0], [4.0, 0.0, 1.0],
                               [5.0, 1.0, 1.0]])
        bootstrap = jnp.asarray([[10.0, 1.0, 10.0], [20.0, 2.0, 10.0], [30.0, 3.0, 10.0], [40.0, 4.0, 10.0],
                                 [50.0, 5.0, 10.0]])
        terminated = jnp.asarray([[F, F, F], [F, T, F], [F, F, F], [T, F, F], [F, F, F]])
        truncated = jnp.asarray([[T, F, F], [F, T, F], [F, F, T], [F, F, F], [F, F, F]])
        fn = self.variant(functools.partial(returns.sequence_nstep_returns, n_step=2))
        G, valid = fn(rewards, terminated, truncated, bootstrap, 0.9)
        # env 0: truncated at 0, terminated at 3
        #   t0: the window is cut by the truncation at step 0 -> invalid
        #   t1: 2 + 0.9·3 + 0.81·bootstrap[3] = 2 + 2.7 + 32.4 = 37.1
        #   t2: 3 + 0.9·4, terminated at 3: no bootstrap -> 6.6
        # env 1: terminated and truncated at 1 (termination wins: nothing invalid)
        #   t0: 0.5 + 0.9·(−1) = −0.4;  t1: −1;  t2: 2 + 0.9·0 + 0.81·5 = 6.05
        # env 2: truncated at 2
        #   t0: 1 + 0.9·1 + 0.81·bootstrap[2] = 1.9 + 8.1 = 10.0;  t1, t2: cut by the truncation -> invalid
        want_valid = np.array([[F, T, T], [T, T, F], [T, T, F]])
        np.testing.assert_array_equal(np.asarray(valid), want_valid)
        want = np.array([[0.0, -0.4, 10.0], [37.1, -1.0, 0.0], [6.6, 6.05, 0.0]])
        np.testing.assert_allclose(np.asarray(G)[want_valid], want[want_valid], rtol=1e-6)
        assert G.shape == valid.shape == (3, 3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sequence_nstep_returns_match_a_loop_on_random_sequences(self):
        rng = np.random.default_rng(0)
        for n, U, B in [(1, 6, 4), (3, 7, 5), (5, 2, 3)]:
            L = U + n
            r, boot = rng.normal(size=(L, B)).astype(np.float32), rng.normal(size=(L, B)).astype(np.float32)
            term = rng.random((L, B)) < 0.15
            trunc = rng.random((L, B)) < 0.15   # sometimes with term: termination wins
            G, valid = self.variant(functools.partial(returns.sequence_nstep_returns, n_step=n))(
                r, term, trunc, boot, 0.95)
            ref_G, ref_valid = reference_sequence_returns(r, term, trunc, boot, 0.95, n)
            np.testing.assert_array_equal(np.asarray(valid), ref_valid)
            np.testing.assert_allclose(np.asarray(G)[ref_valid], ref_G[ref_valid], rtol=1e-5, atol=1e-5)
        with self.assertRaises(ValueError):
            returns.sequence_nstep_returns(r, term, trunc, boot, 0.95, L)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rescaled_double_q_targets_by_hand(self):
        """One learned step (U = 1, n = 1): online picks the action, target values it, through h⁻¹ then h."""
        h3, h8, h99 = 1.003, 2.008, 9.099  # h(3), h(8), h(99)
        junk = [[7.0, -7.0, 7.0]] * 3
        q_online = jnp.asarray([junk, [[0.0, 5.0, 1.0], [9.0, 0.0, 0.0], [0.0, 2.0, 1.0]]])   # argmax: 1, 0, 1
        q_target = jnp.asarray([junk, [[h99, h8, h3], [h3, h99, h8], [h3, -h8, h99]]])       # target's own: 0, 1, 2
        rewards = jnp.asarray([[-1.0, 8.0, -4.0], [100.0, 100.0, 100.0]])
        terminated = jnp.asarray([[False, True, False], [False, False, False]])
        truncated = jnp.zeros((2, 3), bool)
        fn = self.variant(functools.partial(r2d2.rescaled_double_q_targets, n_step=1))
        targets, valid = fn(q_online, q_target, rewards, terminated, truncated, 0.5)
        # env 0: −1 + 0.5·h⁻¹(Q'[a=1] = h(8)) = −1 + 4 = 3      -> h(3) = 1.003
        # env 1: terminated: the reward 8 alone                  -> h(8) = 2.008
        # env 2: −4 + 0.5·h⁻¹(Q'[a=1] = −h(8)) = −4 − 4 = −8     -> h(−8) = −2.008
        np.testing.assert_allclose(np.asarray(targets), [[h3, h8, -h8]], rtol=1e-4)
        np.testing.assert_array_equal(np.asarray(valid), [[True, True, True]])
        grads = jax.grad(lambda a, b: jnp.sum(r2d2.rescaled_double_q_targets(
            a, b, rewards, terminated, truncated, 0.5, 1)[0]), argnums=(0, 1))(q_online, q_target)
        assert not np.any(np.asarray(grads[0])) and not np.any(np.asarray(grads[1]))

    def test_rescaled_double_q_targets_match_a_numpy_reference(self):
        rng = np.random.default_rng(1)
        U, n, B, A = 5, 3, 4, 3
        q_on, q_tg = (rng.normal(size=(U + n, B, A)).astype(np.float32) for _ in range(2))
        r = rng.normal(size=(U + n, B)).astype(np.float32)
        term, trunc = rng.random((U + n, B)) < 0.1, rng.random((U + n, B)) < 0.1
        targets, valid = jax.jit(r2d2.rescaled_double_q_targets, static_argnums=6)(
            q_on, q_tg, r, term, trunc, 0.97, n)
        picked = np.take_along_axis(q_tg, q_on.argmax(-1)[..., None], -1)[..., 0]
        G, ref_valid = reference_sequence_returns(r, term, trunc, h64_inverse(picked), 0.97, n)
        np.testing.assert_array_equal(np.asarray(valid), ref_valid)
        np.testing.assert_allclose(np.asarray(targets)[ref_valid], h64(G)[ref_valid], rtol=1e-4, atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_epsilon_ladder(self):
        one = self.variant(functools.partial(r2d2.epsilon_ladder, 1))(jnp.float32(0.4), jnp.float32(7.0))
        assert one.shape == (1,)
        np.testing.assert_allclose(np.asarray(one), [0.4], rtol=1e-7)
        eight = self.variant(functools.partial(r2d2.epsilon_ladder, 8))(jnp.float32(0.4), jnp.float32(7.0))
        np.testing.assert_allclose(np.asarray(eight), [0.4 ** (1 + 7 * i / 7) for i in range(8)], rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_sequence_td_loss_by_hand(self):
        td = jnp.asarray([[1.0, 2.0, 5.0], [2.0, -4.0, 5.0], [3.0, 0.0, 5.0]])
        valid = jnp.asarray([[True, True, False], [False, True, False], [True, False, False]])
        weights = jnp.asarray([0.5, 2.0, 1.0])
        loss = self.variant(r2d2.sequence_td_loss)(td, valid, weights)
        # seq 0: steps 0, 2: ½(1 + 9) / 2 = 2.5;  seq 1: steps 0, 1: ½(4 + 16) / 2 = 5;  seq 2: none: 0
        # mean(0.5·2.5, 2·5, 1·0) = 11.25 / 3 = 3.75
        np.testing.assert_allclose(float(loss), 3.75, rtol=1e-6)
        grad = np.asarray(jax.grad(r2d2.sequence_td_loss)(td, valid, weights))
        # d/dδ = w_b / B · δ / count_b on valid steps: 0.5/3·1/2, 0.5/3·3/2; 2/3·2/2, 2/3·(−4)/2
        np.testing.assert_allclose(grad, [[1 / 12, 2 / 3, 0], [0, -4 / 3, 0], [0.25, 0, 0]], rtol=1e-6, atol=1e-7)


# ---- R2D2 in the off-policy loop ---------------------------------------------------------------

LOOP = OffPolicyLoop(num_envs=4, capacity_per_env=16, batch_size=4, learning_starts_iters=0, train_frequency=1,
                     gradient_steps=1)
CONFIG = r2d2.Config(hidden=(8,), core_size=8, head_hidden=(8,), burn_in=2, unroll=3, n_step=1, period=2,
                     target_update_interval=2)
KEYS = jax.random.split(jax.random.PRNGKey(0), 2)
ITERS = 24   # the 16 rows per env wrap around once


@pytest.fixture(scope="module")
def r2d2_loop():
    """The loop run one iteration at a time from `init(KEYS[0])`: the carry before every iteration and at the end."""
    env = registry.make_env("MemoryChain-bsuite", 4, memory_length=3)   # 4-step episodes
    algo = r2d2.make(CONFIG, env.spec)
    train = make_train(algo, env, LOOP, env)
    init = jax.jit(train.init)
    run1 = jax.jit(lambda c: train.run(c, 1))
    carries = [init(KEYS[0])]
    for _ in range(ITERS):
        carries.append(run1(carries[-1])[0])
    return env, algo, train, init, jax.device_get(carries)


@pytest.fixture(scope="module")
def r2d2_updates(r2d2_loop):
    """Four jitted updates from a fresh state on batches sampled from the loop's filled sequence replay."""
    env, algo, _, _, carries = r2d2_loop
    buffer = algo.make_buffer(LOOP)
    sample, update = jax.jit(buffer.sample), jax.jit(algo.update)
    filled = carries[-1].buffer
    states, metrics, batches = [algo.init(jax.random.PRNGKey(1))], [], []
    for i in range(4):
        batches.append(sample(filled, jax.random.PRNGKey(10 + i)))
        s, m = update(states[-1], batches[-1], jax.random.PRNGKey(0))
        states.append(s)
        metrics.append(m)
    return env, jax.device_get(states), jax.device_get(metrics), jax.device_get(batches)


def test_r2d2_update_copies_the_target_on_schedule(r2d2_updates):
    _, states, metrics, _ = r2d2_updates
    for i, (m, s) in enumerate(zip(metrics, states[1:]), start=1):
        assert np.isfinite(float(m["loss"])) and int(s.step) == i
        assert m["priorities"].shape == (LOOP.batch_size,) and np.all(np.asarray(m["priorities"]) >= 0)
        assert np.all(np.isfinite(m["priorities"]))
        assert tree_diff(s.params, states[i - 1].params) > 0          # every update learns
        if i % CONFIG.target_update_interval == 0:
            equal(s.target_params, s.params)                           # copied exactly
        else:
            equal(s.target_params, states[i - 1].target_params)        # left as it was
            assert tree_diff(s.target_params, s.params) > 0


def test_r2d2_update_matches_a_step_by_step_reference(r2d2_updates):
    """The loss and priorities of the second update (online and target differ), from `net.apply` one step at a
    time over each sampled sequence and the targets computed in NumPy."""
    env, states, metrics, batches = r2d2_updates
    net = r2d2.network(CONFIG, env.spec)
    apply = jax.jit(net.apply)
    p, tp, batch = states[1].params, states[1].target_params, batches[1]
    L, bi, U = CONFIG.sequence_length, CONFIG.burn_in, CONFIG.unroll
    assert batch.obs.shape == (L, LOOP.batch_size, 3) and np.any(batch.reset[1:])
    q_on, _, _ = step_by_step(apply, p, batch.obs, batch.core, batch.reset)
    q_tg, _, _ = step_by_step(apply, tp, batch.obs, batch.core, batch.reset)
    q_on, q_tg = np.asarray(q_on, np.float64), np.asarray(q_tg, np.float64)
    gamma = CONFIG.gamma
    td, valid = np.zeros((U, LOOP.batch_size)), np.zeros((U, LOOP.batch_size), bool)
    for u in range(U):
        t = bi + u
        for b in range(LOOP.batch_size):
            boot = h64_inverse(q_tg[t + 1, b, np.argmax(q_on[t + 1, b])])
            G = batch.reward[t, b] + (0.0 if batch.terminated[t, b] else gamma * boot)
            valid[u, b] = batch.terminated[t, b] or not batch.truncated[t, b]
            td[u, b] = h64(G) - q_on[t, b, batch.action[t, b]]
    count = np.maximum(valid.sum(0), 1)
    loss = np.mean(batch.weights * (0.5 * td ** 2 * valid).sum(0) / count)
    np.testing.assert_allclose(float(metrics[1]["loss"]), loss, rtol=1e-4, atol=1e-7)
    a = np.abs(td) * valid
    prio = np.where(valid.any(0), CONFIG.per_eta * a.max(0) + (1 - CONFIG.per_eta) * a.sum(0) / count, 0.0)
    np.testing.assert_allclose(np.asarray(metrics[1]["priorities"]), prio, rtol=1e-4, atol=1e-6)


def test_the_replay_stores_the_core_the_actor_used(r2d2_loop):
    """Every sequence-start row holds the core the actor fed its network at that step: recomputed from the
    episode's start over the stored observations, with the parameters the agent had at each step."""
    env, _, _, _, carries = r2d2_loop
    net = r2d2.network(CONFIG, env.spec)
    apply = jax.jit(net.apply)
    buf = carries[-1].buffer
    rows, period = LOOP.capacity_per_env, CONFIG.period
    iteration_of = {r: r + rows if r < ITERS - rows else r for r in range(rows)}   # rows hold iterations 8..23
    assert tree_diff(carries[9].agent.params, carries[ITERS - 1].agent.params) > 0  # the actor's params changed
    for r, i in iteration_of.items():
        np.testing.assert_array_equal(buf.data.obs[r], carries[i].obs)
        np.testing.assert_array_equal(buf.data.reset[r], carries[i].reset)
    stored_reset = {i: buf.data.reset[r] for r, i in iteration_of.items()}
    stored_obs = {i: buf.data.obs[r] for r, i in iteration_of.items()}
    chains = zero_rows = 0
    for r in range(0, rows, period):
        i = iteration_of[r]
        stored = jax.tree.map(lambda c: c[r // period], buf.core)
        for e in range(LOOP.num_envs):
            starts = [j for j in range(ITERS - rows, i + 1) if stored_reset[j][e]]
            if not starts:
                continue
            core = initial_core(CONFIG.core, CONFIG.core_size, 1)
            for t in range(starts[-1], i):
                _, core = apply(carries[t].agent.params, stored_obs[t][e:e + 1], core, stored_reset[t][e:e + 1])
            close(jax.tree.map(lambda c: c[e:e + 1], stored), core, rtol=1e-5, atol=1e-6)
            chains += starts[-1] < i
            zero_rows += starts[-1] == i
            if starts[-1] < i:
                assert max_abs(core) > 1e-3
    assert chains >= 8 and zero_rows >= 8
    # the carry's core is the one after the step, before any reset: one step on from the stored one
    i = iteration_of[2]
    used = jax.tree.map(lambda c: c[1], buf.core)
    _, after = apply(carries[i].agent.params, carries[i].obs, used, carries[i].reset)
    close(after, carries[i + 1].core)


def test_seeds_under_vmap_equal_the_single_run(r2d2_loop):
    _, _, train, init, carries = r2d2_loop
    axes = seed_axes(jax.eval_shape(train.init, KEYS[0]))
    both = jax.jit(jax.vmap(train.init, out_axes=axes))(KEYS)
    single = carries[0]
    first = jax.tree.map(lambda x: x[0], both.agent.params)
    equal(first, single.agent.params)
    equal(jax.tree.map(lambda x: x[0], both.core), single.core)
    equal(both.obs[0], single.obs)
    assert tree_diff(jax.tree.map(lambda x: x[1], both.agent.params), single.agent.params) > 0

    steps = 8
    both, _ = jax.jit(jax.vmap(lambda c: train.run(c, steps), in_axes=(axes,), out_axes=(axes, 0)))(both)
    both = jax.device_get(both)
    ref = carries[steps]
    assert int(both.iteration) == steps and int(both.buffer.pos) == steps
    for name in ("obs", "action", "reward", "terminated", "truncated", "reset"):
        np.testing.assert_array_equal(getattr(both.buffer.data, name)[0, :steps],
                                      getattr(ref.buffer.data, name)[:steps], err_msg=name)
    close(jax.tree.map(lambda c: c[0, :steps // CONFIG.period], both.buffer.core),
          jax.tree.map(lambda c: c[:steps // CONFIG.period], ref.buffer.core))
    close(jax.tree.map(lambda x: x[0], both.core), ref.core)
    close(jax.tree.map(lambda x: x[0], both.agent.params), ref.agent.params, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(both.buffer.data.obs[0, :steps], both.buffer.data.obs[1, :steps]) or \
        not np.array_equal(both.buffer.data.action[0, :steps], both.buffer.data.action[1, :steps])


# ---- bad input through the CLI -------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--algo", "r2d2", "--env", "MemoryChain-bsuite", "--set", "buffer_size=64"], "a stored sequence"),
    (["--algo", "r2d2", "--env", "MemoryChain-bsuite", "--set", "agent.period=0"], "agent.period must be >= 1"),
    (["--algo", "dqn", "--env", "CartPole-v1", "--set", "agent.core=lstm"], "unknown config key 'agent.core'"),
    (["--algo", "r2d2", "--env", "Pendulum-v1"], "continuous actions"),
])
def test_bad_recurrent_settings_are_refused_before_anything_is_written(tmp_path, args, message):
    run_dir = tmp_path / "r"
    proc = run_in_process("train.py", *args, "--run-dir", str(run_dir))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]
    assert not run_dir.exists()


# ---- the LSTM's initial forget-gate bias ---------------------------------------------------------

def test_forget_bias_sets_only_the_lstm_forget_gate_bias():
    spec = registry.make_env("MemoryChain-bsuite", 2).spec
    plain = r2d2.make(r2d2.Config(hidden=(8,), core_size=8, head_hidden=(8,), forget_bias=0.0),
                      spec).init(jax.random.PRNGKey(0))
    biased = r2d2.make(r2d2.Config(hidden=(8,), core_size=8, head_hidden=(8,), forget_bias=1.0),
                       spec).init(jax.random.PRNGKey(0))
    flat_plain = traverse_util.flatten_dict(plain.params)
    flat_biased = traverse_util.flatten_dict(biased.params)
    changed = [k for k in flat_plain if not np.array_equal(flat_plain[k], flat_biased[k])]
    assert len(changed) == 1 and changed[0][-3:] == ("lstm", "hf", "bias"), changed
    np.testing.assert_array_equal(flat_biased[changed[0]], np.ones(8))
    # the target network starts from the same parameters
    chex.assert_trees_all_equal(biased.params, biased.target_params)
    gru = {"params": {"core": {"gru": {"hr": {"bias": jnp.zeros(3)}}}}}
    chex.assert_trees_all_equal(set_forget_bias(gru, 1.0), gru)
