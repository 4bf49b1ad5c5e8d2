"""Data-feed env: reward arithmetic, no look-ahead, window bounds, split, batching, bad data."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import registry
from angle_jax.envs.datafeed import (DataFeedConfig, DataFeedEnv, buy_and_hold_return, config_from_kwargs,
                                     play_report)

ROOT = Path(__file__).resolve().parent.parent

PRICES = [100.0, 102.0, 101.0, 104.0, 103.0, 106.0, 108.0, 107.0, 110.0, 111.0, 109.0, 113.0]
INDICATOR = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 3.0, 1.0, -2.0, 0.5, 1.0, -1.5]


def write_csv(path: Path, prices=PRICES, indicator=INDICATOR, header="date,price,ind") -> Path:
    lines = [header]
    for i, (p, x) in enumerate(zip(prices, indicator)):
        lines.append(f"2020-01-{i + 1:02d},{p},{x}")
    path.write_text("\n".join(lines) + "\n")
    return path


def make(path: Path, num_envs: int = 1, **kwargs) -> DataFeedEnv:
    base = dict(path=str(path), window=2, episode_length=4, train_fraction=0.7)
    base.update(kwargs)
    return DataFeedEnv(num_envs, config_from_kwargs(**base))


def rollout(env, actions, key=0):
    """Run `actions` ([steps, num_envs, ...]) from a reset in one compiled scan.

    Returns the first observation, the states before each step and the time steps, stacked over steps."""
    @jax.jit
    def run(actions, key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset)

        def body(state, x):
            action, k = x
            new_state, ts = env.step(state, action, k)
            return new_state, (state, ts)

        _, (states, steps) = jax.lax.scan(body, state, (actions, jax.random.split(k_steps, len(actions))))
        return obs, states, steps

    obs, states, steps = run(jnp.asarray(actions), jax.random.PRNGKey(key))
    return obs, jax.tree.map(np.asarray, states), jax.tree.map(np.asarray, steps)


def at(tree, k):
    """Step `k` of a pytree stacked over steps."""
    return jax.tree.map(lambda x: x[k], tree)


# ---- reward arithmetic --------------------------------------------------------------

def test_discrete_rewards_match_hand_computation(tmp_path):
    path = write_csv(tmp_path / "s.csv")
    # 12 rows, split row b = floor(0.7 * 12) = 8; window 2 with returns: first observable row 2.
    # train starts in [2, b - 1 - 4] = [2, 3]: with episode_length 5 only start 2 remains.
    env = make(path, episode_length=5, cost_bps=10.0)
    assert env.layout.num_starts == 1 and env.layout.start_low == 2
    actions = [[2], [2], [0], [1], [0]]                     # long, long, short, flat, short
    positions = [1.0, 1.0, -1.0, 0.0, -1.0]
    _, _, steps = rollout(env, actions)
    c = 10.0 * 1e-4
    prev = 0.0
    for k, pos in enumerate(positions):
        ts = at(steps, k)
        t = 2 + k
        expected = pos * (PRICES[t + 1] / PRICES[t] - 1.0) - c * abs(pos - prev)
        prev = pos
        assert float(ts.reward[0]) == pytest.approx(expected, abs=1e-6)
        assert float(ts.info["position"][0]) == pos
        assert bool(ts.truncated[0]) == (k == 4)
        assert not bool(ts.terminated[0])


def test_continuous_log_rewards_scale_and_fraction_cost(tmp_path):
    path = write_csv(tmp_path / "s.csv")
    env = make(path, episode_length=5, actions="continuous", returns="log", cost=0.002, reward_scale=100.0)
    weights = [0.5, -0.25, 1.7, 0.0, -1.0]                  # 1.7 is clipped to 1
    _, _, steps = rollout(env, [[[w]] for w in weights])
    prev = 0.0
    for k, w in enumerate(weights):
        ts = at(steps, k)
        t = 2 + k
        pos = max(-1.0, min(1.0, w))
        raw = pos * math.log(PRICES[t + 1] / PRICES[t]) - 0.002 * abs(pos - prev)
        prev = pos
        assert float(ts.info["raw_reward"][0]) == pytest.approx(raw, abs=1e-6)
        assert float(ts.reward[0]) == pytest.approx(100.0 * raw, abs=1e-4)


def test_observation_is_normalised_window_plus_position(tmp_path):
    path = write_csv(tmp_path / "s.csv")
    env = make(path, episode_length=5)
    b = 8
    logret = np.concatenate([[0.0], np.diff(np.log(PRICES))])
    raw = np.stack([logret, INDICATOR], axis=1)
    train = raw[1:b]                                        # row 0 has no return
    z = (raw - train.mean(0)) / train.std(0)
    obs, _, steps = rollout(env, [[2], [0]])
    np.testing.assert_allclose(np.asarray(obs[0]), np.concatenate([z[1:3].ravel(), [0.0]]), atol=1e-5)
    np.testing.assert_allclose(steps.next_obs[0, 0], np.concatenate([z[2:4].ravel(), [1.0]]), atol=1e-5)
    np.testing.assert_allclose(steps.obs[1, 0], np.concatenate([z[3:5].ravel(), [-1.0]]), atol=1e-5)


# ---- no look-ahead, bounds, split ------------------------------------------------------

def test_no_look_ahead_in_test_observations_and_rewards(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    prices = list(100 * np.exp(np.cumsum(0.01 * rng.standard_normal(n))))
    ind = list(rng.standard_normal(n))
    kwargs = dict(window=8, train_fraction=0.5, split="test", test_episode_length=40)
    env_a = make(write_csv(tmp_path / "a.csv", prices, ind), **kwargs)
    b = env_a.layout.split_row
    assert env_a.layout.num_starts > 1
    cut = b + 20                                            # rows >= cut differ in the second file
    prices_b = prices[:cut] + [p * (1.3 + 0.02 * j) for j, p in enumerate(prices[cut:])]
    ind_b = ind[:cut] + [x + 5.0 for x in ind[cut:]]
    env_b = make(write_csv(tmp_path / "b.csv", prices_b, ind_b), **kwargs)

    # force the first test start so that both envs walk the same rows
    obs_a, s_a = env_a.reset(jax.random.PRNGKey(0))
    s_a = s_a.replace(t=jnp.array([b]), start=jnp.array([b]))
    s_b = s_a
    assert np.array_equal(np.asarray(env_a.observe(b, jnp.float32(0))), np.asarray(env_b.observe(b, jnp.float32(0))))
    key = jax.random.PRNGKey(3)
    step_a, step_b = jax.jit(env_a.step), jax.jit(env_b.step)
    for k in range(30):
        t = b + k
        action = jnp.array([k % 3])
        s_a, ts_a = step_a(s_a, action, key)
        s_b, ts_b = step_b(s_b, action, key)
        same_obs = np.array_equal(np.asarray(ts_a.next_obs), np.asarray(ts_b.next_obs))
        same_reward = np.array_equal(np.asarray(ts_a.reward), np.asarray(ts_b.reward))
        assert same_obs == (t + 1 < cut), f"observation at row {t + 1}"   # uses rows <= t + 1 only
        if k % 3 != 1:                                      # a flat position pays no return
            assert same_reward == (t + 1 < cut), f"reward of the decision at row {t}"


def test_training_never_sees_test_rows(tmp_path):
    rng = np.random.default_rng(1)
    n = 120
    prices = list(100 * np.exp(np.cumsum(0.01 * rng.standard_normal(n))))
    ind = list(rng.standard_normal(n))
    env_a = make(write_csv(tmp_path / "a.csv", prices, ind), num_envs=16, window=4, episode_length=10)
    b = env_a.layout.split_row
    prices_b = prices[:b] + [p * 2.0 for p in prices[b:]]
    ind_b = ind[:b] + [x * 10.0 - 3.0 for x in ind[b:]]
    env_b = make(write_csv(tmp_path / "b.csv", prices_b, ind_b), num_envs=16, window=4, episode_length=10)
    np.testing.assert_array_equal(env_a.feature_mean, env_b.feature_mean)
    actions = np.random.default_rng(2).integers(0, 3, (35, 16))
    obs_a, _, steps_a = rollout(env_a, actions)
    obs_b, _, steps_b = rollout(env_b, actions)
    np.testing.assert_array_equal(np.asarray(obs_a), np.asarray(obs_b))
    np.testing.assert_array_equal(steps_a.next_obs, steps_b.next_obs)
    np.testing.assert_array_equal(steps_a.reward, steps_b.reward)
    assert np.any(steps_a.truncated)                         # episodes ended and restarted


@pytest.mark.parametrize("split", ["train", "test"])
def test_episodes_stay_inside_their_period(tmp_path, split):
    rng = np.random.default_rng(3)
    n = 90
    prices = list(100 * np.exp(np.cumsum(0.01 * rng.standard_normal(n))))
    env = make(write_csv(tmp_path / "s.csv", prices, list(rng.standard_normal(n))), num_envs=128,
               window=5, episode_length=7, split=split, test_episode_length=7)
    b, w, length = env.layout.split_row, 5, 7
    _, states, steps = rollout(env, np.ones((60, 128), np.int32))
    t, steps_in_ep, trunc = states.t, states.steps, steps.truncated   # t: decision rows
    assert not np.any(steps.terminated)
    assert np.array_equal(trunc, steps_in_ep == length - 1)  # every episode lasts exactly `length` steps
    assert t.min() - w + 1 >= 1                              # observation window inside the data (row 0 has no return)
    if split == "train":
        assert t.max() + 1 <= b - 1                          # the last reward reads a training price
    else:
        assert t.min() >= b and t.max() + 1 <= n - 1         # test rewards read test prices only
    assert len(np.unique(states.start)) == env.layout.num_starts   # every allowed start is drawn


def test_train_and_test_use_disjoint_price_rows():
    train = registry.make_raw_env("DataFeed-v0", 64)
    test = registry.make_raw_env("DataFeed-v0", 4, split="test")
    assert test.spec.max_episode_steps == test.layout.num_rows - 1 - test.layout.split_row
    rows = {}
    for name, env in (("train", train), ("test", test)):
        _, states, _ = rollout(env, np.ones((300, env.spec.num_envs), np.int32))
        t = states.t
        rows[name] = set(t.ravel()) | set(t.ravel() + 1)    # rows whose prices enter a reward
    assert rows["train"].isdisjoint(rows["test"])
    assert max(rows["train"]) < train.layout.split_row <= min(rows["test"])


# ---- batching -----------------------------------------------------------------------

def test_batched_step_equals_per_env_step_and_vmaps_over_seeds():
    env = registry.make_raw_env("DataFeedContinuous-v0", 5)
    action = jnp.linspace(-1.0, 1.0, 5)[:, None]
    seeds = jax.random.split(jax.random.PRNGKey(2), 3)
    obs_s, state_s = jax.jit(jax.vmap(env.reset))(seeds)
    new_s, ts_s = jax.jit(jax.vmap(env.step, in_axes=(0, None, 0)))(state_s, action, seeds)
    assert obs_s.shape == (3, 5, *env.spec.obs_shape) and ts_s.reward.shape == (3, 5)
    assert len(set(np.asarray(state_s.start).ravel().tolist())) > 5   # envs and seeds start at different dates

    step_one = jax.jit(env._step_one)
    for s in range(2):
        keys = jax.random.split(seeds[s], 5)
        for i in range(5):
            one = jax.tree.map(lambda x: x[s, i], state_s)
            _, _, next_i, raw_i, _, _ = step_one(one, action[i], keys[i])
            np.testing.assert_allclose(np.asarray(ts_s.next_obs[s, i]), np.asarray(next_i))
            assert float(ts_s.reward[s, i]) == pytest.approx(float(raw_i))
            assert int(new_s.t[s, i]) == int(state_s.t[s, i]) + 1


# ---- buy and hold -----------------------------------------------------------------

def test_buy_and_hold_matches_hand_sum_and_an_always_long_agent(tmp_path):
    path = write_csv(tmp_path / "s.csv")
    kwargs = dict(path=str(path), window=2, episode_length=3, train_fraction=0.7, cost_bps=5.0)
    b = 8
    hand = sum(PRICES[t + 1] / PRICES[t] - 1.0 for t in range(b, len(PRICES) - 1)) - 5e-4
    assert buy_and_hold_return(**kwargs) == pytest.approx(hand, abs=1e-12)
    env = registry.make_env("DataFeed-v0", 2, split="test", **{k: v for k, v in kwargs.items()})
    assert buy_and_hold_return(env) == pytest.approx(hand, abs=1e-12)
    obs, state = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for k in range(env.spec.max_episode_steps):
        state, ts = step(state, jnp.array([2, 2]), jax.random.PRNGKey(k))
    assert bool(ts.info["episode_done"][0])
    assert float(ts.info["episode_return"][0]) == pytest.approx(hand, abs=1e-5)
    line = play_report("DataFeed-v0", [0.25, 0.75], split="test", returns="simple", **kwargs)
    assert "0.5000" in line and f"{hand:.4f}" in line and "same test period" in line
    assert "not the same windows" in play_report("DataFeed-v0", [0.0], **kwargs)


# ---- bad data and settings ----------------------------------------------------------

def expect_error(match, **kwargs):
    with pytest.raises(ValueError, match=match):
        DataFeedEnv(2, config_from_kwargs(**kwargs))


def test_missing_file_and_columns(tmp_path):
    expect_error("does not exist", path=str(tmp_path / "nope.csv"))
    path = write_csv(tmp_path / "s.csv")
    expect_error(r"no column 'close'", path=str(path), price_column="close", window=2, episode_length=2)
    expect_error(r"no column 'volume'", path=str(path), feature_columns=["volume"], window=2, episode_length=2)
    expect_error("unsupported file type", path=str(write_csv(tmp_path / "s.json")))


@pytest.mark.parametrize("cell,problem", [("", "missing or NaN"), ("nan", "missing or NaN"),
                                          ("abc", "non-numeric"), ("inf", "non-finite")])
def test_bad_cells_name_column_and_row(tmp_path, cell, problem):
    ind = [str(x) for x in INDICATOR]
    ind[5] = cell
    path = tmp_path / "s.csv"
    path.write_text("date,price,ind\n" + "".join(f"d{i},{p},{x}\n" for i, (p, x) in enumerate(zip(PRICES, ind))))
    expect_error(rf"column 'ind', row 6 \(line 7\): {problem}", path=str(path), window=2, episode_length=2)


def test_bad_prices_ragged_rows_and_npy(tmp_path):
    prices = list(PRICES)
    prices[3] = 0.0
    expect_error("row 4: prices must be positive", path=str(write_csv(tmp_path / "z.csv", prices)),
                 window=2, episode_length=2)
    ragged = tmp_path / "r.csv"
    ragged.write_text("price,ind\n1,2\n3\n")
    expect_error(r"row 2 \(line 3\) has 1 fields", path=str(ragged))
    array = np.stack([PRICES, INDICATOR], axis=1)
    array[7, 1] = np.nan
    np.save(tmp_path / "a.npy", array)
    expect_error("column 1, row 8", path=str(tmp_path / "a.npy"), window=2, episode_length=2)
    expect_error("integer indices", path=str(tmp_path / "a.npy"), price_column="price")


def test_series_too_short(tmp_path):
    path = write_csv(tmp_path / "s.csv")
    expect_error(r"too short for window \(2\) \+ episode_length \(6\)", path=str(path), window=2,
                 episode_length=6, train_fraction=0.7)
    expect_error(r"too short for window \(8\)", path=str(path), window=8, episode_length=1, train_fraction=0.7)
    expect_error(r"test_episode_length \(4\) in the test period", path=str(path), window=2,
                 split="test", test_episode_length=4, train_fraction=0.7)
    make(path, episode_length=5)                            # the longest that fits builds


def test_bad_settings():
    expect_error("unknown split 'validation'", split="validation")
    expect_error("cost is a fraction", cost=-0.01)
    expect_error("cost is a fraction", cost=1.5)
    expect_error("cost_bps must be in", cost_bps=-3)
    expect_error("cost_bps must be a finite number", cost_bps="ten")
    expect_error("not both", cost=0.001, cost_bps=10)
    expect_error("actions must be", actions="multi")
    expect_error("returns must be", returns="pct")
    expect_error("window must be an integer", window=0)
    expect_error("train_fraction must be in", train_fraction=1.0)
    expect_error("did you mean 'window'", windw=3)
    with pytest.raises(ValueError, match="actions are 'discrete'"):
        registry.make_env("DataFeedDiscrete-v0", 1, actions="continuous")


def test_sample_data_is_reproducible(tmp_path):
    from angle_jax.envs.data import make_sample_prices
    out = make_sample_prices.write_csv(tmp_path / "sample.csv")
    assert out.read_bytes() == make_sample_prices.DEFAULT_PATH.read_bytes()
    assert DataFeedConfig().path is None


# ---- through the compiled loop --------------------------------------------------------

def test_datafeed_and_example_env_train_through_compiled_loop():
    from angle_jax.algos import td3
    from angle_jax.training.off_policy import OffPolicyLoop, make_train

    env = registry.make_env("DataFeedContinuous-v0", 2, episode_length=32, reward_scale=100.0)
    algo = td3.make(td3.Config(actor_hidden=(16,), critic_hidden=(16,)), env.spec)
    loop = OffPolicyLoop(num_envs=2, capacity_per_env=256, batch_size=16, learning_starts_iters=20,
                         train_frequency=1, gradient_steps=1)
    fns = make_train(algo, env, loop)
    carry, logs = jax.jit(fns.run, static_argnums=1)(jax.jit(fns.init)(jax.random.PRNGKey(0)), 80)
    assert int(carry.iteration) == 80 and float(logs["episodes"]) == 4.0
    assert np.isfinite(float(logs["critic_loss"]))

    spec = importlib.util.spec_from_file_location("custom_env_example", ROOT / "examples" / "custom_env.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.ENV_NAME in registry.env_names()
    carry, before, after = example.train(iterations=300, num_envs=2, chunks=1, verbose=False)
    assert int(carry.iteration) == 300
    assert before.shape == after.shape == (8,) and np.all(np.isfinite(np.asarray(after)))
