"""Rainbow (Hessel et al. 2018): DQN with every component on.

The same machinery as `angle_jax.algos.dqn`; only the defaults differ.

Taken from the paper (Table 1): double + dueling + 3-step returns +
prioritised replay (α 0.5, β 0.4 -> 1) + C51 (51 atoms on [-10, 10]) + noisy
nets (σ0 0.5) with ε-greedy off, Adam ε 1.5e-4, γ 0.99, hard target copies.

Scaled for small envs (MinAtar, classic control), where the paper's Atari
numbers would waste most of a short budget:
- learning_rate 1e-4 (paper 6.25e-5): runs are 10-100x shorter than 200M frames;
- target_update_interval 1000 gradient updates (paper 8K agent steps = 2K updates);
- per_beta_steps 500K env steps (paper: annealed over the whole run; set it to
  the run's total_steps);
- hidden (128,) per stream (paper 512): MinAtar's 10x10 grids need far less;
- max_grad_norm 10 (paper: none), a cheap guard for small-batch C51.
"""
from __future__ import annotations

import dataclasses

from angle_jax.algos import dqn
from angle_jax.core.types import AlgoSpec


@dataclasses.dataclass(frozen=True)
class Config(dqn.Config):
    """Rainbow defaults; every field means what it means in `dqn.Config`, and only the
    defaults that differ from DQN's are set here."""

    hidden: tuple[int, ...] = (128,)
    double: bool = True
    dueling: bool = True
    n_step: int = 3
    prioritized: bool = True
    distributional: bool = True
    noisy: bool = True
    target_update_interval: int = 1000
    adam_eps: float = 1.5e-4
    per_alpha: float = 0.5
    per_beta_steps: int = 500_000
    learning_rate: float = 1e-4
    epsilon_start: float = 0.0
    epsilon_end: float = 0.0
    epsilon_decay_steps: int = 0


SPEC = AlgoSpec(name="rainbow", loop="off_policy", action_kind="discrete", Config=Config, make=dqn.make,
                presets={"Breakout-MinAtar": "rainbow_minatar.yaml"})
