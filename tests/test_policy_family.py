"""The NGU / Agent57 policy family: the β and γ schedules against hand-computed values, exact
endpoints, the one-hot, the two-head Q `h(h⁻¹(Q_e) + β h⁻¹(Q_i))`, and bad families."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.algos import policy_family as pf
from angle_jax.core.returns import value_rescale

SIGMOID_10 = 1.0 / (1.0 + math.exp(-10.0))


class PolicyFamilyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_betas_for_ngu_32_policies(self):
        b = np.asarray(self.variant(pf.betas, static_argnums=0)(32, 0.3))
        assert b.shape == (32,) and b.dtype == np.float32
        assert b[0] == 0.0 and b[31] == np.float32(0.3)  # both ends exact
        # β_j = 0.3 σ(10 (2j − 30) / 30): j = 15 is the sigmoid's centre, j = 16 is σ(2/3)
        expected = {1: 2.652575100568153e-05, 8: 0.0027947878035200057, 15: 0.15,
                    16: 0.19822691062974515, 23: 0.2985585741338521, 30: 0.29998638063938926}
        for j, value in expected.items():
            np.testing.assert_allclose(b[j], value, rtol=1e-5, err_msg=f"beta_{j}")
        np.testing.assert_allclose(b[30], 0.3 * SIGMOID_10, rtol=1e-6)
        assert np.all(np.diff(b) > 0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_betas_for_small_families(self):
        betas = self.variant(pf.betas, static_argnums=0)
        np.testing.assert_array_equal(betas(1, 0.3), [0.0])
        np.testing.assert_array_equal(betas(2, 0.3), np.float32([0.0, 0.3]))
        np.testing.assert_allclose(betas(3, 0.3), [0.0, 0.3 * SIGMOID_10, 0.3], rtol=1e-6)  # σ(10 (2 − 1) / 1)
        np.testing.assert_allclose(betas(4, 0.5), [0.0, 0.25, 0.5 * SIGMOID_10, 0.5], rtol=1e-6)  # σ(0), σ(10)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gammas_for_ngu_32_policies(self):
        g = np.asarray(self.variant(pf.gammas, static_argnums=0)(32, 0.997, 0.99))
        assert g.shape == (32,) and g.dtype == np.float32
        assert g[0] == np.float32(0.997) and g[31] == np.float32(0.99)  # the β = 0 member gets γ_max
        expected = {1: 0.9968811943592945, 8: 0.9959068495780996, 16: 0.9944153732078987,
                    24: 0.9923804274965847, 30: 0.9903809331340013}
        for j, value in expected.items():
            np.testing.assert_allclose(g[j], value, rtol=2e-7, err_msg=f"gamma_{j}")
        # 1 − γ_j is geometric in j: log(1 − γ) steps by log(0.01 / 0.003) / 31
        np.testing.assert_allclose(np.diff(np.log1p(-g.astype(np.float64))), math.log(0.01 / 0.003) / 31, rtol=1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gammas_for_small_families(self):
        gammas = self.variant(pf.gammas, static_argnums=0)
        np.testing.assert_array_equal(gammas(1, 0.997, 0.99), np.float32([0.997]))
        np.testing.assert_array_equal(gammas(2, 0.997, 0.99), np.float32([0.997, 0.99]))
        # the middle of three: 1 − √((1 − γ_max)(1 − γ_min)), the geometric mean of the horizons' gaps
        np.testing.assert_allclose(gammas(3, 0.997, 0.99), [0.997, 1.0 - math.sqrt(0.003 * 0.01), 0.99], rtol=1e-7)
        np.testing.assert_allclose(gammas(5, 0.9, 0.5), [0.9, 1 - 0.1 ** 0.75 * 0.5 ** 0.25, 1 - math.sqrt(0.05),
                                                          1 - 0.1 ** 0.25 * 0.5 ** 0.75, 0.5], rtol=1e-6)

    def test_endpoints_are_exact_over_a_grid_of_settings(self):
        # exp(log(1 − γ)) need not give γ back in float32: the ends are set, not computed
        for n in (2, 3, 7, 32, 33):
            for gamma_max in np.linspace(0.9, 0.99999, 20).astype(np.float32):
                for gamma_min in np.float32([0.3, 0.5, 0.9, 0.95, 0.99]):
                    g = np.asarray(pf.gammas(n, gamma_max, gamma_min))
                    assert g[0] == gamma_max and g[-1] == gamma_min, (n, gamma_max, gamma_min)
            for beta_max in np.float32([0.01, 0.3, 1.7]):
                b = np.asarray(pf.betas(n, beta_max))
                assert b[0] == 0.0 and b[-1] == beta_max

    def test_schedules_take_traced_hyperparameters(self):
        b = jax.jit(lambda m: pf.betas(8, m))(jnp.float32(0.3))
        g = jax.jit(lambda hi, lo: pf.gammas(8, hi, lo))(jnp.float32(0.997), jnp.float32(0.99))
        np.testing.assert_allclose(b, pf.betas(8, 0.3), rtol=1e-6)  # compiled: may differ in the last bit
        np.testing.assert_allclose(g, pf.gammas(8, 0.997, 0.99), rtol=1e-6)
        assert g[0] == np.float32(0.997) and g[7] == np.float32(0.99) and b[0] == 0.0 and b[7] == np.float32(0.3)

    def test_policy_one_hot(self):
        np.testing.assert_array_equal(pf.policy_one_hot(2, 4), [0.0, 0.0, 1.0, 0.0])
        np.testing.assert_array_equal(pf.policy_one_hot(jnp.array([0, 3]), 4), [[1, 0, 0, 0], [0, 0, 0, 1]])
        assert pf.policy_one_hot(1, 3).dtype == jnp.float32

    @chex.variants(with_jit=True, without_jit=True)
    def test_combined_q_by_hand(self):
        combined = self.variant(pf.combined_q)
        # eps = 0: h(x) = sign(x)(√(|x| + 1) − 1), so h(3) = 1, h(8) = 2, h(−3) = −1, h(15) = 3
        q_e, q_i = jnp.array([1.0, -1.0, 0.0]), jnp.array([2.0, 2.0, 3.0])
        # h(3 + 0.5 · 8) = √8 − 1; h(−3 + 0.5 · 8) = √2 − 1; h(0 + 0.5 · 15) = √8.5 − 1
        np.testing.assert_allclose(combined(q_e, q_i, 0.5, 0.0),
                                   [math.sqrt(8) - 1, math.sqrt(2) - 1, math.sqrt(8.5) - 1], rtol=1e-6)
        # eps = 1e-3: h(3) = 1.003, h(8) = 2.008; h(3 + 0.25 · 8) = h(5) = √6 − 1 + 0.005
        np.testing.assert_allclose(combined(jnp.array([1.003]), jnp.array([2.008]), 0.25, 1e-3),
                                   [math.sqrt(6) - 1 + 0.005], rtol=1e-5)
        # β = 0 is the extrinsic head alone
        q = jnp.array([-2.5, 0.1, 4.0])
        np.testing.assert_allclose(combined(q, jnp.array([9.0, -9.0, 1.0]), 0.0, 1e-3), q, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_combined_q_broadcasts_one_beta_per_row_over_actions(self):
        rng = np.random.default_rng(0)
        q_e = rng.normal(size=(2, 5, 3)).astype(np.float32)
        q_i = rng.normal(size=(2, 5, 3)).astype(np.float32)
        beta = pf.betas(5, 0.3)[None, :].repeat(2, axis=0)  # [batch, policy]: row (b, j) uses β_j
        out = np.asarray(self.variant(pf.combined_q)(q_e, q_i, beta, 1e-3))

        def h_inv(x, eps=1e-3):  # the textbook form, in float64
            return np.sign(x) * (((np.sqrt(1 + 4 * eps * (np.abs(x) + 1 + eps)) - 1) / (2 * eps)) ** 2 - 1)

        def h(x, eps=1e-3):
            return np.sign(x) * (np.sqrt(np.abs(x) + 1) - 1) + eps * x

        b = np.asarray(beta, np.float64)[..., None]
        np.testing.assert_allclose(out, h(h_inv(q_e.astype(np.float64)) + b * h_inv(q_i.astype(np.float64))),
                                   rtol=1e-4, atol=1e-5)
        assert out.shape == (2, 5, 3)

    def test_combined_q_uses_the_core_rescaling(self):
        x_e, x_i = jnp.array([12.0, -40.0]), jnp.array([3.0, 7.0])
        out = pf.combined_q(value_rescale(x_e), value_rescale(x_i), 0.3)
        np.testing.assert_allclose(out, value_rescale(x_e + 0.3 * x_i), rtol=1e-5)

    def test_combined_q_refuses_mismatched_shapes(self):
        with pytest.raises(AssertionError):
            pf.combined_q(jnp.zeros((2, 3)), jnp.zeros((2, 4)), 0.1)
        with pytest.raises(AssertionError):
            pf.combined_q(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((3,)))


def test_check_family_accepts_the_ngu_family():
    pf.check_family(pf.betas(32, 0.3), pf.gammas(32, 0.997, 0.99), 32)
    pf.check_family([0.0], [0.5], 1)


@pytest.mark.parametrize("betas, gammas, n, message", [
    ([0.0, 0.1], [0.9, 0.99, 0.5], 2, "gammas must have shape"),
    ([0.0, 0.1, 0.2], [0.9, 0.99], 2, "betas must have shape"),
    ([[0.0, 0.1]], [0.9, 0.99], 2, "betas must have shape"),
    ([0.0, -0.1], [0.9, 0.99], 2, "betas must be finite and >= 0"),
    ([0.0, float("nan")], [0.9, 0.99], 2, "betas must be finite"),
    ([0.0, 0.1], [0.9, 1.0], 2, r"gammas must be in \(0, 1\)"),
    ([0.0, 0.1], [0.0, 0.9], 2, r"gammas must be in \(0, 1\)"),
    ([0.0, 0.1], [0.9, float("nan")], 2, r"gammas must be in \(0, 1\)"),
    ([], [], 0, "num_policies"),
])
def test_check_family_refuses_bad_families_with_one_line(betas, gammas, n, message):
    with pytest.raises(ValueError, match=message) as info:
        pf.check_family(betas, gammas, n)
    assert "\n" not in str(info.value)


def test_schedules_refuse_an_empty_family():
    with pytest.raises(ValueError, match="num_policies"):
        pf.betas(0, 0.3)
    with pytest.raises(ValueError, match="num_policies"):
        pf.gammas(0, 0.997, 0.99)
