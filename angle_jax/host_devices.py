"""Host-device setup that has to happen before JAX starts."""
from __future__ import annotations

import importlib.util
import os


def accelerator_plugin_present() -> bool:
    """True when a GPU/TPU jaxlib plugin is installed (then host devices don't matter)."""
    names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu", "jax_plugins")
    return any(importlib.util.find_spec(n) is not None for n in names if n != "jax_plugins") or \
        os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] not in ("", "cpu")


def split_cpu_for_seeds(seeds: int) -> int:
    """On a CPU-only machine, expose one XLA host device per core (up to a divisor of `seeds`),
    so vmapped seeds are sharded over cores. Must run before `import jax`; returns the count."""
    if seeds < 2 or "jax" in __import__("sys").modules or accelerator_plugin_present():
        return 1
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return 1
    cores = os.cpu_count() or 1
    count = max(d for d in range(1, min(cores, seeds) + 1) if seeds % d == 0)
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    return count
