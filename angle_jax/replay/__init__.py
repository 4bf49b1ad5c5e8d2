"""Functional replay over fixed-size device arrays: `init / add / sample / can_sample`."""
from angle_jax.replay.buffer import BufferState, ReplayBuffer, uniform_replay
from angle_jax.replay.frames import frame_replay
from angle_jax.replay.nstep import gather_nstep, nstep_replay
from angle_jax.replay.prioritized import prioritized_replay
from angle_jax.replay.sequence import sequence_priority, sequence_replay

__all__ = ["BufferState", "ReplayBuffer", "frame_replay", "gather_nstep", "nstep_replay", "prioritized_replay",
           "sequence_priority", "sequence_replay", "uniform_replay"]
