"""The examples run, on small budgets: a new algorithm from the exported pieces (TD3+BC), a
meta-gradient on a hyperparameter of its loss, and TD3's update written out in plain flax/optax
against the library's. (The custom env example runs in test_datafeed.py.)"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_td3_bc_loss_by_hand_and_a_short_run():
    td3_bc = load("td3_bc")
    q = jnp.array([2.0, -4.0])
    pi, a = jnp.array([[0.5], [0.0]]), jnp.array([[0.0], [1.0]])
    # λ = 3 / mean|q| = 1; -λ mean q + mean (π - a)² = 1 + (0.25 + 1) / 2
    np.testing.assert_allclose(td3_bc.bc_actor_loss(q, pi, a, jnp.float32(3.0)), 1.0 + 0.625, rtol=1e-6)
    # α stays differentiable (the meta-gradient example needs it): d/dα = -mean q / mean|q|
    np.testing.assert_allclose(jax.grad(lambda al: td3_bc.bc_actor_loss(q, pi, a, al))(3.0), 1.0 / 3.0, rtol=1e-6)
    carry, logs, returns = td3_bc.train(steps=2_000, hidden=(16, 16))
    assert int(carry.iteration) == 2_000 and int(carry.agent.step) == 1_500
    assert np.isfinite(float(logs["critic_loss"])) and np.isfinite(float(logs["actor_loss"]))
    assert returns.shape == (10,) and np.all(np.isfinite(np.asarray(returns)))


def test_meta_gradient_moves_the_bc_weight_of_a_user_written_loss():
    example = load("meta_gradient_bc")
    carry, logs, _ = example.train(steps=2_000, hidden=(16, 16), meta_lr=0.1)
    alpha = float(carry.agent.hparams.alpha)
    # the validation objective is the updated actor's value: more weight on Q (a larger α) serves it
    assert 2.5 < alpha <= 100.0
    assert np.isfinite(float(logs["meta/objective"])) and float(logs["meta/skipped"]) == 0.0


def test_td3_update_written_out_in_flax_and_optax_equals_the_library():
    assert load("td3_by_hand").compare(updates=6) <= 1e-6
