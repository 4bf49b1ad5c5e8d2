"""The Trainer: runs compiled chunks of a training loop and yields a `log_data`
dict after each one. Loggers, checkpoints and progress bars consume the dicts;
nothing in here runs inside the compiled step.

    trainer = Trainer(config, run_dir)
    for log_data in trainer():
        ...

Seeds are vmapped (seed i of a run uses `PRNGKey(config.seed + i)`, so it
equals a single-seed run with `--seed config.seed + i`); with several local
devices the seed axis is sharded over them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from angle_jax import checkpoint as ckpt
from angle_jax import registry
from angle_jax.config import ConfigError, RunConfig
from angle_jax.training.axes import seed_axes


class DivergenceError(RuntimeError):
    """Non-finite loss or parameters; the message names the step and the metric."""

    def __init__(self, step: int, metric: str):
        super().__init__(f"training diverged at step {step}: {metric} is not finite")
        self.step = step
        self.metric = metric


def env_steps_per_iteration(train) -> int:
    return int(train.steps_per_iteration)


def build_components(config: RunConfig):
    """Env, eval env, algorithm and loop functions for a run config (no compile)."""
    module = registry.load_algo(config.algo)
    env = registry.make_env(config.env, config.num_envs, **config.env_kwargs)
    eval_env = registry.make_env(config.env, config.eval_episodes, **config.env_kwargs)
    kind = getattr(module, "ACTION_KIND", "both")
    if kind == "continuous" and env.spec.discrete:
        raise ConfigError(f"{config.algo} needs continuous actions, but {config.env} has "
                          f"{env.spec.action_space.n} discrete actions")
    if kind == "discrete" and not env.spec.discrete:
        raise ConfigError(f"{config.algo} needs discrete actions, but {config.env} has continuous actions")
    try:
        algo = module.make(config.agent, env.spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if getattr(module, "LOOP", "off_policy") == "on_policy":
        from angle_jax.training import on_policy

        try:
            train = on_policy.build(config, env, eval_env)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    else:
        from angle_jax.training import off_policy

        meta = None
        if config.meta or config.auxiliary:
            from angle_jax.meta import build_meta_learner

            try:
                meta = build_meta_learner(config, algo, env.spec)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        train = off_policy.make_train(algo, env, off_policy.loop_from_config(config), eval_env, meta)
    return env, eval_env, algo, train


def _finite_tree(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Trainer:
    """Drives a run in compiled chunks of `log_interval` env steps.

    `carry` holds the whole batched training state between chunks; `checkpoints`
    (when a run dir is given) saves and restores it.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False,
                 warn=print):
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.warn = warn
        self.env, self.eval_env, self.algo, self.train = build_components(config)
        self.steps_per_iter = env_steps_per_iteration(self.train)
        self.total_iters = max(1, math.ceil(config.total_steps / self.steps_per_iter))
        self.chunk_iters = max(1, min(self.total_iters, config.log_interval // self.steps_per_iter))
        self.keys = jnp.stack([jax.random.PRNGKey(config.seed + i) for i in range(config.seeds)])
        abstract = jax.eval_shape(self.train.init, self.keys[0])
        self.axes = seed_axes(abstract)
        self.sharding = self._seed_sharding()
        self._init = jax.jit(jax.vmap(self.train.init, out_axes=self.axes))
        self._runs: dict[int, Any] = {}
        self._evaluate = jax.jit(jax.vmap(self.train.evaluate, in_axes=(self.axes.agent, 0)))
        self._finite = jax.jit(_finite_tree)
        self.compile_s = 0.0
        self.carry = None
        self.iteration = 0
        self.best_eval = -math.inf
        self.checkpoints = None
        if self.run_dir is not None:
            self.checkpoints = ckpt.CheckpointManager(self.run_dir / "checkpoints", config.keep_checkpoints)
        self._resume = resume

    # ---- devices ---------------------------------------------------------------
    def _seed_sharding(self):
        devices = jax.local_devices()
        if len(devices) < 2 or self.config.seeds % len(devices) != 0:
            return None
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        mesh = Mesh(np.array(devices), ("seeds",))
        return NamedSharding(mesh, P("seeds")), NamedSharding(mesh, P())

    def _place(self, carry):
        if self.sharding is None:
            return carry
        batched, replicated = self.sharding
        return jax.tree.map(lambda a, x: jax.device_put(x, replicated if a is None else batched),
                            self.axes, carry, is_leaf=lambda x: x is None)

    # ---- compiled pieces -------------------------------------------------------
    def _timed_compile(self, fn, *args):
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        self.compile_s += time.perf_counter() - t0
        return compiled

    def _run_fn(self, num_iters: int):
        if num_iters not in self._runs:
            run = jax.vmap(lambda c: self.train.run(c, num_iters), in_axes=(self.axes,), out_axes=(self.axes, 0))
            self._runs[num_iters] = self._timed_compile(jax.jit(run, donate_argnums=0), self.carry)
        return self._runs[num_iters]

    def init_carry(self):
        t0 = time.perf_counter()
        carry = self._init(self.keys)
        jax.block_until_ready(carry)
        self.compile_s += time.perf_counter() - t0
        return self._place(carry)

    # ---- checkpoints -----------------------------------------------------------
    def _checkpoint_tree(self, carry):
        if self._save_buffer(carry):
            return carry
        return carry.replace(buffer=None) if hasattr(carry, "buffer") else carry

    def _save_buffer(self, carry) -> bool:
        if self.config.save_buffer is not None:
            return self.config.save_buffer
        buf = getattr(carry, "buffer", None)
        nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(buf)) if buf is not None else 0
        return nbytes <= 1 << 30

    def save_checkpoint(self, carry=None):
        if self.checkpoints is None:
            return None
        carry = self.carry if carry is None else carry
        meta = {"iteration": self.iteration, "step": self.step, "best_eval": self.best_eval,
                "with_buffer": self._save_buffer(carry)}
        return self.checkpoints.save(self.step, self._checkpoint_tree(carry), meta)

    def restore(self) -> bool:
        """Load the newest readable checkpoint into `carry`; False when there is none."""
        if self.checkpoints is None:
            return False
        template = self.init_carry()
        found = None
        for step in reversed(self.checkpoints.all_steps()):
            path = self.checkpoints.path_for(step)
            try:
                header, _ = ckpt.read_meta(path)
                target = template if header.get("with_buffer", True) else self._checkpoint_tree(template)
                tree, header = ckpt.restore(path, target)
                found = (tree, header)
                break
            except ckpt.CheckpointError as e:
                self.warn(f"warning: {e}; trying the previous checkpoint")
        if found is None:
            return False
        tree, header = found
        if getattr(tree, "buffer", 1) is None:
            tree = tree.replace(buffer=template.buffer)
        self.carry = self._place(jax.tree.map(jnp.asarray, tree))
        self.iteration = int(header["iteration"])
        self.best_eval = float(header.get("best_eval", -math.inf))
        return True

    # ---- the generator ---------------------------------------------------------
    @property
    def step(self) -> int:
        return self.iteration * self.steps_per_iter

    def evaluate(self, carry=None) -> np.ndarray:
        """Deterministic evaluation returns, shape [seeds, eval_episodes]."""
        carry = self.carry if carry is None else carry
        keys = jax.vmap(lambda k: jax.random.fold_in(k, self.step))(
            jnp.stack([jax.random.PRNGKey(10_000 + self.config.seed + i) for i in range(self.config.seeds)]))
        return np.asarray(self._evaluate(carry.agent, keys))

    def _check_finite(self, logs: dict):
        for name, values in logs.items():
            v = np.asarray(values, np.float64)
            if np.any(np.isinf(v)):
                raise DivergenceError(self.step, name)
        if not bool(self._finite(self.carry.agent)):
            raise DivergenceError(self.step, "params")

    def __call__(self) -> Iterator[dict]:
        """Yield one `log_data` dict per compiled chunk until the budget is spent."""
        if self.carry is None:
            if not (self._resume and self.restore()):
                self.carry = self.init_carry()
        eval_every = self.config.eval_interval
        ckpt_every = self.config.checkpoint_interval
        while self.iteration < self.total_iters:
            n = min(self.chunk_iters, self.total_iters - self.iteration)
            run = self._run_fn(n)
            t0 = time.perf_counter()
            carry, logs = run(self.carry)
            logs = jax.device_get(logs)
            seconds = time.perf_counter() - t0
            prev_step = self.step
            self.carry = carry
            self.iteration += n
            self._check_finite(logs)
            log_data = summarize(logs, self.config.seeds)
            log_data.update(step=self.step, chunk_s=seconds,
                            steps_per_s=n * self.steps_per_iter / seconds,
                            agent_steps_per_s=n * self.steps_per_iter * self.config.seeds / seconds)
            if eval_every and (self.step // eval_every > prev_step // eval_every or self.iteration >= self.total_iters):
                returns = self.evaluate()
                log_data["eval_return_mean"] = float(returns.mean())
                log_data["eval_return_per_seed"] = returns.mean(axis=1).tolist()
                if log_data["eval_return_mean"] > self.best_eval and self.checkpoints is not None:
                    self.best_eval = log_data["eval_return_mean"]
                    self.checkpoints.save_best(self._checkpoint_tree(self.carry),
                                               {"iteration": self.iteration, "step": self.step,
                                                "eval_return_mean": self.best_eval,
                                                "with_buffer": self._save_buffer(self.carry)})
            if ckpt_every and self.step // ckpt_every > prev_step // ckpt_every:
                self.save_checkpoint()
            yield log_data


def summarize(logs: dict, seeds: int) -> dict:
    """Per-chunk logs of shape [seeds] -> scalars (mean over seeds) and per-seed lists."""
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
