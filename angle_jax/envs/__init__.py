from angle_jax.envs.base import Box, Discrete, Env, EnvSpec, TimeStep, random_actions

__all__ = ["Box", "Discrete", "Env", "EnvSpec", "TimeStep", "random_actions"]
