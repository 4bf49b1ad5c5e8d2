"""The typed `meta` section of a run config: meta-gradient and auxiliary-model settings.

    meta:
      kind: meta_gradient          # the only kind so far; implied by any meta-gradient setting
      interval: 10                 # learning iterations between meta steps (default 10)
      params: [gamma, critic_lr]   # fields of the agent's hparams (default: the algorithm's meta_params)
      meta_lr: 1.0e-3
      bounds: {gamma: [0.9, 0.999]}   # others default: see `default_bounds`
      reference_gamma: 0.99        # γ' of the validation objective (default: agent.gamma)
      actor_weight: 0.0            # TD3, DDPG, SAC: weight of the actor term in the objective
      reference_lambda: 0.95       # PPO: λ' of the validation objective (default: agent.gae_lambda)
      policy_loss: clipped         # PPO: the objective's policy loss, clipped or pg
      auxiliary: {hidden: [64, 64], learning_rate: 1.0e-3, risk_reward_below: null}
    auxiliary: [forecast, risk]    # the models (a run-config key beside `meta`); off-policy only

Fields left unset (None) take the defaults above; a meta-gradient is asked for when `kind` or
any meta-gradient setting is given. `validate` checks what needs no algorithm; what does
(hyperparameter names, bounds around their initial values, objective options) is checked by
`angle_jax.meta.build.build_meta_learner`, still before anything compiles.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from angle_jax.meta.auxiliary import AUXILIARY_NAMES

META_KINDS = ("meta_gradient",)
DEFAULT_INTERVAL = 10
DEFAULT_META_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class AuxiliaryConfig:
    """Settings of the auxiliary models (`auxiliary: [forecast, risk]`)."""

    hidden: tuple[int, ...] = (64, 64)
    learning_rate: float = 1e-3
    risk_reward_below: float | None = None

    def validate(self) -> None:
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"meta.auxiliary.hidden must be a list of positive widths, got {list(self.hidden)}")
        _finite("meta.auxiliary.learning_rate", self.learning_rate)
        if self.learning_rate <= 0:
            raise ValueError(f"meta.auxiliary.learning_rate must be positive, got {self.learning_rate}")
        if self.risk_reward_below is not None:
            _finite("meta.auxiliary.risk_reward_below", self.risk_reward_below)


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """The `meta` section (see the module docstring); None means unset."""

    kind: str | None = None
    interval: int | None = None
    params: tuple[str, ...] | None = None
    meta_lr: float | None = None
    bounds: dict = dataclasses.field(default_factory=dict)
    reference_gamma: float | None = None
    actor_weight: float | None = None
    reference_lambda: float | None = None
    policy_loss: str | None = None
    auxiliary: AuxiliaryConfig | None = None

    OBJECTIVE_OPTIONS = ("reference_gamma", "actor_weight", "reference_lambda", "policy_loss")

    @property
    def wants_gradient(self) -> bool:
        """Whether a meta-gradient is asked for (`kind`, or any of its settings, given)."""
        return (self.kind is not None or self.params is not None or self.meta_lr is not None or bool(self.bounds)
                or any(getattr(self, n) is not None for n in self.OBJECTIVE_OPTIONS))

    @property
    def is_set(self) -> bool:
        return self != MetaConfig()

    def objective_options(self) -> dict[str, Any]:
        """The objective options given, by name."""
        return {n: getattr(self, n) for n in self.OBJECTIVE_OPTIONS if getattr(self, n) is not None}

    def resolved_interval(self) -> int:
        return DEFAULT_INTERVAL if self.interval is None else self.interval

    def resolved_meta_lr(self) -> float:
        return DEFAULT_META_LR if self.meta_lr is None else self.meta_lr

    def validate(self, auxiliary: tuple[str, ...] = ()) -> None:
        """Checks that need no algorithm; raises ValueError naming the key."""
        for name in auxiliary:
            if name not in AUXILIARY_NAMES:
                raise ValueError(f"unknown auxiliary model {name!r} (valid: {', '.join(AUXILIARY_NAMES)})")
        if len(set(auxiliary)) != len(auxiliary):
            raise ValueError(f"auxiliary lists a model twice: {list(auxiliary)}")
        if not self.is_set:
            return
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"meta.interval must be a positive integer, got {self.interval!r}")
        if self.auxiliary is not None:
            if not auxiliary:
                raise ValueError("meta.auxiliary options are set but no auxiliary models are listed in `auxiliary`")
            self.auxiliary.validate()
        if not self.wants_gradient:
            if not auxiliary:
                raise ValueError("meta sets only an interval: add meta.kind (e.g. meta_gradient) or list "
                                 "auxiliary models")
            return
        if self.kind is not None and self.kind not in META_KINDS:
            raise ValueError(f"unknown meta.kind {self.kind!r} (valid: {', '.join(META_KINDS)})")
        if self.params is not None:
            if not self.params:
                raise ValueError("meta.params must be a non-empty list of hyperparameter names, got []")
            if len(set(self.params)) != len(self.params):
                raise ValueError(f"meta.params lists a hyperparameter twice: {list(self.params)}")
        if self.meta_lr is not None:
            _finite("meta.meta_lr", self.meta_lr)
            if self.meta_lr <= 0:
                raise ValueError(f"meta.meta_lr must be positive, got {self.meta_lr}")
        for name, b in self.bounds.items():
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                raise ValueError(f"meta.bounds.{name} must be [low, high], got {b!r}")
            low, high = (_number(f"meta.bounds.{name}", v) for v in b)
            if not low < high:
                raise ValueError(f"meta.bounds.{name} must satisfy low < high, got [{low}, {high}]")
        for name in ("reference_gamma", "reference_lambda"):
            v = getattr(self, name)
            if v is not None:
                _finite(f"meta.{name}", v)
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"meta.{name} must be in [0, 1], got {v}")
        if self.actor_weight is not None:
            _finite("meta.actor_weight", self.actor_weight)
            if self.actor_weight < 0:
                raise ValueError(f"meta.actor_weight must be >= 0, got {self.actor_weight}")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    _finite(key, value)
    return float(value)
