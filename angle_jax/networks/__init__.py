from angle_jax.networks.mlp import MLP, DeterministicActor, QEnsemble, activation, flatten_obs

__all__ = ["MLP", "DeterministicActor", "QEnsemble", "activation", "flatten_obs"]
