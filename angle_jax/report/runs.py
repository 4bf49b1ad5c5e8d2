"""Run directories -> typed records, grouped by (algo, env, label) for a report.

A run directory (train.py) holds config.yaml, summary.json and metrics.jsonl (one JSON object per
compiled chunk, per-seed values under "per_seed"). A sweep run holds several grid points; each
becomes its own record, labelled by its values. Problems raise `RunError` with one-line messages.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# config keys that do not change what is learned (bookkeeping, devices, logging)
IGNORED_KEYS = {"seed", "seeds", "sweep", "progress", "tensorboard", "wandb", "device", "kernels",
                "checkpoint_interval", "keep_checkpoints", "save_buffer", "data_parallel", "log_interval", "eval_interval",
                "eval_overlap", "plots"}


class RunError(ValueError):
    """A run directory that cannot be read, or runs that cannot be grouped."""


@dataclass(frozen=True)
class Curves:
    """Per-chunk values of one run (or sweep point); NaN where a seed logged nothing."""

    steps: np.ndarray                      # [chunks] env steps per seed at each chunk's end
    train_return: np.ndarray               # [chunks, seeds] mean return of episodes ended in the chunk
    eval_steps: np.ndarray                 # [evals]
    eval_return: np.ndarray                # [evals, seeds]
    losses: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [chunks, seeds]


@dataclass(frozen=True)
class Run:
    """One run directory, or one grid point of a sweep run."""

    path: Path
    algo: str
    env: str
    label: str
    seeds: tuple[int, ...]
    final_return: np.ndarray               # [seeds] final evaluation return (mean over its episodes)
    curves: Curves
    point: dict[str, float]                # the sweep values of this grid point ({} when not a sweep)
    config: dict


@dataclass(frozen=True)
class Group:
    """Runs sharing a label (one algo, one env): their seeds are pooled."""

    label: str
    algo: str
    env: str
    runs: tuple[Run, ...]

    @property
    def final_return(self) -> np.ndarray:
        return np.concatenate([r.final_return for r in self.runs])

    @property
    def scores(self) -> np.ndarray:
        """The `[runs, tasks]` scores matrix of the group: its seeds x one env."""
        return self.final_return[:, None]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} does not hold a JSON object")
    return data


def _read_config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} does not hold a YAML mapping")
    return data


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records in step order, the last record kept for a step logged twice (a
    resumed run re-logs the chunks after its checkpoint); a torn last line is ignored."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    by_step: dict[int, dict] = {}
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:
                break
            raise RunError(f"{path}: line {i + 1} is not a metrics record") from None
        by_step[step] = record
    return [by_step[s] for s in sorted(by_step)]


def _column(values, columns: list[int]) -> np.ndarray:
    if values is None:
        return np.full(len(columns), np.nan)
    return np.array([np.nan if values[c] is None else float(values[c]) for c in columns])


def _curves(records: list[dict], columns: list[int]) -> Curves:
    steps = np.array([r["step"] for r in records], np.int64)
    per_seed = [r.get("per_seed", {}) for r in records]
    train = np.array([_column(p.get("episode_return_mean"), columns) for p in per_seed]).reshape(-1, len(columns))
    evals = [r for r in records if r.get("eval_return_per_seed") is not None]
    eval_steps = np.array([r["step"] for r in evals], np.int64)
    eval_return = np.array([_column(r["eval_return_per_seed"], columns) for r in evals]).reshape(-1, len(columns))
    names = sorted({k for p in per_seed for k in p if k == "loss" or k.endswith("_loss")})
    losses = {k: np.array([_column(p.get(k), columns) for p in per_seed]).reshape(-1, len(columns)) for k in names}
    return Curves(steps, train, eval_steps, eval_return, losses)


def load_run(path: str | Path, label: str | None = None) -> list[Run]:
    """The records of one run directory: one, or one per grid point of a sweep. `label` (or by
    default the algo name) names them; a sweep point's label adds its values."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a directory")
    missing = [name for name in ("config.yaml", "summary.json") if not (path / name).is_file()]
    if missing:
        raise RunError(f"{path} is not a run directory (no {' or '.join(missing)})")
    config = _read_config(path / "config.yaml")
    summary = _read_json(path / "summary.json")
    try:
        algo, env = str(summary["algo"]), str(summary["env"])
        finals = [float(v) for v in summary["final_eval_return_per_seed"]]
        first_seed = int(summary.get("seed", config.get("seed", 0)))
    except KeyError as e:
        raise RunError(f"{path / 'summary.json'} has no field {e}") from None
    except (TypeError, ValueError):
        raise RunError(f"{path / 'summary.json'}: final_eval_return_per_seed must be a list of numbers") from None
    if not finals or not all(math.isfinite(v) for v in finals):
        raise RunError(f"{path / 'summary.json'}: final_eval_return_per_seed must be finite numbers")
    records = read_metrics(path / "metrics.jsonl")
    base = label or algo
    points = summary.get("sweep") or [{"runs": list(range(len(finals))),
                                       "seeds": [first_seed + i for i in range(len(finals))]}]
    names = list(config.get("sweep") or {})
    runs = []
    for point in points:
        try:
            columns = [int(c) for c in point["runs"]]
            values = {n: float(point[n]) for n in names if n in point}
            seeds = tuple(int(s) for s in point["seeds"])
        except (KeyError, TypeError, ValueError):
            raise RunError(f"{path / 'summary.json'}: a sweep entry lacks valid runs, seeds or values") from None
        if not columns or max(columns) >= len(finals) or len(seeds) != len(columns):
            raise RunError(f"{path / 'summary.json'}: sweep runs do not match final_eval_return_per_seed")
        try:
            curves = _curves(records, columns)
        except (IndexError, KeyError, TypeError, ValueError):
            raise RunError(f"{path / 'metrics.jsonl'}: per-seed values do not match the run's "
                           f"{len(finals)} seeds") from None
        run_label = " ".join([base, *(f"{n}={v:g}" for n, v in values.items())])
        runs.append(Run(path, algo, env, run_label, seeds, np.array([finals[c] for c in columns]), curves,
                        values, config))
    return runs


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        elif key not in IGNORED_KEYS:
            out[key] = json.dumps(v, sort_keys=True)
    return out


