"""Atomic, verified checkpoints of a whole training carry.

Format: flax.serialization msgpack (one self-describing file, no background
threads, byte-exact round trip of every array, including PRNG keys), behind a
small JSON header that carries the step and a SHA-256 of the payload. A file is
written to a temporary name, fsynced, then renamed, so a crash never leaves a
half-written checkpoint under a real name; a corrupt or truncated file is
detected by its checksum and skipped in favour of the previous one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct as pystruct
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

MAGIC = b"ANGLECKPT1"
_NAME = re.compile(r"^ckpt_(\d{12})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back (missing, truncated or corrupt)."""


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` so a crash leaves the old file or the new one, never a part."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def save(path: str | Path, tree: Any, meta: dict | None = None) -> Path:
    """Write `tree` (any pytree of arrays) with `meta` atomically to `path`."""
    payload = serialization.to_bytes(jax.device_get(tree))
    header = dict(meta or {})
    header["sha256"] = hashlib.sha256(payload).hexdigest()
    header["payload_bytes"] = len(payload)
    head = json.dumps(header).encode()
    atomic_write(Path(path), MAGIC + pystruct.pack("<Q", len(head)) + head + payload)
    return Path(path)


def read_meta(path: str | Path) -> tuple[dict, bytes]:
    """Header and verified payload of a checkpoint file; raises CheckpointError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 8:
        raise CheckpointError(f"{path} is not an angle_jax checkpoint (bad header)")
    (n,) = pystruct.unpack("<Q", raw[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(raw[start:start + n])
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} has a corrupt header") from None
    payload = raw[start + n:]
    if len(payload) != header.get("payload_bytes") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"{path} is truncated or corrupt (checksum mismatch)")
    return header, payload


def restore(path: str | Path, target: Any) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of `target`; returns (tree, meta)."""
    header, payload = read_meta(path)
    try:
        tree = serialization.from_bytes(target, payload)
    except Exception as e:  # msgpack/flax raise several types for a structure mismatch
        raise CheckpointError(f"{path} does not match this run's state: {e}") from None
    for want, got in zip(jax.tree.leaves(target), jax.tree.leaves(tree)):
        if np.shape(want) != np.shape(got):
            raise CheckpointError(f"{path} does not match this run's state (shape {np.shape(got)} vs {np.shape(want)})")
    return tree, header


class CheckpointManager:
    """Numbered checkpoints in one folder: keep the newest `keep`, plus a `best` file."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt_{step:012d}.ckpt"

    def all_steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        steps = [int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return sorted(steps)

    def save(self, step: int, tree: Any, meta: dict | None = None) -> Path:
        path = save(self.path_for(step), tree, {**(meta or {}), "step": step})
        for old in self.all_steps()[:-self.keep]:
            self.path_for(old).unlink(missing_ok=True)
        return path

    def save_best(self, tree: Any, meta: dict) -> Path:
        return save(self.directory / "best.ckpt", tree, meta)

    def restore_latest(self, target: Any, warn=print) -> tuple[Any, dict] | None:
        """Newest checkpoint that reads back; corrupt ones are reported and skipped."""
        for step in reversed(self.all_steps()):
            try:
                return restore(self.path_for(step), target)
            except CheckpointError as e:
                warn(f"warning: {e}; trying the previous checkpoint")
        return None
