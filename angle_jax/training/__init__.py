"""The compiled collect-learn loops (`off_policy`, `on_policy`) and, above the config layer, the
Trainer that runs them from a run config (`build`, `programs`, `checkpointing`, `trainer`)."""
from angle_jax.training.off_policy import OffPolicyLoop
from angle_jax.training.on_policy import OnPolicyLoop

__all__ = ["OffPolicyLoop", "OnPolicyLoop"]
