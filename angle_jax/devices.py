"""Which devices a run uses: `device: auto | cpu | gpu | tpu` in the run config (`--device`)."""
from __future__ import annotations

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


def describe(devices: list) -> dict:
    """What summary.json records of the devices a run used."""
    first = devices[0]
    return {"backend": first.platform, "device_kind": first.device_kind, "device_count": len(devices)}
