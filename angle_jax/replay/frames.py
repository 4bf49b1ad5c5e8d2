"""Frame-deduplicated replay for stacked-frame observations (Atari `[4, 84, 84]` uint8).

A stack of K frames shares K-1 frames with its neighbours, so storing `obs`
and `next_obs` stacks costs 2K frames per transition. Here each env's stream
of frames is stored once, time-major like `replay.buffer`:

- row `t` keeps the newest frame of `next_obs_t` (its "successor frame"), so
  `next_obs_t` is the successor frames of rows t-K+1..t, exact also on a
  step that ended an episode (the true final observation);
- where `obs_t` does not continue `next_obs_{t-1}` (an episode or a life
  started), its newest frame goes to a small per-env side ring ("lead frame")
  with its kind: a restart (the stack is that frame repeated, as envpool
  builds a fresh game) or a shift (the previous stack moved on by one frame,
  as envpool builds the first stack after a lost life).

`obs_t` and `next_obs_t` are rebuilt at sample time by walking back through
the stream until K frames are found, stopping at a restart and repeating its
frame. Boundaries are found by comparing each `obs` with the previous
`next_obs`, so the rebuilt stacks equal what the env produced whatever its
reset rule was, as long as it is one of those two.

The side ring holds `ceil(lead_fraction * capacity)` frames per env (default
1 per 20 rows). If episodes or lives are shorter than that on average, the
oldest lead frames are overwritten; a row whose lead frame is gone is rebuilt
with the nearest older frame repeated instead (an approximation confined to
the oldest rows of the buffer).

Bytes per stored transition with 84x84 frames: 7,056 (frame) + 15 (action,
reward, flags, lead slot) + 7,060 / 20 (side ring) ~= 7.4 KB, versus 56 KB for
`obs` + `next_obs` stacks.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.types import NStepBatch, Transition
from angle_jax.replay.buffer import ReplayBuffer
from angle_jax.replay.nstep import window_mask


@struct.dataclass
class FrameReplayState:
    frames: jax.Array        # [C, N, H, W] newest frame of each transition's next_obs
    action: jax.Array        # [C, N, ...]
    reward: jax.Array        # [C, N] float32
    terminated: jax.Array    # [C, N] bool
    truncated: jax.Array     # [C, N] bool
    lead_slot: jax.Array     # [C, N] int32: side slot of obs_t's newest frame, -1 if obs_t continues
    lead_restart: jax.Array  # [C, N] bool: obs_t is its lead frame repeated (a fresh episode)
    side: jax.Array          # [S, N, H, W] lead frames
    side_row: jax.Array      # [S, N] int32: absolute row that owns the slot (detects overwritten slots)
    side_count: jax.Array    # [N] int32: lead frames written per env
    last: jax.Array          # [N, K, H, W] the previous next_obs, to detect boundaries
    pos: jax.Array           # int32: next row to write
    size: jax.Array          # int32: rows written, at most C
    added: jax.Array         # int32: rows ever written

    shared_fields = ("pos", "size", "added")


def lead_slots_for(capacity: int, lead_fraction: float) -> int:
    return max(4, math.ceil(capacity * lead_fraction))


def bytes_per_transition(state: FrameReplayState) -> float:
    """Device bytes of the whole store divided by the transitions it holds when full."""
    capacity, num_envs = state.reward.shape
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return total / (capacity * num_envs)


def _row_age(state: FrameReplayState, rows: jax.Array) -> jax.Array:
    """Rows written after `rows` (0 = newest)."""
    return (state.pos - 1 - rows) % state.reward.shape[0]


def _history(state: FrameReplayState, rows: jax.Array) -> jax.Array:
    """How many older rows of the same env are still stored before `rows`."""
    capacity = state.reward.shape[0]
    oldest = jnp.where(state.size >= capacity, state.pos, 0)
    return (rows - oldest) % capacity


def rebuild_stacks(state: FrameReplayState, rows: jax.Array, envs: jax.Array, successor: bool) -> jax.Array:
    """The K-frame stacks `next_obs` (`successor`) or `obs` of the transitions at `(rows, envs)`.

    Candidates, newest first: succ(t), lead(t), succ(t-1), lead(t-1), ...; `obs`
    skips succ(t). The stack is the first K present candidates, walking back no
    further than a restart lead (its frame is repeated to fill the stack).
    """
    capacity, num_envs = state.reward.shape
    k = state.last.shape[1]
    depth = jnp.arange(k + 1)
    r = (rows[:, None] - depth[None, :]) % capacity                       # [B, K+1]
    e = envs[:, None]
    valid = depth[None, :] <= _history(state, rows)[:, None]
    succ = state.frames[r, e]                                              # [B, K+1, H, W]
    slot = state.lead_slot[r, e]
    absolute = state.added - 1 - _row_age(state, r)
    has_lead = slot >= 0
    safe_slot = jnp.maximum(slot, 0)
    lead_ok = has_lead & (state.side_row[safe_slot, e] == absolute)
    lead = state.side[safe_slot, e]
    restart = state.lead_restart[r, e]

    cand = jnp.stack([succ, lead], axis=2).reshape(rows.shape[0], 2 * (k + 1), *succ.shape[2:])
    present = jnp.stack([valid, valid & lead_ok], axis=2).reshape(rows.shape[0], -1)
    stop = jnp.stack([~valid, ~valid | (has_lead & (restart | ~lead_ok))], axis=2).reshape(rows.shape[0], -1)
    if not successor:
        cand, present, stop = cand[:, 1:], present[:, 1:], stop[:, 1:]
    blocked = (jnp.cumsum(stop.astype(jnp.int32), axis=1) - stop.astype(jnp.int32)) > 0
    eff = present & ~blocked
    rank = jnp.cumsum(eff.astype(jnp.int32), axis=1) - 1
    count = rank[:, -1] + 1
    picks = []
    for j in range(k):  # j = 0 is the newest frame
        want = jnp.where(count > j, j, jnp.maximum(count - 1, 0))
        idx = jnp.argmax(eff & (rank == want[:, None]), axis=1)
        picks.append(jnp.take_along_axis(cand, idx[:, None, None, None], axis=1)[:, 0])
    return jnp.stack(picks[::-1], axis=1)


def frame_replay(capacity: int, batch_size: int, n_step: int = 1, lead_fraction: float = 0.05,
                 min_size: int = 1) -> ReplayBuffer:
    """Uniform replay of stacked-frame Transitions storing each frame once; samples `NStepBatch`es.

    `add` takes the loop's `Transition` with `obs`/`next_obs` of shape `[N, K, H, W]`.
    Sampling draws a row and an env uniformly (leaving out the K oldest rows once the
    store has wrapped, whose frame history is gone) and cuts n-step windows like
    `replay.nstep`. `capacity` is rows per env.
    """
    if n_step < 1:
        raise ValueError(f"n_step must be >= 1, got {n_step}")
    if capacity < 8 + n_step:
        raise ValueError(f"capacity ({capacity}) must be at least n_step + 8 rows per env")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    slots = lead_slots_for(capacity, lead_fraction)

    def init(example: Transition) -> FrameReplayState:
        obs = jnp.asarray(example.obs)
        if obs.ndim != 4:
            raise ValueError(f"frame replay needs obs stacks [num_envs, K, H, W], got shape {obs.shape}")
        n, k, h, w = obs.shape
        zeros = lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype)
        i32 = jnp.zeros((), jnp.int32)
        return FrameReplayState(
            frames=jnp.zeros((capacity, n, h, w), obs.dtype),
            action=zeros(example.action),
            reward=jnp.zeros((capacity, n), jnp.float32),
            terminated=jnp.zeros((capacity, n), jnp.bool_),
            truncated=jnp.zeros((capacity, n), jnp.bool_),
            lead_slot=jnp.full((capacity, n), -1, jnp.int32),
            lead_restart=jnp.zeros((capacity, n), jnp.bool_),
            side=jnp.zeros((slots, n, h, w), obs.dtype),
            side_row=jnp.full((slots, n), -1, jnp.int32),
            side_count=jnp.zeros((n,), jnp.int32),
            last=jnp.zeros((n, k, h, w), obs.dtype),
            pos=i32, size=i32, added=i32,
        )

    def add(state: FrameReplayState, item: Transition) -> FrameReplayState:
        obs, nxt = item.obs, item.next_obs
        n = obs.shape[0]
        env = jnp.arange(n)
        started = state.added > 0
        same = jnp.all(obs == state.last, axis=(1, 2, 3)) & started
        shifted = jnp.all(obs[:, :-1] == state.last[:, 1:], axis=(1, 2, 3)) & started
        has_lead = ~same
        restart = has_lead & ~shifted
        slot = state.side_count % slots
        write = has_lead[:, None, None]
        side = state.side.at[slot, env].set(jnp.where(write, obs[:, -1], state.side[slot, env]))
        side_row = state.side_row.at[slot, env].set(jnp.where(has_lead, state.added, state.side_row[slot, env]))
        put = lambda store, x: jax.lax.dynamic_update_index_in_dim(store, x, state.pos, 0)
        return state.replace(
            frames=put(state.frames, nxt[:, -1]),
            action=put(state.action, item.action.astype(state.action.dtype)),
            reward=put(state.reward, item.reward.astype(jnp.float32)),
            terminated=put(state.terminated, item.terminated.astype(jnp.bool_)),
            truncated=put(state.truncated, item.truncated.astype(jnp.bool_)),
            lead_slot=put(state.lead_slot, jnp.where(has_lead, slot, -1).astype(jnp.int32)),
            lead_restart=put(state.lead_restart, restart),
            side=side,
            side_row=side_row,
            side_count=state.side_count + has_lead.astype(jnp.int32),
            last=nxt,
            pos=(state.pos + 1) % capacity,
            size=jnp.minimum(state.size + 1, capacity),
            added=state.added + 1,
        )

    def sample_rows(state: FrameReplayState, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        num_envs = state.reward.shape[1]
        k = state.last.shape[1]
        wrapped = state.size >= capacity
        start = jnp.where(wrapped, state.pos + k, 0)
        count = jnp.where(wrapped, capacity - k, jnp.maximum(state.size, 1))
        k_row, k_env = jax.random.split(key)
        rows = (start + jax.random.randint(k_row, (batch_size,), 0, count)) % capacity
        envs = jax.random.randint(k_env, (batch_size,), 0, num_envs)
        return rows, envs

    def gather(state: FrameReplayState, rows: jax.Array, envs: jax.Array) -> NStepBatch:
        num_envs = state.reward.shape[1]
        age = _row_age(state, rows)
        window = (rows[:, None] + jnp.arange(n_step)[None, :]) % capacity
        cols = envs[:, None]
        term = state.terminated[window, cols]
        done = term | state.truncated[window, cols]
        used = window_mask(age, done)
        last = jnp.sum(used.astype(jnp.int32), axis=1) - 1
        b = jnp.arange(rows.shape[0])
        mask = used.astype(jnp.float32)
        return NStepBatch(
            obs=rebuild_stacks(state, rows, envs, successor=False),
            action=state.action[rows, envs],
            rewards=state.reward[window, cols] * mask,
            mask=mask,
            terminated=term[b, last],
            next_obs=rebuild_stacks(state, window[b, last], envs, successor=True),
            index=(rows * num_envs + envs).astype(jnp.int32),
            weights=jnp.ones(rows.shape, jnp.float32),
        )

    def sample(state: FrameReplayState, key: jax.Array) -> NStepBatch:
        rows, envs = sample_rows(state, key)
        return gather(state, rows, envs)

    def can_sample(state: FrameReplayState) -> jax.Array:
        return state.size >= max(1, int(min_size))

    return ReplayBuffer(init, add, sample, can_sample, capacity, batch_size)


def frame_replay_for(obs_shape: tuple[int, ...], obs_dtype: Any) -> bool:
    """Whether observations look like stacked uint8 frames `[K, H, W]` that this replay dedups."""
    return len(obs_shape) == 3 and jnp.dtype(obs_dtype) == jnp.uint8 and obs_shape[0] < min(obs_shape[1:])
