"""Saving and restoring the whole batched carry of a run (numbered checkpoints and the best one).

The replay buffer is saved with the carry when it is small (at most 1 GiB, or as
`save_buffer` says); otherwise a resumed run starts with an empty buffer of the same shape.
Process 0 writes; every process takes part in gathering the carry to the host.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import jax

from angle_jax import checkpoint as ckpt
from angle_jax.config import ConfigError
from angle_jax.training.programs import RunPrograms, split_buffer


class RunCheckpoints:
    """The checkpoints of one run directory, for the carry `programs` runs."""

    def __init__(self, directory: str | Path, keep: int, programs: RunPrograms, save_buffer: bool | None,
                 warn: Callable[[str], None] = print):
        self.manager = ckpt.CheckpointManager(directory, keep)
        self.programs = programs
        self.save_buffer = save_buffer
        self.warn = warn

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    def with_buffer(self, carry) -> bool:
        if self.save_buffer is not None:
            return self.save_buffer
        buf = getattr(carry, "buffer", None)
        nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(buf)) if buf is not None else 0
        return nbytes <= 1 << 30

    def _tree(self, carry):
        return carry if self.with_buffer(carry) else split_buffer(carry)[1]

    def save(self, carry, iteration: int, step: int, best_eval: float) -> Path | None:
        """A numbered checkpoint of `carry` at `step` (None on processes other than 0)."""
        meta = {"iteration": iteration, "step": step, "best_eval": best_eval, "with_buffer": self.with_buffer(carry)}
        tree = self.programs.to_host(self._tree(carry))
        return self.manager.save(step, tree, meta) if self.is_main else None

    def save_best(self, carry, iteration: int, step: int, eval_return_mean: float) -> None:
        """`best.ckpt` from `carry`; one whose buffer was taken out (`split_buffer`) is saved without it."""
        with_buffer = getattr(carry, "buffer", None) is not None and self.with_buffer(carry)
        tree = self.programs.to_host(carry if with_buffer else split_buffer(carry)[1])
        if self.is_main:
            self.manager.save_best(tree, {"iteration": iteration, "step": step, "eval_return_mean": eval_return_mean,
                                          "with_buffer": with_buffer})

    def restore(self, template: Any) -> tuple[Any, dict] | None:
        """(carry laid on the run's devices, header) from the newest readable checkpoint, or None
        when there is none; `template` is a fresh carry of this run (host or device).

        Raises `ConfigError` when there are checkpoints but none of them fits this run (e.g.
        written by another version): the run is not silently started over beside them."""
        template = self.programs.to_host(template)
        found, errors = None, []
        steps = self.manager.all_steps()
        for step in reversed(steps):
            path = self.manager.path_for(step)
            try:
                header, _ = ckpt.read_meta(path)
                target = template if header.get("with_buffer", True) else self._tree_without_buffer(template)
                found = ckpt.restore(path, target)
                break
            except ckpt.CheckpointError as e:
                errors.append(e)
        if found is not None:
            for e in errors:  # the newer ones that could not be read, now that an older one was
                self.warn(f"warning: {e}; resumed from an older checkpoint")
        if found is None:
            if steps:
                raise ConfigError(f"none of the {len(steps)} checkpoints in {self.manager.directory} can be "
                                  f"restored into this run (newest: {errors[0]}): settings that change shapes, "
                                  f"such as a network width, cannot be applied to a run's checkpoints; they are "
                                  f"left as they are: move them away to start the run over")
            return None
        tree, header = found
        if getattr(tree, "buffer", 1) is None:
            tree = tree.replace(buffer=template.buffer)
        if not self.programs.vmappable:
            # An external env's state is a handle into a live process: start fresh episodes
            # (and fresh exploration state, which belongs to the episodes).
            fresh = {"env_state": template.env_state, "obs": template.obs}
            if hasattr(tree, "explore"):
                fresh["explore"] = template.explore
            tree = tree.replace(**fresh)
        header = dict(header)
        header.setdefault("best_eval", -math.inf)
        return self.programs.place(tree), header

    @staticmethod
    def _tree_without_buffer(template):
        return split_buffer(template)[1]
