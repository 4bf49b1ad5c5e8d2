"""A data-feed env: transitions replayed from a recorded series, in pure JAX.

The state of each env is a time index into series held as device arrays
(a traded price and feature columns, from CSV or `.npy`), plus the position
held. Row `t` is one date; the agent observes data up to and including row
`t`, picks a position that it holds from `t` to `t + 1`, and is paid

    reward = position * R(t, t+1) - cost * |position - previous position|

with `R` the simple (`p[t+1] / p[t] - 1`) or log (`log(p[t+1] / p[t])`)
return of the traded price and `cost` a fraction of the traded notional.
The position starts flat; nothing is charged for the position still open
when an episode ends.

Observation: the last `window` rows (ending at `t`) of the normalised
features, flattened, then the current position. Features are the log return
of the price into `t` (optional) and the chosen feature columns, z-scored
with statistics of the training period only and clipped to +-`clip_obs`.

Split by time at row `b = floor(train_fraction * rows)`. Training rewards use
prices of rows `< b` only; test rewards use prices of rows `>= b` only; a test
observation may look back into rows before `b` (they are in the past), never
forward. Training episodes are random windows of `episode_length` steps;
test episodes are, by default, the whole test period from its first date
(`test_episode_length` picks random windows of that length instead).

Termination: a position lies in [-1, 1] (no leverage), so there is no
bankruptcy rule and `terminated` is always False; every episode ends by
truncation at the end of its window (the data goes on, so bootstrapping
there is right).
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from angle_jax.envs.base import Box, Discrete, Env, EnvSpec, TimeStep

SAMPLE_DATA = Path(__file__).resolve().parent / "data" / "sample_prices.csv"
DATAFEED_ENV_NAMES = ("DataFeed-v0", "DataFeedDiscrete-v0", "DataFeedContinuous-v0")
DISCRETE_POSITIONS = (-1.0, 0.0, 1.0)  # action 0 short, 1 flat, 2 long


# ---- settings -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataFeedConfig:
    """Everything that defines a data-feed env; all static (shapes and constants)."""

    path: str | None = None              # CSV or .npy; None = the shipped sample series
    price_column: str | int | None = None  # CSV header name or .npy column index; None = "price" / 0
    feature_columns: tuple | None = None   # None = every column but price and date
    date_column: str | None = "date"     # CSV column skipped from the numeric data (if present)
    include_returns: bool = True         # add the price's log return into t as a feature
    window: int = 16                     # rows of features per observation
    episode_length: int = 256            # steps per training episode
    test_episode_length: int | None = None  # None = the whole test period in one episode
    train_fraction: float = 0.8          # first rows for training, the rest for test
    split: str = "train"                 # "train" or "test"
    actions: str = "discrete"            # "discrete" (short/flat/long) or "continuous" ([-1, 1])
    returns: str = "simple"              # "simple" or "log"
    cost_bps: float | None = None        # transaction cost in basis points of the traded notional
    cost: float | None = None            # ... or as a fraction (give at most one); default 1 bp
    reward_scale: float = 1.0            # multiplies the learning reward; info["raw_reward"] is unscaled
    clip_obs: float = 10.0               # clip normalised features to +-clip_obs

    @property
    def cost_fraction(self) -> float:
        if self.cost is not None:
            return float(self.cost)
        if self.cost_bps is not None:
            return float(self.cost_bps) * 1e-4
        return 1e-4


def config_from_kwargs(**kwargs: Any) -> DataFeedConfig:
    """Build a config from env_kwargs, rejecting unknown keys with a hint."""
    names = [f.name for f in dataclasses.fields(DataFeedConfig)]
    for key in kwargs:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"DataFeed: unknown env_kwargs key {key!r}{hint} (valid: {', '.join(names)})")
    if isinstance(kwargs.get("feature_columns"), (list, str)):
        cols = kwargs["feature_columns"]
        kwargs["feature_columns"] = (cols,) if isinstance(cols, str) else tuple(cols)
    return DataFeedConfig(**kwargs)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"DataFeed: {name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"DataFeed: {name} must be a finite number, got {value!r}")
    return float(value)


def validate_config(cfg: DataFeedConfig) -> None:
    """Reject impossible settings (everything that does not need the data)."""
    if cfg.split not in ("train", "test"):
        raise ValueError(f"DataFeed: unknown split {cfg.split!r} (valid: 'train', 'test')")
    if cfg.actions not in ("discrete", "continuous"):
        raise ValueError(f"DataFeed: actions must be 'discrete' or 'continuous', got {cfg.actions!r}")
    if cfg.returns not in ("simple", "log"):
        raise ValueError(f"DataFeed: returns must be 'simple' or 'log', got {cfg.returns!r}")
    _check_int("window", cfg.window, 1)
    _check_int("episode_length", cfg.episode_length, 1)
    if cfg.test_episode_length is not None:
        _check_int("test_episode_length", cfg.test_episode_length, 1)
    fraction = _check_number("train_fraction", cfg.train_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"DataFeed: train_fraction must be in (0, 1), got {cfg.train_fraction!r}")
    if cfg.cost is not None and cfg.cost_bps is not None:
        raise ValueError("DataFeed: give the transaction cost as cost (a fraction) or cost_bps, not both")
    if cfg.cost is not None:
        c = _check_number("cost", cfg.cost)
        if not 0.0 <= c < 1.0:
            raise ValueError(f"DataFeed: cost is a fraction of the traded notional in [0, 1), got {cfg.cost!r}")
    if cfg.cost_bps is not None:
        c = _check_number("cost_bps", cfg.cost_bps)
        if not 0.0 <= c < 1e4:
            raise ValueError(f"DataFeed: cost_bps must be in [0, 10000), got {cfg.cost_bps!r}")
    scale = _check_number("reward_scale", cfg.reward_scale)
    if scale <= 0:
        raise ValueError(f"DataFeed: reward_scale must be positive, got {cfg.reward_scale!r}")
    if _check_number("clip_obs", cfg.clip_obs) <= 0:
        raise ValueError(f"DataFeed: clip_obs must be positive, got {cfg.clip_obs!r}")
    if cfg.feature_columns is not None and not isinstance(cfg.feature_columns, tuple):
        raise ValueError(f"DataFeed: feature_columns must be a list of columns, got {cfg.feature_columns!r}")


# ---- loading --------------------------------------------------------------------

def _parse_cell(text: str, where: str) -> float:
    stripped = text.strip()
    if stripped == "" or stripped.lower() in ("nan", "na", "n/a", "null", "none"):
        raise ValueError(f"{where}: missing or NaN value {text!r}")
    try:
        value = float(stripped)
    except ValueError:
        raise ValueError(f"{where}: non-numeric value {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: non-finite value {text!r}")
    return value


def _read_csv(path: Path, price_column: str, feature_columns: tuple | None,
              date_column: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"DataFeed: {path} is empty")
    header = [h.strip() for h in rows[0]]
    for name in (price_column, *(feature_columns or ())):
        if not isinstance(name, str):
            raise ValueError(f"DataFeed: {path}: CSV columns are named by header, got {name!r}")
        if name not in header:
            raise ValueError(f"DataFeed: {path}: no column {name!r} (columns: {', '.join(header)})")
    if feature_columns is None:
        feature_columns = tuple(h for h in header if h not in (price_column, date_column))
    wanted = (price_column, *feature_columns)
    index = [header.index(name) for name in wanted]
    data = np.empty((len(rows) - 1, len(wanted)), np.float64)
    for r, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise ValueError(f"DataFeed: {path}: row {r} (line {r + 1}) has {len(row)} fields, "
                             f"the header has {len(header)}")
        for j, (name, i) in enumerate(zip(wanted, index)):
            data[r - 1, j] = _parse_cell(row[i], f"DataFeed: {path}: column {name!r}, row {r} (line {r + 1})")
    return data[:, 0], data[:, 1:], list(feature_columns)


def _column_index(path: Path, column: Any, num_columns: int) -> int:
    if isinstance(column, str) and column.strip().isdigit():
        column = int(column)
    if isinstance(column, bool) or not isinstance(column, (int, np.integer)):
        raise ValueError(f"DataFeed: {path}: .npy columns are integer indices, got {column!r}")
    if not 0 <= column < num_columns:
        raise ValueError(f"DataFeed: {path}: no column {column} (the array has {num_columns} columns)")
    return int(column)


def _read_npy(path: Path, price_column: Any, feature_columns: tuple | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"DataFeed: {path}: cannot read as .npy ({e})") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"DataFeed: {path}: expected a [rows, columns] array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"DataFeed: {path}: non-numeric array of dtype {array.dtype}")
    p = _column_index(path, price_column, array.shape[1])
    if feature_columns is None:
        feats = [c for c in range(array.shape[1]) if c != p]
    else:
        feats = [_column_index(path, c, array.shape[1]) for c in feature_columns]
    data = array[:, [p, *feats]].astype(np.float64)
    bad = np.argwhere(~np.isfinite(data))
    if len(bad):
        r, j = bad[0]
        col = [p, *feats][j]
        raise ValueError(f"DataFeed: {path}: column {col}, row {r + 1}: missing, NaN or infinite value {data[r, j]}")
    return data[:, 0], data[:, 1:], [str(c) for c in feats]


def load_series(cfg: DataFeedConfig) -> tuple[np.ndarray, np.ndarray, list[str], Path]:
    """Read `(prices [T], features [T, F], feature names, path)` with every data error a ValueError."""
    path = Path(cfg.path).expanduser() if cfg.path is not None else SAMPLE_DATA
    if not path.is_file():
        raise ValueError(f"DataFeed: data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        price_column = 0 if cfg.price_column is None else cfg.price_column
        prices, features, names = _read_npy(path, price_column, cfg.feature_columns)
    elif suffix in (".csv", ".txt"):
        price_column = "price" if cfg.price_column is None else cfg.price_column
        prices, features, names = _read_csv(path, price_column, cfg.feature_columns, cfg.date_column)
    else:
        raise ValueError(f"DataFeed: {path}: unsupported file type {suffix!r} (use .csv or .npy)")
    nonpositive = np.flatnonzero(prices <= 0)
    if len(nonpositive):
        r = int(nonpositive[0]) + 1
        raise ValueError(f"DataFeed: {path}: price column {price_column!r}, row {r}: "
                         f"prices must be positive, got {prices[r - 1]}")
    return prices, features, names, path


# ---- the arrays the env runs on ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """Row ranges of the series (all static Python ints)."""

    num_rows: int
    split_row: int        # first test row, b
    first_obs_row: int    # first row whose full observation window exists
    start_low: int        # first episode start of this split
    num_starts: int       # episode starts are start_low + [0, num_starts)
    episode_length: int


def make_layout(cfg: DataFeedConfig, num_rows: int, path: Path) -> Layout:
    """Where episodes of `cfg.split` may start so they never leave their period."""
    first_feature_row = 1 if cfg.include_returns else 0
    first_obs_row = first_feature_row + cfg.window - 1
    b = int(math.floor(cfg.train_fraction * num_rows))
    need = f"window ({cfg.window})"
    if cfg.split == "train":
        length = cfg.episode_length
        # decisions at t in [s, s + length), the last reward reads p[s + length] <= p[b - 1]
        low, high = first_obs_row, b - 1 - length
        need += f" + episode_length ({length})"
        period = f"the training period (rows 1..{b})"
    else:
        low, last = max(b, first_obs_row), num_rows - 1
        length = cfg.test_episode_length if cfg.test_episode_length is not None else last - low
        high = last - length
        if cfg.test_episode_length is not None:
            need += f" + test_episode_length ({length})"
        period = f"the test period (rows {b + 1}..{num_rows})"
    if length < 1 or high < low:
        raise ValueError(f"DataFeed: {path}: the series ({num_rows} rows, train_fraction "
                         f"{cfg.train_fraction}) is too short for {need} in {period}")
    return Layout(num_rows, b, first_obs_row, low, high - low + 1, length)


def feature_matrix(prices: np.ndarray, features: np.ndarray, include_returns: bool) -> np.ndarray:
    """Unnormalised features per row: [log return into t,] feature columns. Row 0's return is 0."""
    cols = []
    if include_returns:
        cols.append(np.concatenate([[0.0], np.diff(np.log(prices))])[:, None])
    cols.append(features)
    return np.concatenate(cols, axis=1)


