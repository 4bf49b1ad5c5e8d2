"""Sweeps and data parallelism as array axes, plus the device mesh they are laid on.

A Trainer's carry has one leading *run* axis (`runs = grid configs x seeds`, run
`r = g * seeds + s` uses config `g` and `PRNGKey(seed + s)`); with data
parallelism each run adds a *shard* axis `[runs, shards, ...]`, vmapped with
`axis_name=SHARD_AXIS` so the algorithm's `lax.pmean(grads, SHARD_AXIS)`
averages gradients over shards. Both axes are laid on a `Mesh` with axes
("runs", "data"), so XLA turns the cross-shard mean into an all-reduce.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from angle_jax.core.optim import hparam_names, set_hparams

SHARD_AXIS = "data"
RUN_AXIS = "runs"


class SweepError(ValueError):
    """A sweep that cannot run as one compiled program; the message names the key."""


# ---- sweep specification ---------------------------------------------------------

def parse_sweep_items(items: Sequence[str]) -> dict[str, list[float]]:
    """`["critic_lr=1e-4,3e-4", "tau=0.005,0.01"]` -> {"critic_lr": [...], "tau": [...]}."""
    out: dict[str, list[float]] = {}
    for item in items:
        if "=" not in item:
            raise SweepError(f"--sweep expects name=v1,v2,..., got {item!r}")
        name, raw = item.split("=", 1)
        name = name.strip()
        if name in out:
            raise SweepError(f"sweep name {name!r} given twice")
        out[name] = [v.strip() for v in raw.split(",") if v.strip()]
    return normalize_sweep(out)


def bare_name(name: str) -> str:
    return name[len("agent."):] if name.startswith("agent.") else name


def normalize_sweep(sweep: Any) -> dict[str, list[float]]:
    """Names without the `agent.` prefix, values as non-empty lists of distinct finite floats."""
    if sweep is None:
        return {}
    if not isinstance(sweep, dict):
        raise SweepError(f"sweep must map names to lists of numbers, got {sweep!r}")
    out: dict[str, list[float]] = {}
    for name, values in sweep.items():
        key = bare_name(str(name))
        if key in out:
            raise SweepError(f"sweep name {key!r} given twice")
        if not isinstance(values, (list, tuple)):
            values = [values]
        if not values:
            raise SweepError(f"sweep {key}: give at least one value")
        floats = []
        for v in values:
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise SweepError(f"sweep {key}: {v!r} is not a number") from None
            if isinstance(v, bool) or not math.isfinite(f):
                raise SweepError(f"sweep {key}: {v!r} is not a finite number")
            floats.append(f)
        if len(set(floats)) != len(floats):
            raise SweepError(f"sweep {key}: repeated values {floats}")
        out[key] = floats
    return out


def grid(sweep: dict[str, list[float]]) -> list[dict[str, float]]:
    """Every combination, first name slowest; `[{}]` for no sweep."""
    names = list(sweep)
    return [dict(zip(names, combo)) for combo in itertools.product(*(sweep[n] for n in names))]


def sweepable(agent_state: Any) -> tuple[str, ...]:
    """Traced hyperparameters a sweep may set. `init_*` ones only seed the initial state
    (e.g. SAC's temperature), so writing them after `init` would change nothing."""
    return tuple(n for n in hparam_names(agent_state) if not n.startswith("init_"))


def check_sweep(sweep: dict[str, list[float]], agent_state: Any, run_config: Any,
                meta_params: Sequence[str] = ()) -> None:
    """Raise SweepError unless every name is a traced hyperparameter of this algorithm that
    meta-gradients (learning `meta_params`) do not learn."""
    allowed = sweepable(agent_state)
    listing = ", ".join(allowed) if allowed else "none: this algorithm keeps no traced hyperparameters"
    static_run = {f.name for f in dataclasses.fields(run_config)}
    static_agent = {f.name for f in dataclasses.fields(run_config.agent)} if run_config.agent is not None else set()
    meta_params = set(meta_params)
    for name in sweep:
        if name in allowed:
            if name in meta_params:
                raise SweepError(f"{name} is meta-learned (meta.params) and cannot also be swept")
            continue
        if name in hparam_names(agent_state):
            raise SweepError(f"{name} only sets the initial state and cannot be swept; sweepable: {listing}")
        if name in static_run or name in static_agent:
            raise SweepError(f"{name} changes the compiled program's shapes or control flow and cannot be "
                             f"swept; run one job per value with --set (sweepable: {listing})")
        raise SweepError(f"unknown sweep name {name!r}; sweepable: {listing}")


def run_table(configs: list[dict[str, float]], seeds: int) -> dict[str, np.ndarray]:
    """Per-run hyperparameter values, shape [configs * seeds] each (run r = g * seeds + s)."""
    if not configs or not configs[0]:
        return {}
    return {n: np.repeat(np.asarray([c[n] for c in configs], np.float32), seeds) for n in configs[0]}


def run_keys(base: int, seeds: int, num_configs: int) -> jax.Array:
    """`PRNGKey(base + s)` for run r = g * seeds + s: every config sees the same seeds (one
    vectorised draw, whatever the number of seeds)."""
    keys = jax.vmap(jax.random.PRNGKey)(base + jnp.arange(seeds, dtype=jnp.uint32))
    return jnp.tile(keys, (num_configs, 1))


def sweep_results(configs: list[dict[str, float]], seeds: int, first_seed: int,
                  returns: np.ndarray) -> list[dict]:
    """The results table: per config its values, mean/std of the final eval return over
    seeds, and each seed's return. `returns`: [runs, episodes] or [runs]."""
    per_run = np.asarray(returns, np.float64).reshape(len(configs) * seeds, -1).mean(axis=1)
    rows = []
    for g, values in enumerate(configs):
        r = per_run[g * seeds:(g + 1) * seeds]
        rows.append({"config": g, **values, "runs": list(range(g * seeds, (g + 1) * seeds)),
                     "seeds": [first_seed + s for s in range(seeds)],
                     "final_eval_return_mean": float(r.mean()), "final_eval_return_std": float(r.std()),
                     "final_eval_return_per_seed": r.tolist()})
    return rows


def format_table(rows: list[dict], names: list[str]) -> str:
    """Plain-text table of `sweep_results` rows for the terminal."""
    head = [*names, "mean", "std", "per seed"]
    body = [[*(f"{row[n]:g}" for n in names), f"{row['final_eval_return_mean']:.2f}",
             f"{row['final_eval_return_std']:.2f}",
             " ".join(f"{v:.1f}" for v in row["final_eval_return_per_seed"])] for row in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), *(line(b) for b in body)])


