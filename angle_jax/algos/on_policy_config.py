"""Settings every on-policy actor-critic here has (PPO, A2C), and their checks.

Each algorithm's `Config` extends `OnPolicyConfig` with its own fields and
overrides only the defaults that differ; the defaults here are PPO's.
"""
from __future__ import annotations

import dataclasses

from angle_jax.networks.mlp import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig:
    """Rollout, network and optimizer settings. Sizes and flags are static; the floats
    are copied into the algorithm's traced hyperparameters."""

    rollout_length: int = 128
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    torso: str = "auto"
    shared_torso: bool = False
    log_std_init: float = 0.0
    anneal_lr: bool = True
    normalize_advantages: bool = True
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    axis_name: str | None = None

    def validate(self, num_envs: int | None = None) -> None:
        if self.rollout_length < 1:
            raise ValueError(f"rollout_length must be >= 1, got {self.rollout_length}")
        if not self.hidden or any(w <= 0 for w in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.torso not in ("auto", "mlp", "cnn"):
            raise ValueError(f"torso must be 'auto', 'mlp' or 'cnn' (Nature CNN for [4, 84, 84] frames, MinAtar CNN for [10, 10, C] grids), got {self.torso!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if num_envs is not None and num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