def train_statistics(raw: np.ndarray, layout: Layout, include_returns: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every feature over training rows only (std of a constant feature = 1)."""
    first = 1 if include_returns else 0
    rows = raw[first:layout.split_row]
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def step_returns(prices: np.ndarray, kind: str) -> np.ndarray:
    """R[t] = return from row t to t + 1 (simple or log); the last row gets 0 (never used)."""
    if kind == "log":
        r = np.diff(np.log(prices))
    else:
        r = prices[1:] / prices[:-1] - 1.0
    return np.concatenate([r, [0.0]])


def buy_and_hold_from_arrays(returns: np.ndarray, start: int, length: int, cost: float) -> float:
    """Sum of rewards of holding +1 from `start` for `length` steps, entered from flat."""
    return float(np.sum(returns[start:start + length]) - cost)


# ---- the env --------------------------------------------------------------------

@struct.dataclass
class DataFeedState:
    """Per-env state (leading axis num_envs): current row, episode start and step, position."""

    t: jax.Array
    start: jax.Array
    steps: jax.Array
    position: jax.Array


class DataFeedEnv(Env):
    """Trading on a recorded series, batched over `num_envs`, auto-resetting."""

    def __init__(self, num_envs: int, config: DataFeedConfig | None = None, name: str = "DataFeed-v0"):
        cfg = config or DataFeedConfig()
        _check_int("num_envs", num_envs, 1)
        validate_config(cfg)
        prices, features, names, path = load_series(cfg)
        layout = make_layout(cfg, len(prices), path)
        raw = feature_matrix(prices, features, cfg.include_returns)
        mean, std = train_statistics(raw, layout, cfg.include_returns)
        normalised = np.clip((raw - mean) / std, -cfg.clip_obs, cfg.clip_obs)
        if normalised.shape[1] == 0:
            raise ValueError(f"DataFeed: {path}: no features to observe (feature_columns is empty "
                             "and include_returns is false)")

        self.config = cfg
        self.layout = layout
        self.path = path
        self.feature_names = (["log_return"] if cfg.include_returns else []) + names
        self.feature_mean, self.feature_std = mean, std
        self.prices_np = prices
        self.returns_np = step_returns(prices, cfg.returns)
        self.features = jnp.asarray(normalised, jnp.float32)
        self.returns = jnp.asarray(self.returns_np, jnp.float32)
        self.cost = cfg.cost_fraction
        self.num_features = normalised.shape[1]
        if cfg.actions == "discrete":
            space: Discrete | Box = Discrete(len(DISCRETE_POSITIONS))
        else:
            space = Box.symmetric((1,))
        self.spec = EnvSpec(
            name=name,
            obs_shape=(cfg.window * self.num_features + 1,),
            obs_dtype="float32",
            action_space=space,
            num_envs=int(num_envs),
            max_episode_steps=layout.episode_length,
        )

    # pure pieces, one env
    def position_of(self, action: jax.Array) -> jax.Array:
        """Target position in [-1, 1] from a discrete index or a continuous action of shape (1,)."""
        if self.config.actions == "discrete":
            return jnp.asarray(DISCRETE_POSITIONS, jnp.float32)[action]
        return jnp.clip(jnp.reshape(action, ()).astype(jnp.float32), -1.0, 1.0)

    def observe(self, t: jax.Array, position: jax.Array) -> jax.Array:
        """Features of rows t - window + 1 .. t, flattened, then the position."""
        w = self.config.window
        rows = jax.lax.dynamic_slice(self.features, (t - w + 1, 0), (w, self.num_features))
        return jnp.concatenate([rows.reshape(-1), position[None]])

    def _reset_one(self, key: jax.Array) -> tuple[jax.Array, DataFeedState]:
        start = self.layout.start_low + jax.random.randint(key, (), 0, self.layout.num_starts, jnp.int32)
        zero = jnp.zeros((), jnp.float32)
        state = DataFeedState(start, start, jnp.zeros((), jnp.int32), zero)
        return self.observe(start, zero), state

    def _step_one(self, state: DataFeedState, action: jax.Array, key: jax.Array):
        position = self.position_of(action)
        trade_cost = self.cost * jnp.abs(position - state.position)
        price_return = self.returns[state.t]
        raw_reward = position * price_return - trade_cost
        t = state.t + 1
        steps = state.steps + 1
        next_obs = self.observe(t, position)
        truncated = steps >= self.layout.episode_length
        reset_obs, reset_state = self._reset_one(key)
        moved = DataFeedState(t, state.start, steps, position)
        new_state = jax.tree.map(lambda r, s: jnp.where(truncated, r, s), reset_state, moved)
        obs = jnp.where(truncated, reset_obs, next_obs)
        info = {"raw_reward": raw_reward, "position": position, "cost": trade_cost, "time_index": t}
        return new_state, obs, next_obs, raw_reward, truncated, info

    # the batched protocol
    def reset(self, key):
        keys = jax.random.split(key, self.spec.num_envs)
        return jax.vmap(self._reset_one)(keys)

    def step(self, state, action, key):
        keys = jax.random.split(key, self.spec.num_envs)
        state, obs, next_obs, raw, truncated, info = jax.vmap(self._step_one)(state, action, keys)
        ts = TimeStep(
            obs=obs,
            reward=raw * jnp.float32(self.config.reward_scale),
            terminated=jnp.zeros_like(truncated),
            truncated=truncated,
            next_obs=next_obs,
            info=info,
        )
        return state, ts

    def buy_and_hold_return(self) -> float:
        """What holding +1 earns over this env's first episode window (its split's first start)."""
        return buy_and_hold_from_arrays(self.returns_np, self.layout.start_low,
                                        self.layout.episode_length, self.cost)


def _unwrap(env: Env) -> Env:
    while hasattr(env, "env") and not isinstance(env, DataFeedEnv):
        env = env.env
    return env


def buy_and_hold_return(env: Env | None = None, **env_kwargs: Any) -> float:
    """Unscaled return of holding long over the test episode (entry cost included, from flat).

    With the default `test_episode_length=None` the test episode is the whole
    test period, so this is directly comparable with an agent's test episode
    return (EpisodeStatistics sums the same unscaled reward). Pass a data-feed
    env (wrapped or not) or the env_kwargs of the run; `split` is forced to "test".
    """
    if env is not None:
        base = _unwrap(env)
        if not isinstance(base, DataFeedEnv):
            raise TypeError(f"buy_and_hold_return needs a data-feed env, got {type(base).__name__}")
        cfg = dataclasses.replace(base.config, split="test")
    else:
        cfg = dataclasses.replace(config_from_kwargs(**env_kwargs), split="test")
    return DataFeedEnv(1, cfg).buy_and_hold_return()


def play_report(env_name: str, episode_returns: Sequence[float], /, **env_kwargs: Any) -> str:
    """One line for play.py: the agent's mean episode return next to buy-and-hold on the test period."""
    cfg = config_from_kwargs(**env_kwargs)
    bh = buy_and_hold_return(**env_kwargs)
    mean = float(np.mean(np.asarray(episode_returns, np.float64)))
    line = f"{env_name}: agent mean return {mean:.4f} ({cfg.returns} returns, costs included)"
    if cfg.split == "test" and cfg.test_episode_length is None:
        return line + f" vs buy-and-hold {bh:.4f} over the same test period"
    return (line + f" on {cfg.split!r} windows; buy-and-hold over the whole test period {bh:.4f} "
            "(not the same windows: evaluate with env_kwargs split: test to compare)")


def _factory(name: str, actions: str | None):
    def factory(num_envs: int, **env_kwargs: Any) -> DataFeedEnv:
        if actions is not None:
            given = env_kwargs.get("actions", actions)
            if given != actions:
                raise ValueError(f"{name}: actions are {actions!r}; use DataFeed-v0 to choose (got {given!r})")
            env_kwargs = {**env_kwargs, "actions": actions}
        return DataFeedEnv(num_envs, config_from_kwargs(**env_kwargs), name=name)

    return factory


def env_factories() -> dict[str, Any]:
    """The data-feed env names and their factories `factory(num_envs, **kwargs)` (for the registry)."""
    return {"DataFeed-v0": _factory("DataFeed-v0", None),
            "DataFeedDiscrete-v0": _factory("DataFeedDiscrete-v0", "discrete"),
            "DataFeedContinuous-v0": _factory("DataFeedContinuous-v0", "continuous")}

__all__ = ["DATAFEED_ENV_NAMES", "DataFeedConfig", "DataFeedEnv", "DataFeedState", "SAMPLE_DATA",
           "buy_and_hold_return", "config_from_kwargs", "env_factories", "load_series", "play_report"]
