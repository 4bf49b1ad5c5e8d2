"""Episodic memories: fixed-size, jittable stores of embeddings searched by exact k-nearest neighbours.

`knn` is the one neighbour search (one matmul and `lax.top_k`); `dnd` is NEC's differentiable
neural dictionary (per-action keys and values, kernel-weighted lookup, tabular / LRU writes).
Imports only `angle_jax.core`.
"""
from angle_jax.episodic import dnd
from angle_jax.episodic.dnd import DNDState, Neighbours
from angle_jax.episodic.knn import knn, squared_distances

__all__ = ["DNDState", "Neighbours", "dnd", "knn", "squared_distances"]
