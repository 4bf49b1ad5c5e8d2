"""A trained run directory read back: where its parameters are, the agents inside, and the
algorithm as the run made it. Used by play.py and by the policy server (angle_jax.serve)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path


def find_run(path: Path) -> tuple[Path, Path | None]:
    """(run_dir, checkpoint file or None for the run's final params)."""
    if path.is_dir():
        return path, None
    if path.is_file():
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run, path
    raise FileNotFoundError(f"no run directory or checkpoint at {path}")


def make_algo(config, spec, platform: str):
    """The algorithm as the run made it: its kernels (config.yaml records them; they fix the
    optimizer state's layout) and its per-env state sizes (the run's env count); acting takes
    any batch of observations. Raises ValueError for settings the algorithm rejects."""
    from angle_jax import registry, xla_cpu

    kernels = xla_cpu.select(config.kernels, platform)
    trained = dataclasses.replace(spec, num_envs=config.num_envs // max(getattr(config, "data_parallel", 1), 1))
    return registry.algo_spec(config.algo).make(config.agent, trained, total_steps=config.total_steps,
                                                 kernels=kernels)


def load_agent(run_dir: Path, ckpt_file: Path | None, algo, config):
    """The agent states of all runs, `[runs, ...]`: from params.ckpt, or the agent inside a full
    checkpoint (without params.ckpt: the newest readable one)."""
    import jax

    from angle_jax import checkpoint as ckpt
    from angle_jax import parallel

    keys = parallel.run_keys(config.seed, config.seeds, len(parallel.grid(config.sweep)))
    template = jax.vmap(algo.init, out_axes=agent_axes(algo, keys[0]))(keys)
    if ckpt_file is None:
        final = run_dir / "params.ckpt"
        if final.is_file():
            return ckpt.restore(final, template)[0]
        manager = ckpt.CheckpointManager(run_dir / "checkpoints")
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{run_dir} has no params.ckpt and no checkpoints")
        errors = []
        for step in reversed(steps):  # newest first; a damaged one falls back to the one before, as --resume does
            try:
                return _agent_from_checkpoint(manager.path_for(step), template, config)
            except ckpt.CheckpointError as e:
                errors.append(e)
                print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
        raise ckpt.CheckpointError(f"{run_dir} has no params.ckpt and none of its {len(steps)} checkpoints can be "
                                   f"read (newest: {errors[0]})")
    return _agent_from_checkpoint(ckpt_file, template, config)


def _agent_from_checkpoint(ckpt_file: Path, template, config):
    """The agents inside a full checkpoint (the carry), as `template` lays them out."""
    import jax
    import numpy as np
    from flax import serialization

    from angle_jax import checkpoint as ckpt

    header, payload = ckpt.read_meta(ckpt_file)
    raw = serialization.msgpack_restore(payload)
    state = raw["agent"] if isinstance(raw, dict) and "agent" in raw else raw
    agent = serialization.from_state_dict(template, state)
    if getattr(config, "data_parallel", 1) > 1:
        # a data-parallel run's full checkpoint keeps a shard axis after the run axis; the
        # shards hold the same agent (gradients are averaged), so play shard 0
        agent = jax.tree.map(lambda t, x: x[:, 0] if np.ndim(x) == np.ndim(t) + 1 else x, template, agent)
    return agent


def agent_axes(algo, key):
    import jax

    from angle_jax.core.axes import seed_axes

    return seed_axes(jax.eval_shape(algo.init, key))


def pick_run(agents, axes, index: int):
    import jax

    return jax.tree.map(lambda a, x: x if a is None else x[index], axes, agents, is_leaf=lambda x: x is None)
