"""Consumers of the Trainer's `log_data` dicts: TensorBoard, metrics.jsonl,
a terminal progress line, and optionally Weights & Biases.

(Named `loggers` rather than `logging` so it never shadows the standard library.)
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tensorboardX import SummaryWriter

_SKIP = {"step", "per_seed", "eval_return_per_seed"}


def _scalars(log_data: dict) -> dict[str, float]:
    return {k: float(v) for k, v in log_data.items()
            if k not in _SKIP and isinstance(v, (int, float)) and math.isfinite(float(v))}


class TensorBoardLogger:
    """Scalars under `train/` and `eval/` (means over runs) and, when there are several runs,
    each run's under `seed_<i>/`; for a sweep (`labels`: one per run, naming its
    hyperparameter values and seed) under `run_<i>/`, with the labels as a text entry."""

    def __init__(self, log_dir: str | Path, seeds: int = 1, labels: list[str] | None = None):
        self.writer = SummaryWriter(str(log_dir))
        self.per_run = seeds > 1 or bool(labels)
        self.prefix = "run" if labels else "seed"
        if labels:
            self.writer.add_text("runs", "\n\n".join(labels), 0)

    def log(self, log_data: dict) -> None:
        step = int(log_data["step"])
        for k, v in _scalars(log_data).items():
            self.writer.add_scalar(f"{'eval' if k.startswith('eval_') else 'train'}/{k}", v, step)
        if self.per_run:
            for k, values in log_data.get("per_seed", {}).items():
                for i, v in enumerate(values):
                    if math.isfinite(v):
                        self.writer.add_scalar(f"{self.prefix}_{i}/{k}", v, step)
            for i, v in enumerate(log_data.get("eval_return_per_seed", [])):
                self.writer.add_scalar(f"{self.prefix}_{i}/eval_return", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class JsonlLogger:
    """One JSON object per chunk, appended (a resumed run continues the same file)."""

    def __init__(self, path: str | Path):
        self.file = open(path, "a")

    def log(self, log_data: dict) -> None:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list):
                return [clean(v) for v in x]
            return x

        self.file.write(json.dumps(clean(log_data)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# meta-learner metrics that are not learned hyperparameter values
META_DIAGNOSTICS = ("meta/objective", "meta/grad_norm", "meta/skipped")


class ProgressLogger:
    """A line per chunk: progress, steps/s, ETA, recent return, eval return, and the
    meta-learned hyperparameters (`meta/<name>`) when the chunk had a meta step."""

    def __init__(self, total_steps: int, stream=None):
        self.total = total_steps
        self.stream = sys.stdout if stream is None else stream  # the stdout of when the run starts
        self.start = time.perf_counter()
        self.first_step = None

    def log(self, log_data: dict) -> None:
        step = int(log_data["step"])
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step, self.start = step - log_data.get("steps_per_s", 0) * log_data.get("chunk_s", 0), \
                now - log_data.get("chunk_s", 0)
        rate = (step - self.first_step) / max(now - self.start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        ret = log_data.get("episode_return_mean", math.nan)
        parts = [f"step {step:>9,}/{self.total:,}", f"{100 * step / self.total:5.1f}%",
                 f"{log_data.get('agent_steps_per_s', log_data.get('steps_per_s', 0)):8,.0f} steps/s",
                 f"ETA {eta:6.0f}s" if math.isfinite(eta) else "ETA      -",
                 f"return {ret:9.2f}" if math.isfinite(ret) else "return         -"]
        if "eval_return_mean" in log_data:
            parts.append(f"eval {log_data['eval_return_mean']:9.2f}")
        learned = [f"{k[len('meta/'):]} {v:.4g}" for k, v in log_data.items()
                   if k.startswith("meta/") and k not in META_DIAGNOSTICS and isinstance(v, float) and math.isfinite(v)]
        if learned:
            parts.append(" ".join(learned))
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class WandbLogger:
    """Weights & Biases, only when asked for; runs offline unless WANDB_MODE says otherwise."""

    def __init__(self, run_dir: str | Path, config: dict, name: str):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("wandb logging needs the extra: pip install 'angle_jax[wandb]'") from None
        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(project="angle_jax", name=name, dir=str(run_dir), config=config)

    def log(self, log_data: dict) -> None:
        self.run.log(_scalars(log_data), step=int(log_data["step"]))

    def close(self) -> None:
        self.run.finish()
