"""The algorithms (each module: its named losses and targets, `Config`, `make`, and `SPEC`) and
the pieces several share (`actor_critic`, `policy_gradient`, `minibatch`)."""
from angle_jax.algos import a2c, actor_critic, ddpg, dqn, minibatch, policy_gradient, ppo, rainbow, rnd, sac, td3

__all__ = ["a2c", "actor_critic", "ddpg", "dqn", "minibatch", "policy_gradient", "ppo", "rainbow", "rnd", "sac", "td3"]
