"""vmap axes for state batched over seeds, with some counters shared by all seeds.

A flax struct dataclass may list field names in a class attribute
`shared_fields`; those fields stay unbatched (one value for every seed), the
rest get axis 0. Shared counters keep `lax.cond` a real branch and replay
writes a dynamic-update-slice under `vmap`, instead of compute-both-branches
and scatters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax


def seed_axes(tree: Any) -> Any:
    """A pytree prefix of `0` / `None` for `jax.vmap` in/out axes over seeds."""
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        shared = set(getattr(tree, "shared_fields", ()))
        values = {}
        for f in dataclasses.fields(tree):
            if not f.metadata.get("pytree_node", True):
                continue  # static metadata (`struct.field(pytree_node=False)`): part of the treedef, kept as is
            value = getattr(tree, f.name)
            values[f.name] = None if f.name in shared else seed_axes(value)
        return tree.replace(**values)
    return jax.tree.map(lambda _: 0, tree)