def run_labels(configs: list[dict[str, float]], seeds: int, first_seed: int) -> list[str]:
    """`run_<i>: name=value ... seed=<s>` for each run, in run order."""
    labels = []
    for g, values in enumerate(configs):
        for s in range(seeds):
            parts = [f"{n}={v:g}" for n, v in values.items()] + [f"seed={first_seed + s}"]
            labels.append(f"run_{g * seeds + s}: " + " ".join(parts))
    return labels


# ---- data parallelism ---------------------------------------------------------------

def check_data_parallel(run_config: Any, shards: int, on_policy: bool) -> None:
    """Raise SweepError unless a run splits evenly into `shards` data-parallel shards."""
    if shards <= 1:
        return
    if run_config.num_envs % shards:
        raise SweepError(f"data_parallel={shards} needs num_envs divisible by {shards}, got {run_config.num_envs}")
    if not on_policy:
        for name in ("batch_size", "buffer_size"):
            if getattr(run_config, name) % shards:
                raise SweepError(f"data_parallel={shards} needs {name} divisible by {shards}, "
                                 f"got {getattr(run_config, name)}")
    if run_config.meta.is_set or run_config.auxiliary:
        raise SweepError("data_parallel does not support meta-learning or auxiliary models yet "
                         "(their updates are not averaged over shards)")
    if run_config.agent is None or not hasattr(run_config.agent, "axis_name"):
        raise SweepError(f"{run_config.algo} has no agent.axis_name setting, so its gradients "
                         f"cannot be averaged over shards")


