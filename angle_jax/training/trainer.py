"""The Trainer: runs compiled chunks of a training loop and yields a `log_data`
dict after each one. Loggers, checkpoints and progress bars consume the dicts;
nothing in here runs inside the compiled step.

    trainer = Trainer(config, run_dir)
    for log_data in trainer():
        ...

Runs are vmapped along one axis: `runs = sweep configs x seeds`, run
`r = g * seeds + s` uses sweep config `g` (values written into the agent's
traced `hparams`) and `PRNGKey(config.seed + s)`, so a one-config run with
seed i equals a single-seed run with `--seed config.seed + i`. With
`data_parallel = D > 1` every run is D shards (`[runs, D, ...]`, vmapped with
`axis_name="data"`, gradients averaged over it). Both axes are sharded over
the global devices (all hosts after `jax.distributed.initialize`); process 0
writes checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from angle_jax import checkpoint as ckpt
from angle_jax import parallel
from angle_jax import registry, xla_cpu
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
    """Env, eval env, algorithm and loop functions for a run config (no compile).

    With `config.data_parallel = D > 1` they are those of one shard: num_envs,
    batch, replay and warm-up divided by D, gradients averaged over "data"."""
    module = registry.load_algo(config.algo)
    shards = getattr(config, "data_parallel", 1)
    try:
        parallel.check_data_parallel(config, shards, getattr(module, "LOOP", "off_policy") == "on_policy")
    except parallel.SweepError as e:
        raise ConfigError(str(e)) from None
    eval_episodes = config.eval_episodes
    config = parallel.shard_config(config, shards)
    env = registry.make_env(config.env, config.num_envs, **config.env_kwargs)
    eval_env = registry.make_env(config.env, eval_episodes, **config.env_kwargs)
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


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector paused for the block (restored as it was after).

    Tracing and lowering allocate millions of short-lived objects; each time that sets off
    a full collection, it walks every object jax, flax and the env libraries hold. Paused,
    TD3's build, trace and compile take ~0.2 s (~8%) less on CPU."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _finite_tree(tree) -> jax.Array:
    """True when every float in `tree` is finite: one reduction per float dtype, not per leaf
    (on XLA:CPU every kernel adds to the compile time)."""
    by_dtype: dict[Any, list] = {}
    for x in jax.tree.leaves(tree):
        if jnp.issubdtype(x.dtype, jnp.floating):
            by_dtype.setdefault(x.dtype, []).append(x.ravel())
    checks = [jnp.all(jnp.isfinite(jnp.concatenate(xs))) for xs in by_dtype.values()]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


class Trainer:
    """Drives a run in compiled chunks of `log_interval` env steps.

    `carry` holds the whole batched training state between chunks; `checkpoints`
    (when a run dir is given) saves and restores it. `devices` (default: all
    global devices) are the ones the run and shard axes are spread over.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False,
                 warn=print, devices=None):
        with gc_paused():
            self._build(config, run_dir, resume, warn, devices)

    def _build(self, config: RunConfig, run_dir, resume: bool, warn, devices):
        started = time.perf_counter()
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.warn = warn
        self.env, self.eval_env, self.algo, self.train = build_components(config)
        self.shards = max(1, getattr(config, "data_parallel", 1))
        self.steps_per_iter = env_steps_per_iteration(self.train) * self.shards
        self.total_iters = max(1, math.ceil(config.total_steps / self.steps_per_iter))
        self.chunk_iters = max(1, min(self.total_iters, config.log_interval // self.steps_per_iter))
        # jitted so that its trace is cached: the shape probes below and the init program share it
        self._train_init = jax.jit(self.train.init)
        abstract = jax.eval_shape(self._train_init, jax.random.PRNGKey(0))
        self.axes = seed_axes(abstract)
        try:
            self.sweep = parallel.normalize_sweep(getattr(config, "sweep", None))
            parallel.check_sweep(self.sweep, abstract.agent, config)
        except parallel.SweepError as e:
            raise ConfigError(str(e)) from None
        self.configs = parallel.grid(self.sweep)
        self.runs = len(self.configs) * config.seeds
        self.keys = parallel.run_keys(config.seed, config.seeds, len(self.configs))
        self.hparam_values = {n: jnp.asarray(v) for n, v in parallel.run_table(self.configs, config.seeds).items()}
        self.labels = parallel.run_labels(self.configs, config.seeds, config.seed)
        self.devices = list(jax.devices() if devices is None else devices)
        self.mesh = parallel.make_mesh(self.runs, self.shards, self.devices)
        self._check_hosts()
        self.vmappable = getattr(getattr(self.env, "unwrapped", self.env), "vmappable", True)
        if not self.vmappable and self.runs * self.shards > 1:
            raise ConfigError(f"{config.env} runs outside JAX (one env pool per process) and cannot be "
                              f"vmapped: use seeds=1, no sweep and no data_parallel")
        run_abstract = jax.eval_shape(self._vmap(self._init_run, out_axes=self.axes), self.keys, self.hparam_values)
        self.shardings = (None if self.mesh is None else
                          parallel.carry_shardings(self.mesh, self.axes, run_abstract, self.shards))
        # The carry's shapes, dtypes and layout: chunks compile from it before the carry exists.
        self.carry_spec = (run_abstract if self.shardings is None else jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh, weak_type=a.weak_type),
            run_abstract, self.shardings))
        self.replicated = None if self.mesh is None else parallel.replicated(self.mesh)
        self._init = jax.jit(self._vmap(self._init_run, out_axes=self.axes), **self._out(self.shardings))
        self._init_compiled = None
        self._runs: dict[int, Any] = {}
        self._evaluate_compiled = None
        self._evaluate = jax.jit(self._vmap(self._evaluate_run, in_axes=(self.axes.agent, 0)),
                                 **self._out(self.replicated))
        # Seconds spent before training proper: building, tracing and compiling (init, chunks);
        # `build_s` is the part spent in this constructor.
        self.compile_s = self.build_s = time.perf_counter() - started
        self.carry = None
        self.iteration = 0
        self.start_step = 0
        self.best_eval = -math.inf
        self.checkpoints = None
        if self.run_dir is not None:
            self.checkpoints = ckpt.CheckpointManager(self.run_dir / "checkpoints", config.keep_checkpoints)
        self._resume = resume

    # ---- one run, as vmapped over runs -------------------------------------------
    def _vmap(self, fn, in_axes=0, out_axes=0):
        """`jax.vmap` over runs. A single run, and the run of an env that cannot be vmapped,
        get the same batched layout (a leading axis of 1) without vmap, so checkpoints look
        the same: traced without a batch axis of 1, its products keep the plain 2-D shapes
        XLA:CPU hands to its fastest kernels."""
        if self.vmappable and self.runs > 1:
            return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)

        def one(*args):
            axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
            return with_run_axis(out_axes, fn(*(first_run(a, x) for a, x in zip(axes, args))))

        return one

    def _init_run(self, key: jax.Array, values: dict) -> Any:
        """One run's carry (all its shards): shard agents identical, swept hparams written in."""
        if self.shards == 1:
            carry = self._train_init(key)
        else:
            carry = jax.vmap(self._train_init, out_axes=self.axes)(parallel.shard_keys(key, self.shards))
            carry = carry.replace(agent=parallel.same_on_all_shards(self.axes.agent, carry.agent))
        return carry.replace(agent=parallel.set_hparams(carry.agent, values))

    def _run_run(self, carry: Any, num_iters: int):
        if self.shards == 1:
            return self.train.run(carry, num_iters)
        return jax.vmap(lambda c: self.train.run(c, num_iters), in_axes=(self.axes,), out_axes=(self.axes, 0),
                        axis_name=parallel.SHARD_AXIS)(carry)

    def _run_agent(self, agent: Any) -> Any:
        """The agent of one run (shard 0: every shard holds the same parameters)."""
        return agent if self.shards == 1 else parallel.first_shard(self.axes.agent, agent)

    def _evaluate_run(self, agent: Any, key: jax.Array) -> jax.Array:
        return self.train.evaluate(self._run_agent(agent), key)

    # ---- devices ---------------------------------------------------------------
    def _check_hosts(self):
        if jax.process_count() == 1:
            return
        used = 0 if self.mesh is None else self.mesh.devices.size
        if used != len(self.devices):
            raise ConfigError(f"with {jax.process_count()} processes every device must hold part of the run: "
                              f"runs ({self.runs}) x data_parallel ({self.shards}) spread over "
                              f"{len(self.devices)} devices uses only {used}; make data_parallel a multiple "
                              f"of the device count")

    def _out(self, shardings) -> dict:
        """`out_shardings` for jit when the run is laid on a mesh, else nothing."""
        return {} if self.mesh is None else {"out_shardings": shardings}

    def _place(self, carry):
        """Lay a host-side carry out on the mesh (works across processes: each takes its slices)."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, carry)
        return jax.tree.map(
            lambda x, sh: jax.make_array_from_callback(np.shape(x), sh, lambda idx, x=x: np.asarray(x)[idx]),
            carry, self.shardings)

    def to_host(self, tree):
        """Numpy copy of a (possibly multi-host) sharded tree; a collective, so every process calls it."""
        leaves = jax.tree.leaves(tree)
        if all(getattr(x, "is_fully_addressable", True) for x in leaves):
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    # ---- compiled pieces -------------------------------------------------------
    def _lower_run(self, num_iters: int):
        """The chunk `carry -> (carry, logs)` of `num_iters` iterations, lowered (not compiled).

        Only the replay buffer is donated (updated in place): it is the part whose
        size matters, and donating the small loop state as well measured about 2x
        slower per step on XLA:CPU (jax 0.10.2, TD3 Pendulum, benchmarks/RESULTS.md)."""
        run = self._vmap(lambda c: self._run_run(c, num_iters), in_axes=(self.axes,), out_axes=(self.axes, 0))

        def run_split(big, rest):
            carry, logs = run(_join_buffer(big, rest))
            # the divergence guard's parameter check, in the chunk's program (no second program
            # to compile and launch per chunk)
            return _split_buffer(carry), logs, _finite_tree(carry.agent)

        out = self._out((None if self.shardings is None else _split_buffer(self.shardings), self.replicated,
                         self.replicated))
        with xla_cpu.unrolled_threefry():
            return jax.jit(run_split, donate_argnums=0, **out).lower(*_split_buffer(self.carry_spec))

    def _compile(self, programs) -> dict:
        """Lower and compile programs side by side; time it into `compile_s`.

        `programs` yields `(name, lower, options)`; each program starts compiling in a
        worker thread as soon as it is lowered, so the next one lowers (Python, holding the
        GIL) while XLA compiles the previous one (which releases the GIL). On a
        multi-core host the init program and the chunks compile concurrently."""
        t0 = time.perf_counter()
        with gc_paused(), ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(lowered.compile, options) for name, lowered, options in
                       ((name, lower(), options) for name, lower, options in programs)}
            done = {name: f.result() for name, f in futures.items()}
        self.compile_s += time.perf_counter() - t0
        return done

    def _add_runs(self, compiled_runs: dict) -> None:
        for num_iters, compiled in compiled_runs.items():
            def chunk(carry, compiled=compiled):
                """carry -> (carry, logs, whether every float parameter of the agents is finite)."""
                (big, rest), logs, finite = compiled(*_split_buffer(carry))
                return _join_buffer(big, rest), logs, finite

            chunk.as_text = compiled.as_text  # the compiled HLO, for inspection
            self._runs[num_iters] = chunk

    def _chunk_sizes(self) -> list[int]:
        """The chunk lengths (iterations) the remaining budget needs: full chunks and a last, shorter one."""
        left = self.total_iters - self.iteration
        sizes = [min(self.chunk_iters, left)] if left > 0 else []
        if left > self.chunk_iters and left % self.chunk_iters:
            sizes.append(left % self.chunk_iters)
        return sizes

    def compile(self, with_init: bool = True, with_chunks: bool = True) -> None:
        """Lower and compile the init program and every chunk length the run needs, concurrently."""
        self._compile_missing(with_init, self._chunk_sizes() if with_chunks else ())

    def _compile_missing(self, with_init: bool, chunk_sizes) -> None:
        """Lower and compile side by side what is not compiled yet: the chunks (the longest
        compiles), the init program and, when the run evaluates as it goes, the evaluation (so
        that its compile is not counted as training time).

        A single run lowers its init program first: unbatched, it lowers in ~0.2 s and then
        compiles while the chunks lower (TD3: 2.15-2.22 vs 2.18-2.38 s in all). Vmapped over
        runs it lowers slower and would hold the chunks back (8 seeds: 2.92-3.08 vs 2.76-2.88 s),
        so there the chunks go first."""
        programs = [(n, lambda n=n: self._lower_run(n), xla_cpu.loop_options())
                    for n in dict.fromkeys(chunk_sizes) if n not in self._runs]
        if with_init and self._init_compiled is None:
            init = ("init", lambda: self._init.lower(self.keys, self.hparam_values), xla_cpu.run_once_options())
            if self.runs == 1:
                programs.insert(0, init)
            else:
                programs.append(init)
        if chunk_sizes and self.config.eval_interval and self._evaluate_compiled is None:
            programs.append(("evaluate", self._lower_evaluate, {}))
        if not programs:
            return
        done = self._compile(programs)
        if "evaluate" in done:
            self._evaluate_compiled = done.pop("evaluate")
        if "init" in done:
            self._init_compiled = done.pop("init")
        self._add_runs(done)

    def _run_fn(self, num_iters: int):
        """The compiled chunk `carry -> (carry, logs)` of `num_iters` iterations."""
        if num_iters not in self._runs:
            self._compile_missing(False, (num_iters,))
        return self._runs[num_iters]

    def init_carry(self, with_chunks: bool = True):
        """The initial carry of every run; compiles the init program first (and, with
        `with_chunks`, the chunks of the run alongside it)."""
        if self._init_compiled is None:
            self.compile(with_init=True, with_chunks=with_chunks)
        t0 = time.perf_counter()
        carry = self._init_compiled(self.keys, self.hparam_values)
        jax.block_until_ready(carry)
        self.compile_s += time.perf_counter() - t0
        return carry

    def agent_params(self, carry=None):
        """The agents of all runs, `[runs, ...]`, on the host (shard 0 of each run)."""
        carry = self.carry if carry is None else carry
        agent = carry.agent
        if self.shards > 1:
            agent = jax.tree.map(lambda a, x: x if a is None else jax.tree.map(lambda y: y[:, 0], x),
                                 self.axes.agent, agent, is_leaf=lambda x: x is None)
        return self.to_host(agent)

    # ---- checkpoints -----------------------------------------------------------
    def _checkpoint_tree(self, carry):
        if self._save_buffer(carry):
            return carry
        return _split_buffer(carry)[1]

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
        tree = self.to_host(self._checkpoint_tree(carry))
        return self.checkpoints.save(self.step, tree, meta) if self.is_main else None

    def restore(self) -> bool:
        """Load the newest readable checkpoint into `carry`; False when there is none.

        Raises `ConfigError` when there are checkpoints but none of them fits this run (e.g.
        written by another version): the run is not silently started over beside them."""
        if self.checkpoints is None:
            return False
        template = self.to_host(self.init_carry(with_chunks=False))
        found, errors = None, []
        steps = self.checkpoints.all_steps()
        for step in reversed(steps):
            path = self.checkpoints.path_for(step)
            try:
                header, _ = ckpt.read_meta(path)
                target = template if header.get("with_buffer", True) else self._checkpoint_tree(template)
                tree, header = ckpt.restore(path, target)
                found = (tree, header)
                break
            except ckpt.CheckpointError as e:
                errors.append(e)
                self.warn(f"warning: {e}; trying the previous checkpoint")
        if found is None:
            if steps:
                raise ConfigError(f"none of the {len(steps)} checkpoints in {self.checkpoints.directory} can be "
                                  f"restored into this run (newest: {errors[0]}); they are left as they are: "
                                  f"move them away to start the run over")
            return False
        tree, header = found
        if getattr(tree, "buffer", 1) is None:
            tree = tree.replace(buffer=template.buffer)
        if not self.vmappable:
            # An external env's state is a handle into a live process: start fresh episodes
            # (and fresh exploration state, which belongs to the episodes).
            fresh = {"env_state": template.env_state, "obs": template.obs}
            if hasattr(tree, "explore"):
                fresh["explore"] = template.explore
            tree = tree.replace(**fresh)
        self.carry = self._place(tree)
        self.iteration = int(header["iteration"])
        self.best_eval = float(header.get("best_eval", -math.inf))
        return True

    # ---- the generator ---------------------------------------------------------
    @property
    def step(self) -> int:
        return self.iteration * self.steps_per_iter

    def evaluate(self, carry=None) -> np.ndarray:
        """Deterministic evaluation returns, shape [runs, eval_episodes] (runs = configs x seeds)."""
        carry = self.carry if carry is None else carry
        evaluate = self._evaluate if self._evaluate_compiled is None else self._evaluate_compiled
        with xla_cpu.unrolled_threefry():
            returns = evaluate(carry.agent, self._eval_keys())
        return np.asarray(self.to_host(returns))

    def _eval_keys(self) -> jax.Array:
        """Evaluation keys of every run at the current step."""
        eval_keys = parallel.run_keys(10_000 + self.config.seed, self.config.seeds, len(self.configs))
        return jax.vmap(lambda k: jax.random.fold_in(k, self.step))(eval_keys)

    def _lower_evaluate(self):
        with xla_cpu.unrolled_threefry():
            return self._evaluate.lower(self.carry_spec.agent, self._eval_keys())

    def _check_finite(self, logs: dict, params_finite) -> None:
        for name, values in logs.items():
            v = np.asarray(values, np.float64)
            if np.any(np.isinf(v)):
                raise DivergenceError(self.step, name)
        if not bool(params_finite):
            raise DivergenceError(self.step, "params")

    def __call__(self) -> Iterator[dict]:
        """Yield one `log_data` dict per compiled chunk until the budget is spent."""
        if self.carry is None:
            if not (self._resume and self.restore()):
                self.carry = self.init_carry()
        self.start_step = self.step  # where this generator starts (after a resume: the checkpoint's step)
        eval_every = self.config.eval_interval
        ckpt_every = self.config.checkpoint_interval
        while self.iteration < self.total_iters:
            n = min(self.chunk_iters, self.total_iters - self.iteration)
            run = self._run_fn(n)
            t0 = time.perf_counter()
            carry, logs, params_finite = run(self.carry)
            logs, params_finite = self.to_host((logs, params_finite))
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
            if eval_every and (self.step // eval_every > prev_step // eval_every or self.iteration >= self.total_iters):
                returns = self.evaluate()
                log_data["eval_return_mean"] = float(returns.mean())
                log_data["eval_return_per_seed"] = returns.mean(axis=1).tolist()
                if log_data["eval_return_mean"] > self.best_eval and self.checkpoints is not None:
                    self.best_eval = log_data["eval_return_mean"]
                    tree = self.to_host(self._checkpoint_tree(self.carry))
                    if self.is_main:
                        self.checkpoints.save_best(tree, {"iteration": self.iteration, "step": self.step,
                                                          "eval_return_mean": self.best_eval,
                                                          "with_buffer": self._save_buffer(self.carry)})
            if ckpt_every and self.step // ckpt_every > prev_step // ckpt_every:
                self.save_checkpoint()
            yield log_data


def first_run(axes: Any, tree: Any) -> Any:
    """Run 0 of a tree batched over runs; leaves whose axis in the `seed_axes` prefix `axes`
    is None (shared counters) are kept as they are."""
    return jax.tree.map(lambda a, sub: sub if a is None else jax.tree.map(lambda x: x[0], sub),
                        axes, tree, is_leaf=lambda x: x is None)


def with_run_axis(axes: Any, tree: Any) -> Any:
    """The inverse of `first_run` for one run: a leading run axis of 1 on batched leaves."""
    return jax.tree.map(lambda a, sub: sub if a is None else jax.tree.map(lambda x: x[None], sub),
                        axes, tree, is_leaf=lambda x: x is None)


def _split_buffer(carry):
    """(replay buffer, rest of the carry); (None, carry) when the loop has no buffer."""
    if getattr(carry, "buffer", None) is None:
        return None, carry
    return carry.buffer, carry.replace(buffer=None)


def _join_buffer(buffer, rest):
    return rest if buffer is None else rest.replace(buffer=buffer)


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
