"""Online RL as a service: a policy server, a durable decision log, a joiner and an online learner.

    python -m angle_jax.serve --checkpoint RUN_DIR          # serve a run's policy over HTTP
    python -m angle_jax.serve.learn --run RUN_DIR           # learn online from the decision log

`Client` talks to the server; `SQLiteLog` / `DecisionLog` are the decision log and its interface;
`Joiner` turns logged decisions and feedback into transitions. Serving sits on top of the library:
nothing below imports it. Names load on first use, so `import angle_jax.serve` starts no JAX.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Client": "angle_jax.serve.client",
    "ServeError": "angle_jax.serve.client",
    "DecisionLog": "angle_jax.serve.log",
    "SQLiteLog": "angle_jax.serve.log",
    "Decision": "angle_jax.serve.log",
    "Feedback": "angle_jax.serve.log",
    "Joiner": "angle_jax.serve.joiner",
    "JoinedTransition": "angle_jax.serve.joiner",
    "load_policy": "angle_jax.serve.policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'angle_jax.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
