"""Bandit meta-controllers: which member of a policy family each env acts with next.

`sliding_window_ucb` is Agent57's (Badia et al. 2020): one independent bandit per env, scored
on the returns of the last `window` episodes. Imports only `angle_jax.core`, jax, flax and chex.
"""
from angle_jax.bandits.sliding_window_ucb import BanditState, init, select, ucb_scores, update, validate

__all__ = ["BanditState", "init", "select", "ucb_scores", "update", "validate"]