def auto_labels(runs: list[Run], labelled: list[bool] | None = None) -> list[Run]:
    """Labels for runs the user did not name: the algo, then its env when the algo ran on several
    envs, then the settings that tell apart runs of one algo and env, then a sweep point's values
    (runs marked in `labelled` keep the label they were given)."""
    labelled = labelled or [False] * len(runs)
    flat = [_flat(r.config) for r in runs]
    auto = [i for i in range(len(runs)) if not labelled[i]]
    out = list(runs)
    for i in auto:
        r = runs[i]
        same = [j for j in auto if (runs[j].algo, runs[j].env) == (r.algo, r.env)]
        keys = sorted({k for j in same for k in flat[j]})
        differ = [k for k in keys if len({flat[j].get(k) for j in same}) > 1]
        several_envs = len({runs[j].env for j in auto if runs[j].algo == r.algo}) > 1
        parts = [r.algo, *([r.env] if several_envs else []), *(f"{k}={flat[i].get(k, 'unset')}" for k in differ),
                 *(f"{n}={v:g}" for n, v in r.point.items())]
        out[i] = Run(r.path, r.algo, r.env, " ".join(parts), r.seeds, r.final_return, r.curves, r.point, r.config)
    return out


def load_runs(specs: list[tuple[str | Path, str | None]]) -> list[Run]:
    """Load `(path, label or None)` pairs; unlabelled runs get `auto_labels`."""
    if not specs:
        raise RunError("no run directories given")
    seen = set()
    for path, _ in specs:
        key = Path(path).resolve()
        if key in seen:
            raise RunError(f"{path} is given twice")
        seen.add(key)
    runs, labelled = [], []
    for path, label in specs:
        loaded = load_run(path, label)
        runs += loaded
        labelled += [label is not None] * len(loaded)
    return auto_labels(runs, labelled)


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of runs by label, in first-seen order; one label must mean one algo on one env."""
    if not runs:
        raise RunError("no runs given")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    out = []
    for label, members in groups.items():
        for what in ("env", "algo"):
            values = sorted({getattr(r, what) for r in members})
            if len(values) > 1:
                where = ", ".join(f"{r.path} ({getattr(r, what)})" for r in members)
                raise RunError(f"label {label!r} holds runs of different {what}s: {where}")
        out.append(Group(label, members[0].algo, members[0].env, tuple(members)))
    return out
