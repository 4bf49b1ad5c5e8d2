"""Agent57's sliding-window UCB meta-controller: against a plain Python reimplementation on random
histories (window wrap-around included), untried arms first, masked envs untouched, jit and vmap,
bad settings, and a synthetic bandit whose best arm switches half way through."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.bandits import sliding_window_ucb as swucb


class Reference:
    """The bandit as plain Python lists: each env's last `window` (arm, return) pairs."""

    def __init__(self, num_envs, num_arms, window):
        self.num_arms, self.window = num_arms, window
        self.history = [[] for _ in range(num_envs)]
        self.count = [0] * num_envs

    def update(self, arms, rewards, mask):
        for e, ended in enumerate(mask):
            if ended:
                self.history[e] = (self.history[e] + [(int(arms[e]), float(rewards[e]))])[-self.window:]
                self.count[e] += 1

    def scores(self, beta):
        out = np.zeros((len(self.history), self.num_arms))
        for e, pairs in enumerate(self.history):
            for a in range(self.num_arms):
                returns = [r for arm, r in pairs if arm == a]
                out[e, a] = (sum(returns) / len(returns) + beta * math.sqrt(1.0 / len(returns))) if returns else math.inf
        return out

    def select(self, beta, epsilon, u, random_arm):
        chosen = []
        for e, scores in enumerate(self.scores(beta)):
            if self.count[e] < self.num_arms:
                chosen.append(self.count[e])
            elif u[e] < epsilon:
                chosen.append(int(random_arm[e]))
            else:
                best = 0
                for a in range(1, self.num_arms):
                    if scores[a] > scores[best]:
                        best = a
                chosen.append(best)
        return np.array(chosen)


def draws(key, num_envs, num_arms):
    """The ε draws and random arms `select` takes from `key` (as its docstring states)."""
    explore_key, arm_key = jax.random.split(key)
    return (np.asarray(jax.random.uniform(explore_key, (num_envs,))),
            np.asarray(jax.random.randint(arm_key, (num_envs,), 0, num_arms, dtype=jnp.int32)))


def random_state(seed, num_envs=4, num_arms=3, window=5, steps=12):
    rng = np.random.default_rng(seed)
    state = swucb.init(num_envs, num_arms, window)
    for _ in range(steps):
        state = swucb.update(state, jnp.asarray(rng.integers(0, num_arms, num_envs), jnp.int32),
                             jnp.asarray(rng.normal(size=num_envs), jnp.float32), jnp.asarray(rng.random(num_envs) < 0.7))
    return state


class SlidingWindowUCBTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_select_and_update_match_python_reference_on_random_histories(self):
        num_envs, num_arms, window, beta, epsilon = 6, 4, 7, 0.8, 0.3
        rng = np.random.default_rng(0)
        state, ref = swucb.init(num_envs, num_arms, window), Reference(num_envs, num_arms, window)
        select = self.variant(swucb.select)
        update = self.variant(swucb.update)
        scores = self.variant(swucb.ucb_scores)
        key = jax.random.PRNGKey(0)
        # env 0 ends an episode rarely (stays in the round-robin phase longer), the others often
        p_end = np.array([0.1, 0.9, 0.9, 0.7, 0.5, 1.0])
        compared_after_wrap = 0
        for step in range(60):
            key, sub = jax.random.split(key)
            arms = np.asarray(select(state, sub, beta, epsilon))
            np.testing.assert_array_equal(arms, ref.select(beta, epsilon, *draws(sub, num_envs, num_arms)))
            np.testing.assert_allclose(scores(state, beta), ref.scores(beta), rtol=1e-5, atol=1e-6)
            rewards = rng.normal(arms.astype(np.float64), 1.0).astype(np.float32)  # arm-dependent returns
            mask = rng.random(num_envs) < p_end
            state = update(state, jnp.asarray(arms), jnp.asarray(rewards), jnp.asarray(mask))
            ref.update(arms, rewards, mask)
            np.testing.assert_array_equal(state.count, ref.count)
            compared_after_wrap += sum(c > window for c in ref.count)
        assert min(ref.count[1:]) > 2 * window  # the ring buffers wrapped around more than once
        assert compared_after_wrap > 100

    @chex.variants(with_jit=True, without_jit=True)
    def test_window_keeps_only_the_last_tau_episodes(self):
        state = swucb.init(1, 2, 3)
        update = self.variant(swucb.update)
        one = jnp.ones((1,), bool)
        for arm, reward in [(0, 100.0), (1, 1.0), (1, 3.0), (0, 5.0), (0, 7.0)]:
            state = update(state, jnp.array([arm]), jnp.array([reward]), one)
        # window: (1, 3.0), (0, 5.0), (0, 7.0); the first two episodes are forgotten
        n, total = swucb.window_stats(state)
        np.testing.assert_array_equal(n, [[2.0, 1.0]])
        np.testing.assert_allclose(total, [[12.0, 3.0]])
        np.testing.assert_allclose(swucb.ucb_scores(state, 2.0), [[6.0 + 2.0 * math.sqrt(0.5), 3.0 + 2.0]], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_untried_arms_are_selected_first(self):
        num_arms = 5
        select, update = self.variant(swucb.select), self.variant(swucb.update)
        state, key = swucb.init(2, num_arms, 8), jax.random.PRNGKey(3)
        # round robin over the first num_arms episodes, even with epsilon = 1 and any returns
        for k in range(num_arms):
            key, sub = jax.random.split(key)
            arms = select(state, sub, 1.0, 1.0)
            np.testing.assert_array_equal(arms, [k, k])
            state = update(state, arms, jnp.array([-10.0 * k, 10.0 * k]), jnp.ones(2, bool))
        # afterwards an arm that left the window has an infinite bonus: the greedy choice takes it
        state = swucb.init(1, 3, 3)
        for arm, reward in [(0, 0.0), (1, 0.0), (2, -50.0), (0, 9.0), (0, 9.0), (0, 9.0)]:
            state = update(state, jnp.array([arm]), jnp.array([reward]), jnp.ones(1, bool))
        np.testing.assert_array_equal(select(state, key, 0.0, 0.0), [1])  # arms 1 and 2 untried: lowest first
        state = update(state, jnp.array([1]), jnp.array([-100.0]), jnp.ones(1, bool))
        np.testing.assert_array_equal(select(state, key, 0.0, 0.0), [2])  # arm 2 next, though arm 0 scores 9
        state = update(state, jnp.array([2]), jnp.array([-100.0]), jnp.ones(1, bool))
        np.testing.assert_array_equal(select(state, key, 0.0, 0.0), [0])  # all tried: the argmax

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_envs_are_unchanged_bit_for_bit(self):
        state = random_state(1, num_envs=5)
        mask = jnp.array([True, False, True, False, False])
        rewards = jnp.array([1.5, jnp.nan, -2.0, jnp.inf, 7.0], jnp.float32)  # junk where nothing ended
        new = self.variant(swucb.update)(state, jnp.array([2, 1, 0, 2, 1]), rewards, mask)
        keep = ~np.asarray(mask)
        np.testing.assert_array_equal(np.asarray(new.arms)[keep], np.asarray(state.arms)[keep])
        np.testing.assert_array_equal(np.asarray(new.rewards)[keep].view(np.uint32),
                                      np.asarray(state.rewards)[keep].view(np.uint32))
        np.testing.assert_array_equal(np.asarray(new.count)[keep], np.asarray(state.count)[keep])
        np.testing.assert_array_equal(np.asarray(new.count)[~keep], np.asarray(state.count)[~keep] + 1)
        slot = np.asarray(state.count)[~keep] % state.window
        np.testing.assert_array_equal(np.asarray(new.rewards)[~keep, :][[0, 1], slot], [1.5, -2.0])
        np.testing.assert_array_equal(np.asarray(new.arms)[~keep, :][[0, 1], slot], [2, 0])

    def test_jit_equals_no_jit_and_vmap_over_runs_equals_each_run(self):
        states = [random_state(s, steps=9 + s) for s in range(3)]
        keys = jax.random.split(jax.random.PRNGKey(7), 3)
        arms = jnp.array([[0, 1, 2, 1], [2, 2, 0, 1], [1, 0, 0, 2]], jnp.int32)
        rewards = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 3.0, -4.0], [0.1, 0.2, 0.3, 0.4]], jnp.float32)
        mask = jnp.array([[True, False, True, True], [False, False, True, False], [True, True, True, True]])
        for i, state in enumerate(states):
            for beta, eps in [(0.5, 0.0), (1.0, 0.5), (0.0, 1.0)]:
                np.testing.assert_array_equal(swucb.select(state, keys[i], beta, eps),
                                              jax.jit(swucb.select)(state, keys[i], beta, eps))
            plain = swucb.update(state, arms[i], rewards[i], mask[i])
            jitted = jax.jit(swucb.update)(state, arms[i], rewards[i], mask[i])
            chex.assert_trees_all_equal(plain, jitted)
        batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
        selected = jax.jit(jax.vmap(swucb.select, in_axes=(0, 0, None, None)))(batched, keys, 0.7, 0.25)
        updated = jax.jit(jax.vmap(swucb.update))(batched, arms, rewards, mask)
        for i, state in enumerate(states):
            np.testing.assert_array_equal(selected[i], swucb.select(state, keys[i], 0.7, 0.25))
            chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], updated),
                                        swucb.update(state, arms[i], rewards[i], mask[i]))

    def test_beta_and_epsilon_may_be_traced(self):
        state = random_state(4, steps=20)
        key = jax.random.PRNGKey(0)
        f = jax.jit(lambda s, k, b, e: swucb.select(s, k, b, e))
        for beta, eps in [(0.0, 0.0), (3.0, 0.2)]:
            np.testing.assert_array_equal(f(state, key, jnp.float32(beta), jnp.float32(eps)),
                                          swucb.select(state, key, beta, eps))

    def test_epsilon_share_of_random_arms(self):
        # every env past its round robin, greedy arm 0 everywhere: non-greedy picks come from ε only
        num_envs, num_arms = 4000, 4
        state = swucb.init(num_envs, num_arms, 4)
        for arm, reward in enumerate([5.0, 0.0, 0.0, 0.0]):
            state = swucb.update(state, jnp.full((num_envs,), arm), jnp.full((num_envs,), reward), jnp.ones(num_envs, bool))
        arms = np.asarray(jax.jit(swucb.select)(state, jax.random.PRNGKey(1), 0.1, 0.4))
        np.testing.assert_allclose((arms != 0).mean(), 0.4 * 3 / 4, atol=0.025)
        np.testing.assert_allclose(np.bincount(arms, minlength=4)[1:] / num_envs, [0.1] * 3, atol=0.02)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_arms=0, window=5), "num_arms"),
    (dict(num_arms=3, window=0), "window"),
    (dict(num_arms=3, window=5, epsilon=1.5), "epsilon"),
    (dict(num_arms=3, window=5, epsilon=-0.1), "epsilon"),
    (dict(num_arms=3, window=5, epsilon=float("nan")), "epsilon"),
    (dict(num_arms=3, window=5, beta=-1.0), "beta"),
    (dict(num_arms=3, window=5, beta=float("nan")), "beta"),
    (dict(num_arms=3, window=5, num_envs=0), "num_envs"),
])
def test_validate_refuses_bad_settings_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        swucb.validate(**kwargs)
    assert "\n" not in str(info.value)