def shard_config(run_config: Any, shards: int) -> Any:
    """The run config of one shard: 1/shards of the envs, batch, replay and warm-up, and
    the agent's gradients averaged over `SHARD_AXIS`."""
    if shards <= 1:
        return run_config
    return dataclasses.replace(
        run_config,
        num_envs=run_config.num_envs // shards,
        batch_size=max(1, run_config.batch_size // shards),
        buffer_size=max(1, run_config.buffer_size // shards),
        learning_starts=run_config.learning_starts // shards,
        agent=dataclasses.replace(run_config.agent, axis_name=SHARD_AXIS),
    )


def shard_keys(key: jax.Array, shards: int) -> jax.Array:
    """Shard 0 keeps `key` (one shard equals a plain run); shard d > 0 uses fold_in(key, d)."""
    return jnp.stack([key] + [jax.random.fold_in(key, d) for d in range(1, shards)])


def _is_none(x) -> bool:
    return x is None


def first_shard(axes: Any, tree: Any) -> Any:
    """Shard 0 of each batched leaf (axis-0 leaves per `axes`, a seed_axes prefix)."""
    return jax.tree.map(lambda a, x: x if a is None else jax.tree.map(lambda y: y[0], x),
                        axes, tree, is_leaf=_is_none)


def same_on_all_shards(axes: Any, tree: Any) -> Any:
    """Copy shard 0 of every batched leaf to all shards (identical initial parameters)."""
    return jax.tree.map(
        lambda a, x: x if a is None else jax.tree.map(lambda y: jnp.broadcast_to(y[:1], y.shape), x),
        axes, tree, is_leaf=_is_none)


def reduce_shard_logs(logs: dict, shards: int) -> dict:
    """Per-shard chunk logs `[runs, shards]` -> per-run `[runs]`: episodes summed, `*_min` /
    `*_max` the extremes, the rest averaged (NaN where no shard has a value)."""
    if shards <= 1:
        return logs
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, v in logs.items():
            v = np.asarray(v, np.float64).reshape(-1, shards)
            if name == "episodes":
                out[name] = v.sum(axis=1)
            elif name.endswith("_min"):
                out[name] = np.nanmin(v, axis=1)
            elif name.endswith("_max"):
                out[name] = np.nanmax(v, axis=1)
            else:
                out[name] = np.nanmean(v, axis=1)
    return out


# ---- device mesh ---------------------------------------------------------------------

def mesh_shape(runs: int, shards: int, num_devices: int) -> tuple[int, int]:
    """(devices along runs, devices along shards): shards first, each a divisor of its axis."""
    d = math.gcd(shards, num_devices) if shards > 1 else 1
    r = math.gcd(runs, num_devices // d)
    return r, d


def make_mesh(runs: int, shards: int, devices: Sequence[Any]) -> Mesh | None:
    """A ("runs", "data") mesh over as many of `devices` as divide the axes; None for one device."""
    r, d = mesh_shape(runs, shards, len(devices))
    if r * d == 1:
        return None
    return Mesh(np.asarray(list(devices)[: r * d], dtype=object).reshape(r, d), (RUN_AXIS, SHARD_AXIS))


def carry_shardings(mesh, axes: Any, tree: Any, shards: int) -> Any:
    """NamedSharding per leaf of `tree`: batched leaves split along runs (and shards), shared
    ones (axis None in the seed_axes prefix `axes`) replicated."""
    batched = NamedSharding(mesh, P(RUN_AXIS, SHARD_AXIS) if shards > 1 else P(RUN_AXIS))
    rep = NamedSharding(mesh, P())
    return jax.tree.map(lambda a, x: jax.tree.map(lambda _: rep if a is None else batched, x),
                        axes, tree, is_leaf=_is_none)


def replicated(mesh) -> Any:
    return NamedSharding(mesh, P())
