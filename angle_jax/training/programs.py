"""The compiled programs of a run: its initial carry, its chunks and its evaluation, batched
over runs and laid on devices.

Runs are vmapped along one axis: `runs = sweep configs x seeds`, run `r = g * seeds + s` uses
sweep config `g` (values written into the agent's traced `hparams`) and `PRNGKey(config.seed
+ s)`, so a one-config run with seed i equals a single-seed run with `--seed config.seed + i`.
With `data_parallel = D > 1` every run is D shards (`[runs, D, ...]`, vmapped with
`axis_name="data"`, gradients averaged over it). Both axes are sharded over the given devices
(all hosts after `jax.distributed.initialize`). Programs are lowered in the algorithm's
kernels' lowering context and compiled with its options (`angle_jax.core.kernels`).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from angle_jax import devices as device_selection
from angle_jax import parallel
from angle_jax.config import ConfigError, RunConfig
from angle_jax.core.axes import seed_axes
from angle_jax.core.kernels import Kernels
from angle_jax.core.optim import set_hparams
from angle_jax.meta.build import learned_hparam_names
from angle_jax.training.build import RunParts


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


def finite_tree(tree) -> jax.Array:
    """True when every float in `tree` is finite: one reduction per float dtype, not per leaf
    (on XLA:CPU every kernel adds to the compile time)."""
    by_dtype: dict[Any, list] = {}
    for x in jax.tree.leaves(tree):
        if jnp.issubdtype(x.dtype, jnp.floating):
            by_dtype.setdefault(x.dtype, []).append(x.ravel())
    checks = [jnp.all(jnp.isfinite(jnp.concatenate(xs))) for xs in by_dtype.values()]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def first_run(axes: Any, tree: Any) -> Any:
    """Run 0 of a tree batched over runs; leaves whose axis in the `seed_axes` prefix `axes`
    is None (shared counters) are kept as they are."""
    return jax.tree.map(lambda a, sub: sub if a is None else jax.tree.map(lambda x: x[0], sub),
                        axes, tree, is_leaf=lambda x: x is None)


def with_run_axis(axes: Any, tree: Any) -> Any:
    """The inverse of `first_run` for one run: a leading run axis of 1 on batched leaves."""
    return jax.tree.map(lambda a, sub: sub if a is None else jax.tree.map(lambda x: x[None], sub),
                        axes, tree, is_leaf=lambda x: x is None)


def map_runs(fn, axes: Any, *args) -> Any:
    """`fn` over the leading axis of `args`, one index after another (`lax.map`), its outputs
    stacked like `jax.vmap(fn, out_axes=axes)` would: leaves whose axis in the `seed_axes` prefix
    `axes` is None (shared counters, the same for every index) are kept once."""
    stacked = jax.lax.map(lambda xs: fn(*xs), args)
    return jax.tree.map(lambda a, sub: jax.tree.map(lambda x: x[0], sub) if a is None else sub,
                        axes, stacked, is_leaf=lambda x: x is None)


def split_buffer(carry):
    """(replay buffer, rest of the carry); (None, carry) when the loop has no buffer."""
    if getattr(carry, "buffer", None) is None:
        return None, carry
    return carry.buffer, carry.replace(buffer=None)


def join_buffer(buffer, rest):
    return rest if buffer is None else rest.replace(buffer=buffer)


class RunPrograms:
    """Lowers, compiles and runs the programs of the runs a config describes.

    `compile_s` accumulates the seconds spent tracing, lowering and compiling (and running the
    init program); `carry_spec` is the batched carry's shapes, dtypes and layout, so chunks
    compile before the carry exists."""

    def __init__(self, config: RunConfig, parts: RunParts, devices: list):
        self.config = config
        self.train = parts.train
        self.kernels: Kernels = parts.kernels
        self.shards = max(1, config.data_parallel)
        self.compile_s = 0.0
        # jitted so that its trace is cached: the shape probes below and the init program share it
        self._train_init = jax.jit(self.train.init)
        abstract = jax.eval_shape(self._train_init, jax.random.PRNGKey(0))
        self.axes = seed_axes(abstract)
        try:
            self.sweep = parallel.normalize_sweep(config.sweep)
            parallel.check_sweep(self.sweep, abstract.agent, config, learned_hparam_names(config.meta, parts.spec))
        except parallel.SweepError as e:
            raise ConfigError(str(e)) from None
        self.configs = parallel.grid(self.sweep)
        self.runs = len(self.configs) * config.seeds
        self._check_memory(abstract, devices)
        self.keys = parallel.run_keys(config.seed, config.seeds, len(self.configs))
        self.hparam_values = {n: jnp.asarray(v) for n, v in parallel.run_table(self.configs, config.seeds).items()}
        self.devices = list(devices)
        self.mesh = parallel.make_mesh(self.runs, self.shards, self.devices)
        self._check_hosts()
        env = parts.env
        self.vmappable = getattr(getattr(env, "unwrapped", env), "vmappable", True)
        if not self.vmappable and self.runs * self.shards > 1:
            raise ConfigError(f"{config.env} runs outside JAX (one env pool per process) and cannot be "
                              f"vmapped: use seeds=1, no sweep and no data_parallel")
        run_abstract = jax.eval_shape(self._vmap(self._init_run, out_axes=self.axes), self.keys, self.hparam_values)
        if self.mesh is not None:
            self.shardings = parallel.carry_shardings(self.mesh, self.axes, run_abstract, self.shards)
            self.replicated = parallel.replicated(self.mesh)
        else:  # one device: the run's own, which need not be JAX's default
            single = jax.sharding.SingleDeviceSharding(self.devices[0])
            self.shardings = jax.tree.map(lambda _: single, run_abstract)
            self.replicated = single
        self.carry_spec = jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh, weak_type=a.weak_type),
            run_abstract, self.shardings)
        self._init = jax.jit(self._init_program(), out_shardings=self.shardings)
        self._init_compiled = None
        self._runs: dict[int, Any] = {}
        self._evaluate_compiled = None
        self._evaluate = jax.jit(self._vmap(self._evaluate_run, in_axes=(self.axes.agent, 0)),
                                 out_shardings=self.replicated)

    @functools.cached_property
    def labels(self) -> list[str]:
        """`run_<i>: name=value ... seed=<s>` per run (built when asked for: sweeps log them)."""
        return parallel.run_labels(self.configs, self.config.seeds, self.config.seed)

    def _check_memory(self, abstract: Any, devices: list) -> None:
        """Refuse, before anything is built for all runs, a state that cannot fit in the devices'
        memory (the estimate is the carry itself; the compiled programs' temporaries come on top)."""
        def nbytes(tree) -> int:
            return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

        per_run = nbytes(abstract) * self.shards
        need = per_run * self.runs
        limit = device_selection.memory_bytes(list(devices))
        if limit is not None and need > 0.9 * limit:
            replay = nbytes(getattr(abstract, "buffer", None)) * self.shards
            fmt = device_selection.format_bytes
            raise ConfigError(f"the run's state needs {fmt(need)} ({self.runs:,} run(s) x {fmt(per_run)}, of which "
                              f"replay {fmt(replay)}), more than the {fmt(limit)} of memory available on "
                              f"{devices[0].platform}; lower buffer_size, seeds or the sweep")

    def _init_program(self):
        """The init program over all runs: one run after another (`lax.map`), not vmapped.

        jaxlib's CPU LAPACK kernels split a batch of factorizations over XLA's intra-op thread
        pool and wait for the parts; vmapped orthogonal initialisers (the QR of an LSTM's
        recurrent kernels) became such batches, and with runs on two host devices both pool
        threads waited on each other (a deadlock, jax 0.10.2, 4 seeds of a 64-unit LSTM on 2
        devices). Built one run at a time, each run's parameters are also exactly the single
        run's. With runs spread over devices (and no data-parallel shards) each device builds
        only its own runs (`shard_map`): nothing in a run's init needs another run."""
        if self.runs == 1 or not self.vmappable:
            return self._vmap(self._init_run, out_axes=self.axes)
        axes = self.axes

        def init(keys, values):
            return map_runs(self._init_run, axes, keys, values)

        if self.mesh is None or self.shards > 1:
            return init
        run_spec = jax.sharding.PartitionSpec(parallel.RUN_AXIS)
        return jax.shard_map(init, mesh=self.mesh, in_specs=(run_spec, run_spec),
                             out_specs=jax.tree.map(lambda sh: sh.spec, self.shardings), check_vma=False)

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
            # one shard after another, as the runs (see `_init_program`)
            carry = map_runs(self._train_init, self.axes, parallel.shard_keys(key, self.shards))
            carry = carry.replace(agent=parallel.same_on_all_shards(self.axes.agent, carry.agent))
        return carry.replace(agent=set_hparams(carry.agent, values))

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

    def place(self, carry):
        """Lay a host-side carry out on the run's devices (works across processes: each takes its slices)."""
        return jax.tree.map(
            lambda x, sh: jax.make_array_from_callback(np.shape(x), sh, lambda idx, x=x: np.asarray(x)[idx]),
            carry, self.shardings)

    def to_host(self, tree):
        """Numpy copy of a (possibly multi-host) sharded tree; a collective, so every process calls it."""
        leaves = jax.tree.leaves(tree)
        if all(getattr(x, "is_fully_addressable", True) for x in leaves):
            return jax.device_get(tree)
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    # ---- compiled pieces -------------------------------------------------------
    def _lower_run(self, num_iters: int):
        """The chunk `carry -> (carry, logs)` of `num_iters` iterations, lowered (not compiled).

        Only the replay buffer is donated (updated in place): it is the part whose
        size matters, and donating the small loop state as well measured about 2x
        slower per step on XLA:CPU (jax 0.10.2, TD3 Pendulum, benchmarks/RESULTS.md)."""
        run = self._vmap(lambda c: self._run_run(c, num_iters), in_axes=(self.axes,), out_axes=(self.axes, 0))

        def run_split(big, rest):
            carry, logs = run(join_buffer(big, rest))
            # the divergence guard's parameter check, in the chunk's program (no second program
            # to compile and launch per chunk)
            return split_buffer(carry), logs, finite_tree(carry.agent)

        out = (split_buffer(self.shardings), self.replicated, self.replicated)
        with self.kernels.lowering():
            return jax.jit(run_split, donate_argnums=0, out_shardings=out).lower(*split_buffer(self.carry_spec))

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
                (big, rest), logs, finite = compiled(*split_buffer(carry))
                return join_buffer(big, rest), logs, finite

            chunk.as_text = compiled.as_text  # the compiled HLO, for inspection
            self._runs[num_iters] = chunk

    def compile_missing(self, with_init: bool, chunk_sizes, with_evaluate: bool = False) -> None:
        """Lower and compile side by side what is not compiled yet: the chunks (the longest
        compiles), the init program and, with `with_evaluate` (a run that evaluates as it goes,
        so that its compile is not counted as training time), the evaluation.

        A single run lowers its init program first: unbatched, it lowers in ~0.2 s and then
        compiles while the chunks lower (TD3: 2.15-2.22 vs 2.18-2.38 s in all). Vmapped over
        runs it lowers slower and would hold the chunks back (8 seeds: 2.92-3.08 vs 2.76-2.88 s),
        so there the chunks go first."""
        programs = [(n, lambda n=n: self._lower_run(n), self.kernels.loop_options())
                    for n in dict.fromkeys(chunk_sizes) if n not in self._runs]
        if with_init and self._init_compiled is None:
            init = ("init", lambda: self._init.lower(self.keys, self.hparam_values), self.kernels.run_once_options())
            if self.runs == 1:
                programs.insert(0, init)
            else:
                programs.append(init)
        if with_evaluate and self._evaluate_compiled is None:
            programs.append(("evaluate", self._lower_evaluate, {}))
        if not programs:
            return
        done = self._compile(programs)
        if "evaluate" in done:
            self._evaluate_compiled = done.pop("evaluate")
        if "init" in done:
            self._init_compiled = done.pop("init")
        self._add_runs(done)

    def chunk(self, num_iters: int):
        """The compiled chunk `carry -> (carry, logs, finite)` of `num_iters` iterations."""
        if num_iters not in self._runs:
            self.compile_missing(False, (num_iters,))
        return self._runs[num_iters]

    def init_carry(self):
        """The initial carry of every run (compiles the init program first if needed)."""
        if self._init_compiled is None:
            self.compile_missing(True, ())
        t0 = time.perf_counter()
        carry = self._init_compiled(self.keys, self.hparam_values)
        jax.block_until_ready(carry)
        self.compile_s += time.perf_counter() - t0
        return carry

    def eval_keys(self) -> jax.Array:
        """The evaluation key of every run: `PRNGKey(eval_seed)` for all of them, at every
        evaluation, so every run (and every run of a comparison with the same `eval_seed`) is
        evaluated on the same episodes and the same parameters give the same returns."""
        return parallel.run_keys(self.config.eval_seed, 1, len(self.configs) * self.config.seeds)

    def _lower_evaluate(self):
        with self.kernels.lowering():
            return self._evaluate.lower(self.carry_spec.agent, self.eval_keys())

    def evaluate_async(self, agent) -> jax.Array:
        """Dispatch the evaluation of every run's agent; returns its (not yet ready) returns."""
        evaluate = self._evaluate if self._evaluate_compiled is None else self._evaluate_compiled
        with self.kernels.lowering():
            return evaluate(agent, self.eval_keys())

    def evaluate(self, agent) -> np.ndarray:
        """Evaluation returns of every run's agent, shape [runs, eval_episodes]."""
        return np.asarray(self.to_host(self.evaluate_async(agent)))

    def agents(self, carry) -> Any:
        """The agents of all runs, `[runs, ...]`, on the host (shard 0 of each run)."""
        agent = carry.agent
        if self.shards > 1:
            agent = jax.tree.map(lambda a, x: x if a is None else jax.tree.map(lambda y: y[:, 0], x),
                                 self.axes.agent, agent, is_leaf=lambda x: x is None)
        return self.to_host(agent)
