"""The Trainer: runs compiled chunks of a training loop and yields a `log_data` dict after each
one. Loggers, checkpoints and progress bars consume the dicts; nothing in here runs inside the
compiled step.

    trainer = Trainer(config, run_dir)
    for log_data in trainer():
        ...

Building the parts is `training.build`, the compiled programs and their layout over runs and
devices `training.programs`, saving and restoring the carry `training.checkpointing`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from angle_jax import devices as device_selection
from angle_jax import parallel
from angle_jax.config import ConfigError, RunConfig
from angle_jax.training.build import build_parts
from angle_jax.training.checkpointing import RunCheckpoints
from angle_jax.training.programs import RunPrograms, gc_paused, split_buffer


class DivergenceError(RuntimeError):
    """Non-finite loss or parameters; the message names the step and the metric."""

    def __init__(self, step: int, metric: str):
        super().__init__(f"training diverged at step {step}: {metric} is not finite")
        self.step = step
        self.metric = metric


class Trainer:
    """Drives a run in compiled chunks of `log_interval` env steps.

    `carry` holds the whole batched training state between chunks; `checkpoints` (when a
    run dir is given) saves and restores it. `devices` (default: those of `config.device`)
    are the ones the run and shard axes are spread over; the kernels follow their backend
    when `config.kernels` is `auto`.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False,
                 warn=print, devices=None):
        started = time.perf_counter()
        with gc_paused():
            if devices is None:
                try:
                    devices = device_selection.select_devices(config.device)
                except ValueError as e:
                    raise ConfigError(str(e)) from None
            self.devices = list(devices)
            self.parts = build_parts(config, self.devices[0].platform)
            self.programs = RunPrograms(config, self.parts, self.devices)
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.shards = self.programs.shards
        self.steps_per_iter = int(self.train.steps_per_iteration) * self.shards
        self.total_iters = max(1, math.ceil(config.total_steps / self.steps_per_iter))
        self.chunk_iters = max(1, min(self.total_iters, config.log_interval // self.steps_per_iter))
        # Seconds spent before training proper: building, tracing and compiling (init, chunks);
        # `build_s` is the part spent in this constructor.
        self.programs.compile_s = self.build_s = time.perf_counter() - started
        self.carry = None
        self.iteration = 0
        self.start_step = 0
        self.best_eval = -math.inf
        self._last_eval = None  # (step, returns) of the newest evaluation of the run's own carry
        self.checkpoints = None
        if self.run_dir is not None:
            self.checkpoints = RunCheckpoints(self.run_dir / "checkpoints", config.keep_checkpoints, self.programs,
                                              config.save_buffer, warn)
        self._resume = resume

    # ---- what the parts and programs are ------------------------------------------
    env = property(lambda self: self.parts.env)
    eval_env = property(lambda self: self.parts.eval_env)
    algo = property(lambda self: self.parts.algo)
    train = property(lambda self: self.parts.train)
    kernels = property(lambda self: self.parts.kernels)
    axes = property(lambda self: self.programs.axes)
    runs = property(lambda self: self.programs.runs)
    configs = property(lambda self: self.programs.configs)
    labels = property(lambda self: self.programs.labels)
    mesh = property(lambda self: self.programs.mesh)
    keys = property(lambda self: self.programs.keys)
    hparam_values = property(lambda self: self.programs.hparam_values)
    compile_s = property(lambda self: self.programs.compile_s)

    @property
    def step(self) -> int:
        return self.iteration * self.steps_per_iter

    def devices_used(self) -> dict:
        """backend, device kind and count, as summary.json records them."""
        used = self.devices if self.mesh is None else list(self.mesh.devices.flat)
        return device_selection.describe(used)

    def _chunk_sizes(self) -> list[int]:
        """The chunk lengths (iterations) the remaining budget needs: full chunks and a last, shorter one."""
        left = self.total_iters - self.iteration
        sizes = [min(self.chunk_iters, left)] if left > 0 else []
        if left > self.chunk_iters and left % self.chunk_iters:
            sizes.append(left % self.chunk_iters)
        return sizes

    def compile(self, with_init: bool = True, with_chunks: bool = True) -> None:
        """Lower and compile the init program and every chunk length the run needs, concurrently
        (with the evaluation program when the run evaluates as it goes)."""
        sizes = self._chunk_sizes() if with_chunks else ()
        self.programs.compile_missing(with_init, sizes, with_evaluate=bool(sizes and self.config.eval_interval))

    def init_carry(self, with_chunks: bool = True):
        """The initial carry of every run; compiles the init program first (and, with
        `with_chunks`, the chunks of the run alongside it)."""
        self.compile(with_init=True, with_chunks=with_chunks)
        return self.programs.init_carry()

    def agent_params(self, carry=None):
        """The agents of all runs, `[runs, ...]`, on the host (shard 0 of each run)."""
        return self.programs.agents(self.carry if carry is None else carry)

    def evaluate(self, carry=None) -> np.ndarray:
        """Evaluation returns, shape [runs, eval_episodes] (runs = configs x seeds): the episodes
        of `config.eval_seed`, greedy or sampled as `config.eval_mode` says."""
        if carry is None:
            if self._last_eval is not None and self._last_eval[0] == self.step:
                return self._last_eval[1]  # this carry was evaluated at the end of its chunk: same key, same returns
            carry = self.carry
        return self.programs.evaluate(carry.agent)

    # ---- checkpoints -----------------------------------------------------------
    def save_checkpoint(self, carry=None):
        if self.checkpoints is None:
            return None
        return self.checkpoints.save(self.carry if carry is None else carry, self.iteration, self.step,
                                     self.best_eval)

    def restore(self) -> bool:
        """Load the newest readable checkpoint into `carry`; False when there is none."""
        if self.checkpoints is None:
            return False
        restored = self.checkpoints.restore(self.init_carry(with_chunks=False))
        if restored is None:
            return False
        self.carry, header = restored
        self.iteration = int(header["iteration"])
        self.best_eval = float(header["best_eval"])
        return True

    # ---- the generator ---------------------------------------------------------
    def _check_finite(self, logs: dict, params_finite) -> None:
        for name, values in logs.items():
            v = np.asarray(values, np.float64)
            if np.any(np.isinf(v)):
                raise DivergenceError(self.step, name)
        if not bool(params_finite):
            raise DivergenceError(self.step, "params")

    def __call__(self) -> Iterator[dict]:
        """Yield one `log_data` dict per compiled chunk until the budget is spent.

        An evaluation due after a chunk is dispatched before the next chunk and, with
        `config.eval_overlap`, left running beside it: that chunk's `log_data` (with its
        `eval_*` entries) is yielded once the next chunk has finished, so the evaluation costs
        only what it takes from the training it shares the device with. Only the replay buffer
        is donated to a chunk, so the evaluated agent (and the rest of the carry, for
        `best.ckpt`, saved without the buffer in that case) stays valid meanwhile. The last
        chunk's evaluation runs in line."""
        if self.carry is None:
            if not (self._resume and self.restore()):
                self.carry = self.init_carry()
        self.start_step = self.step  # where this generator starts (after a resume: the checkpoint's step)
        eval_every = self.config.eval_interval
        ckpt_every = self.config.checkpoint_interval
        pending = None  # an evaluation in flight: (returns, log_data, carry without buffer, iteration, step)
        while self.iteration < self.total_iters:
            n = min(self.chunk_iters, self.total_iters - self.iteration)
            run = self.programs.chunk(n)
            t0 = time.perf_counter()
            carry, logs, params_finite = run(self.carry)
            logs, params_finite = self.programs.to_host((logs, params_finite))
            logs = parallel.reduce_shard_logs(logs, self.shards)
            seconds = time.perf_counter() - t0
            prev_step = self.step
            self.carry = carry
            self.iteration += n
            self._check_finite(logs, params_finite)
            log_data = summarize(logs, self.runs)
            log_data.update(step=self.step, chunk_s=seconds,
                            steps_per_s=n * self.steps_per_iter / seconds,
                            agent_steps_per_s=n * self.steps_per_iter * self.runs / seconds)
            if pending is not None:
                yield self._record_eval(*pending)
                pending = None
            if eval_every and (self.step // eval_every > prev_step // eval_every or self.iteration >= self.total_iters):
                if self.config.eval_overlap and self.iteration < self.total_iters:
                    rest = split_buffer(self.carry)[1]
                    pending = (self.programs.evaluate_async(rest.agent), log_data, rest, self.iteration, self.step)
                else:
                    self._record_eval(self.programs.evaluate_async(self.carry.agent), log_data, self.carry,
                                      self.iteration, self.step)
            if ckpt_every and self.step // ckpt_every > prev_step // ckpt_every:
                self.save_checkpoint()
            if pending is None:  # else this chunk's log_data is yielded with its evaluation, after the next chunk
                yield log_data

    def _record_eval(self, returns, log_data: dict, carry, iteration: int, step: int) -> dict:
        """Add an evaluation's returns to `log_data` (mean, per seed, per episode) and save
        `best.ckpt` from `carry` when the mean is the best so far."""
        returns = np.asarray(self.programs.to_host(returns))
        self._last_eval = (step, returns)
        returns = returns.astype(np.float64)
        log_data["eval_return_mean"] = float(returns.mean())
        log_data["eval_return_per_seed"] = returns.mean(axis=1).tolist()
        log_data["eval_returns"] = returns.tolist()
        if log_data["eval_return_mean"] > self.best_eval and self.checkpoints is not None:
            self.best_eval = log_data["eval_return_mean"]
            self.checkpoints.save_best(carry, iteration, step, self.best_eval)
        return log_data


def summarize(logs: dict, seeds: int) -> dict:
    """Per-chunk logs of shape [runs] -> scalars (mean over runs) and per-run lists
    (under "per_seed": one entry per run, runs = sweep configs x seeds)."""
    out: dict[str, Any] = {}
    per_seed: dict[str, list] = {}
    for name, values in logs.items():
        v = np.asarray(values, np.float64).reshape(seeds, -1).mean(axis=1)
        per_seed[name] = v.tolist()
        if name == "episodes":
            out[name] = float(np.sum(v))
        elif name == "episode_return_min":
            out[name] = float(np.nanmin(v)) if np.any(np.isfinite(v)) else math.nan
        elif name == "episode_return_max":
            out[name] = float(np.nanmax(v)) if np.any(np.isfinite(v)) else math.nan
        else:
            out[name] = float(np.nanmean(v)) if np.any(np.isfinite(v)) else math.nan
    out["per_seed"] = per_seed
    return out
