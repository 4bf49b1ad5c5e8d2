"""Which devices a run uses: `device: auto | cpu | gpu | tpu` in the run config (`--device`)."""
from __future__ import annotations

import os

import jax

BACKENDS = ("cpu", "gpu", "tpu")


def present_backends() -> list[str]:
    """The backends JAX can run on here (e.g. ["cpu"] on a machine without accelerators)."""
    found = []
    for name in BACKENDS:
        try:
            if jax.devices(name):
                found.append(name)
        except RuntimeError:
            continue
    return found


def select_devices(device: str = "auto") -> list:
    """The devices of backend `device` ("auto": the default backend's); ValueError naming the
    backends that are present when `device` is absent or unknown."""
    if device == "auto":
        return list(jax.devices())
    if device not in BACKENDS:
        raise ValueError(f"device must be one of auto, {', '.join(BACKENDS)}, got {device!r}")
    try:
        devices = list(jax.devices(device))
    except RuntimeError:
        devices = []
    if not devices:
        raise ValueError(f"device {device!r} is not available here; present: {', '.join(present_backends())}")
    return devices


def memory_bytes(devices: list) -> int | None:
    """The memory a run's state can use: on the CPU the host's available memory (MemAvailable,
    else its physical memory), on accelerators the devices' limits summed; None when unknown."""
    if devices[0].platform == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    return None if None in limits else int(sum(limits))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:,.1f} PiB"


def describe(devices: list) -> dict:
    """What summary.json records of the devices a run used."""
    first = devices[0]
    return {"backend": first.platform, "device_kind": first.device_kind, "device_count": len(devices)}
