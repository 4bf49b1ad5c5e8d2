"""A meta-gradient on a hyperparameter of a user-written loss: TD3+BC's α (examples/td3_bc.py).

α weighs the Q term of `bc_actor_loss` against behaviour cloning. It is a traced
hyperparameter in the agent state, so `make_meta_gradient` can tune it online (Xu et al.
2018): every `interval` updates, one inner update on half a replay batch is differentiated
with respect to α, and α takes a meta step on a validation objective measured on the other
half. The objective here is the value the updated actor reaches under the (frozen) updated
critic, `-mean Q_1(s, π'(s))`: α reaches it only through the actor parameters its update made.

    python examples/meta_gradient_bc.py     # ~20k env steps on Pendulum-v1, α starting at 2.5
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # td3_bc.py, beside this file

import td3_bc  # noqa: E402

from angle_jax import make_meta_gradient, td3  # noqa: E402


def value_objective(actor, critic):
    """J(θ') = -mean Q_1(s, π'(s)) on the validation half, the critic held constant."""
    def objective(state, batch, key):
        del key
        critic_params = jax.lax.stop_gradient(state.critic_params)
        pi = actor.apply(state.actor_params, batch.obs)
        return td3.actor_loss(td3.first_member_q(critic, critic_params, batch.obs, pi))

    return objective


def train(steps: int = 20_000, seed: int = 0, hidden=(64, 64), interval: int = 5, meta_lr: float = 0.05):
    """TD3+BC with α meta-learned from 2.5; returns (carry, logs, eval returns)."""
    def meta(algo, config, spec):
        actor, critic = td3.networks(config, spec)
        # an odd interval: with policy_delay 2, the inner update alternates between steps with and
        # without an actor step (only the former carries α's meta-gradient)
        return make_meta_gradient(algo, value_objective(actor, critic), params=("alpha",), meta_lr=meta_lr,
                                  bounds={"alpha": (0.5, 100.0)}, interval=interval)

    return td3_bc.train(steps, seed, hidden, alpha=2.5, meta=meta)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    carry, logs, returns = train(args.steps, args.seed)
    print(f"alpha 2.5 -> {float(carry.agent.hparams.alpha):.2f}  meta objective {float(logs['meta/objective']):.2f}  "
          f"eval return {float(returns.mean()):.1f}")
