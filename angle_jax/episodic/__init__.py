"""Episodic memories: fixed-size, jittable stores of embeddings searched by exact k-nearest neighbours.

`knn` is the one neighbour search both memories use (one matmul and `lax.top_k`); `dnd` is NEC's
differentiable neural dictionary (per-action keys and values, kernel-weighted lookup, tabular /
LRU writes); `novelty` is Never Give Up's per-env episodic memory and reward, with the lifelong
multiplier. Every function is pure over a `flax.struct.dataclass` of fixed-size arrays. Imports
only `angle_jax.core`.
"""
from angle_jax.episodic import dnd, novelty
from angle_jax.episodic.dnd import DNDState, Neighbours
from angle_jax.episodic.knn import knn, squared_distances
from angle_jax.episodic.novelty import EpisodicMemory, episodic_reward, intrinsic_reward, lifelong_multiplier

__all__ = ["DNDState", "EpisodicMemory", "Neighbours", "dnd", "episodic_reward", "intrinsic_reward", "knn",
           "lifelong_multiplier", "novelty", "squared_distances"]
