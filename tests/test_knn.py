"""Exact k-nearest neighbours: against a NumPy brute force, with fewer entries than k, masks and ties."""
from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from angle_jax.episodic.knn import knn, squared_distances


def reference_knn(queries, keys, k, entry):
    """Brute force in float64: stable sort of the distances, unused slots at +inf after the entries."""
    d2 = ((queries[:, None, :].astype(np.float64) - keys[None, :, :].astype(np.float64)) ** 2).sum(-1)
    d2 = np.where(entry[None, :], d2, np.inf)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, order, axis=1), order, entry[order]


class KnnTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_brute_force_on_random_keys(self):
        rng = np.random.default_rng(0)
        queries = rng.normal(size=(5, 6)).astype(np.float32)
        keys = rng.normal(size=(40, 6)).astype(np.float32)
        for size in (40, 23):
            d2, idx, valid = self.variant(lambda q, c, s: knn(q, c, 7, size=s))(queries, keys, size)
            ref_d2, ref_idx, ref_valid = reference_knn(queries, keys, 7, np.arange(40) < size)
            np.testing.assert_array_equal(idx, ref_idx)
            np.testing.assert_array_equal(valid, ref_valid)
            np.testing.assert_allclose(d2, ref_d2, rtol=1e-5, atol=1e-5)
            assert idx.dtype == np.int32 and d2.dtype == np.float32 and valid.dtype == np.bool_

    def test_squared_distances_match_the_difference_form_and_are_never_negative(self):
        rng = np.random.default_rng(1)
        q = rng.normal(size=(3, 4)).astype(np.float32)
        keys = np.concatenate([q, rng.normal(size=(5, 4)).astype(np.float32)])  # exact copies: distance 0
        d2 = np.asarray(squared_distances(q, keys))
        ref = ((q[:, None] - keys[None]) ** 2).sum(-1)
        np.testing.assert_allclose(d2, ref, atol=1e-5)
        assert (d2 >= 0).all()

    @chex.variants(with_jit=True, without_jit=True)
    def test_fewer_entries_than_k_leave_the_last_places_invalid_at_inf(self):
        keys = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
        query = np.array([[2.2, 2.2]], np.float32)
        d2, idx, valid = self.variant(lambda q, c, s: knn(q, c, 5, size=s))(query, keys, 3)
        np.testing.assert_array_equal(idx, [[2, 1, 0, 3, 4]])   # entries nearest first, then free slots in order
        np.testing.assert_array_equal(valid, [[True, True, True, False, False]])
        assert np.isinf(np.asarray(d2)[0, 3:]).all() and np.isfinite(np.asarray(d2)[0, :3]).all()
        # no entries at all
        d2, idx, valid = self.variant(lambda q, c, s: knn(q, c, 2, size=s))(query, keys, 0)
        np.testing.assert_array_equal(idx, [[0, 1]])
        assert not np.asarray(valid).any() and np.isinf(np.asarray(d2)).all()

    @chex.variants(with_jit=True, without_jit=True)
    def test_explicit_mask_and_size_combine(self):
        rng = np.random.default_rng(2)
        queries = rng.normal(size=(4, 3)).astype(np.float32)
        keys = rng.normal(size=(12, 3)).astype(np.float32)
        mask = rng.random(12) < 0.5
        d2, idx, valid = self.variant(lambda q, c, m: knn(q, c, 4, size=10, mask=m))(queries, keys, mask)
        ref_d2, ref_idx, ref_valid = reference_knn(queries, keys, 4, mask & (np.arange(12) < 10))
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(valid, ref_valid)
        np.testing.assert_allclose(d2, ref_d2, rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ties_go_to_the_lower_index(self):
        # integer coordinates: every distance is exact in float32, so equal distances are equal bits
        keys = np.array([[3, 0], [1, 0], [0, 1], [-1, 0], [1, 0], [0, -1], [5, 5]], np.float32)
        query = np.zeros((1, 2), np.float32)
        d2, idx, valid = self.variant(lambda q, c: knn(q, c, 6))(query, keys)
        # slots 1..5 all at distance 1 (1 and 4 even the same key), in index order; then slot 0 at 9
        np.testing.assert_array_equal(idx, [[1, 2, 3, 4, 5, 0]])
        np.testing.assert_array_equal(d2, [[1, 1, 1, 1, 1, 9]])
        assert np.asarray(valid).all()

    def test_k_outside_the_slots_is_refused(self):
        keys = np.zeros((4, 2), np.float32)
        with pytest.raises(ValueError, match="k must be in"):
            knn(np.zeros((1, 2), np.float32), keys, 5)
        with pytest.raises(ValueError, match="k must be in"):
            knn(np.zeros((1, 2), np.float32), keys, 0)

    def test_vmaps_over_independent_key_sets(self):
        rng = np.random.default_rng(3)
        queries = rng.normal(size=(3, 2, 4)).astype(np.float32)
        keys = rng.normal(size=(3, 9, 4)).astype(np.float32)
        sizes = np.array([9, 4, 1])
        d2, idx, valid = jax.vmap(lambda q, c, s: knn(q, c, 3, size=s))(queries, keys, sizes)
        for i in range(3):
            ref_d2, ref_idx, ref_valid = reference_knn(queries[i], keys[i], 3, np.arange(9) < sizes[i])
            np.testing.assert_array_equal(idx[i], ref_idx)
            np.testing.assert_array_equal(valid[i], ref_valid)