def test_validate_accepts_the_edges_and_init_checks_sizes():
    swucb.validate(num_arms=1, window=1, beta=0.0, epsilon=0.0)
    swucb.validate(num_arms=32, window=160, beta=1.0, epsilon=1.0)
    with pytest.raises(ValueError, match="window"):
        swucb.init(2, 3, 0)


# ---- a synthetic non-stationary problem -------------------------------------------------

NUM_ENVS, NUM_ARMS, EPISODES, SWITCH = 16, 8, 2000, 1000
# τ = 160 as Agent57's meta-controller. β is in units of return: the paper's β = 1 is small
# next to Atari returns, but as large as the whole reward range here, so β = 0.1 (about the
# gap between neighbouring arms). ε = 0.1 rather than the paper's 0.5: with ε = 0.5 at most
# 0.5 + 0.5 / 8 = 56% of the picks could go to the best arm, below the 60% asked.
WINDOW, BETA, EPSILON = 160, 0.1, 0.1


def run_switching_bandit(kind: str, seed: int) -> np.ndarray:
    """Arms `[EPISODES, NUM_ENVS]` picked when arm 7 is best for SWITCH episodes, then arm 0."""
    before = jnp.linspace(0.2, 0.8, NUM_ARMS)
    after = before[::-1]

    def episode(carry, t):
        state, key = carry
        key, select_key, reward_key = jax.random.split(key, 3)
        arms = swucb.select(state, select_key, BETA, EPSILON)
        mean = jnp.where(t < SWITCH, before, after)[arms]
        if kind == "bernoulli":
            returns = (jax.random.uniform(reward_key, (NUM_ENVS,)) < mean).astype(jnp.float32)
        else:
            returns = mean + 0.5 * jax.random.normal(reward_key, (NUM_ENVS,))
        state = swucb.update(state, arms, returns, jnp.ones((NUM_ENVS,), bool))
        return (state, key), arms

    run = jax.jit(lambda key: jax.lax.scan(episode, (swucb.init(NUM_ENVS, NUM_ARMS, WINDOW), key),
                                           jnp.arange(EPISODES))[1])
    return np.asarray(run(jax.random.PRNGKey(seed)))


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_bandit_follows_the_best_arm_after_it_switches(kind):
    arms = run_switching_bandit(kind, seed=0)
    share_before = (arms[SWITCH - WINDOW:SWITCH] == NUM_ARMS - 1).mean()
    share_after = (arms[-WINDOW:] == 0).mean()
    print(f"{kind}: best-arm share in the last window before the switch {share_before:.3f}, "
          f"at the end {share_after:.3f}")
    assert share_before >= 0.6
    assert share_after >= 0.6


def test_bandit_state_vmaps_over_seeds_with_seed_axes():
    """`seed_axes` leaves the static `num_arms` alone (it is part of the treedef), so a state of
    several seeds vmaps like any other run state, each seed equal to its own single run."""
    from angle_jax.core.axes import seed_axes

    def run(key):
        state = swucb.init(2, 3, 4)
        for _ in range(5):
            key, k_sel, k_r = jax.random.split(key, 3)
            arms = swucb.select(state, k_sel, 1.0, 0.1)
            state = swucb.update(state, arms, jax.random.normal(k_r, (2,)), jnp.array([True, False]))
        return state

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    axes = seed_axes(swucb.init(2, 3, 4))
    assert axes.num_arms == 3 and axes.arms == 0
    batched = jax.vmap(run, out_axes=axes)(keys)
    for i, key in enumerate(keys):
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], batched), run(key))
