"""Joining a multi-process (multi-host) JAX job before any computation runs.

After `initialize`, `jax.devices()` lists the devices of every process, and the
Trainer lays runs and data-parallel shards over all of them; every process runs
the same program on its own slices and process 0 writes logs and checkpoints.

Settings come from flags (`--coordinator HOST:PORT --num-processes N
--process-id I`), else from the environment (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, `JAX_LOCAL_DEVICE_IDS`), else, with
`auto=True`, from JAX's cluster detection (SLURM, Open MPI, Cloud TPU pods,
Kubernetes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import jax
from jax._src import distributed as _dist


@dataclass(frozen=True)
class ProcessInfo:
    process_id: int
    num_processes: int
    local_devices: int
    global_devices: int

    @property
    def is_main(self) -> bool:
        return self.process_id == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _device_ids(value) -> list[int] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    return [int(v) for v in value]


def settings(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
             local_device_ids=None) -> dict:
    """Flags over environment variables; {} when neither asks for a multi-process job."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    local = _device_ids(local_device_ids if local_device_ids is not None else os.environ.get("JAX_LOCAL_DEVICE_IDS"))
    if coordinator is None and num_processes is None and process_id is None:
        return {}
    if coordinator is None or num_processes is None or process_id is None:
        raise ValueError("a multi-process run needs all of --coordinator HOST:PORT, --num-processes N and "
                         "--process-id I (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if ":" not in coordinator:
        raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    out = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    if local is not None:
        out["local_device_ids"] = local
    return out


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               local_device_ids=None, auto: bool = False, timeout_s: int = 300) -> ProcessInfo:
    """Join the job described by flags / environment (or detected, with `auto`), then
    report this process's place in it. A single-process run just reports."""
    kwargs = settings(coordinator, num_processes, process_id, local_device_ids)
    if kwargs or auto:
        # CPU processes need a collectives backend to exchange data; GPUs/TPUs ignore this.
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if not _already_initialized():
            jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s)
    return info()


def _already_initialized() -> bool:
    return getattr(_dist.global_state, "client", None) is not None


def info() -> ProcessInfo:
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def shutdown() -> None:
    """Leave the job cleanly (no-op for a single process)."""
    if _already_initialized():
        jax.distributed.shutdown()
