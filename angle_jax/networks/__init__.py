"""Plain flax networks: MLPs, actors and critics, Q-networks with their torsos and heads, CNNs, memory cores."""
from angle_jax.networks.cnn import MinAtarTorso, NatureCNN, scale_frames
from angle_jax.networks.heads import (CategoricalHead, DenseStack, DuelingHead, NoisyDense, QHead, QNetwork,
                                      dueling_combine, resolve_torso)
from angle_jax.networks.initializers import orthogonal
from angle_jax.networks.inverse_dynamics import InverseDynamics, inverse_dynamics_loss, sequence_pairs
from angle_jax.networks.mlp import ACTIVATIONS, MLP, DeterministicActor, QEnsemble, activation, flatten_obs
from angle_jax.networks.policies import (ActorCritic, ActorCriticHead, Critic, ImageTorso, MLPTorso, SquashedGaussianActor, make_torso,
                                         policy_distribution)

from angle_jax.networks.recurrent import (CORES, MemoryCore, RecurrentNetwork, burn_in, initial_core, make_encoder,
                                           reset_core, unroll)

__all__ = ["ACTIVATIONS", "ActorCritic", "ActorCriticHead", "CORES", "MemoryCore", "RecurrentNetwork", "burn_in",
           "initial_core", "make_encoder", "reset_core", "unroll", "CategoricalHead", "Critic", "DenseStack", "DeterministicActor", "DuelingHead",
           "ImageTorso", "InverseDynamics", "MLP", "MLPTorso", "MinAtarTorso", "NatureCNN", "NoisyDense", "QEnsemble", "QHead",
           "QNetwork", "SquashedGaussianActor", "activation", "dueling_combine", "flatten_obs", "inverse_dynamics_loss", "make_torso",
           "orthogonal", "policy_distribution", "resolve_torso", "scale_frames", "sequence_pairs"]
