"""Episodic memories: fixed-size, jittable stores of embeddings searched by exact k-nearest neighbours.

`knn` is the one neighbour search (one matmul and `lax.top_k`). It imports only `angle_jax.core`.
"""
from angle_jax.episodic.knn import knn, squared_distances

__all__ = ["knn", "squared_distances"]
