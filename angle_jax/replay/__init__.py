from angle_jax.replay.buffer import BufferState, ReplayBuffer, uniform_replay

__all__ = ["BufferState", "ReplayBuffer", "uniform_replay"]
