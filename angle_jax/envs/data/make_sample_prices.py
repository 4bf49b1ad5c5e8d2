"""Generate `sample_prices.csv`: the default series of the data-feed env.

A regime-switching geometric random walk (a calm up-trending regime and a
volatile down-trending one, switching as a Markov chain), an `indicator`
column that is a noisy, smoothed reading of the current regime (information
available at its own date, so a policy can legitimately use it), and a slowly
drifting `rate` column standing in for an economic indicator.

Deterministic: the same seed gives the same file, byte for byte.
Run `python -m angle_jax.envs.data.make_sample_prices` to rewrite the file.
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path(__file__).resolve().parent / "sample_prices.csv"
NUM_ROWS = 3000
SEED = 20240101

# regime 0: calm, drifting up; regime 1: volatile, drifting down (daily log-return units)
DRIFT = np.array([0.0006, -0.0009])
VOL = np.array([0.008, 0.020])
STAY = np.array([0.985, 0.96])


def business_days(start: dt.date, n: int) -> list[str]:
    """`n` consecutive Monday-to-Friday dates from `start`, ISO formatted."""
    days, day = [], start
    while len(days) < n:
        if day.weekday() < 5:
            days.append(day.isoformat())
        day += dt.timedelta(days=1)
    return days


def generate(num_rows: int = NUM_ROWS, seed: int = SEED) -> dict[str, np.ndarray | list[str]]:
    """The columns of the sample series as arrays (plus ISO dates)."""
    rng = np.random.default_rng(seed)
    regime = np.zeros(num_rows, np.int64)
    switch = rng.random(num_rows)
    for t in range(1, num_rows):
        r = regime[t - 1]
        regime[t] = r if switch[t] < STAY[r] else 1 - r
    # the return from t to t+1 is drawn in the regime of date t
    log_ret = DRIFT[regime] + VOL[regime] * rng.standard_normal(num_rows)
    log_price = np.log(100.0) + np.concatenate([[0.0], np.cumsum(log_ret[:-1])])
    price = np.exp(log_price)

    noisy = (1.0 - 2.0 * regime) + 1.5 * rng.standard_normal(num_rows)
    indicator = np.zeros(num_rows)
    for t in range(num_rows):
        prev = indicator[t - 1] if t > 0 else 0.0
        indicator[t] = 0.8 * prev + 0.2 * noisy[t]

    rate = 2.0 + np.cumsum(0.01 * rng.standard_normal(num_rows))
    return {
        "date": business_days(dt.date(2010, 1, 4), num_rows),
        "price": price,
        "indicator": indicator,
        "rate": rate,
    }


def write_csv(path: str | Path = DEFAULT_PATH, num_rows: int = NUM_ROWS, seed: int = SEED) -> Path:
    cols = generate(num_rows, seed)
    lines = ["date,price,indicator,rate"]
    for i in range(num_rows):
        lines.append(f"{cols['date'][i]},{cols['price'][i]:.4f},{cols['indicator'][i]:.5f},{cols['rate'][i]:.4f}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_PATH))
    parser.add_argument("--rows", type=int, default=NUM_ROWS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    print(write_csv(args.out, args.rows, args.seed))
