"""Frame-deduplicated sequence replay and R2D2 on Atari frames: stacks rebuilt exactly from random frame
streams (restarts, life-loss shifts, wrap-around, side frames running out), memory per stored step, the
Nature encoder over time-major batches, and a tiny R2D2 run on envpool whose replay gives back envpool's obs."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax.algos import r2d2
from angle_jax.core.axes import seed_axes
from angle_jax.core.types import SequenceStep
from angle_jax.envs.base import Discrete, EnvSpec
from angle_jax.networks.recurrent import FrameEncoder, GridEncoder, VectorEncoder, initial_core, make_encoder
from angle_jax.replay.prioritized import tree_leaf_values
from angle_jax.replay.sequence import (RESTART, SHIFT, SequenceFrameState, bytes_per_step, sequence_replay,
                                       sequence_stacks)
from angle_jax.training.off_policy import OffPolicyLoop

K, H, W = 4, 6, 5
CONT, REST, SHIFTED, OTHER = 0, 1, 2, 3  # what the stream generator made at each step


def frame_stream(steps, num_envs, seed, p_restart=0.08, p_shift=0.1, p_other=0.0):
    """Random stacked-frame obs `[T, N, K, H, W]` as envpool makes them: moved on by one frame, restarted
    (a new frame repeated), moved on by two frames (a lost life), or (`p_other`) an unrelated stack."""
    rng = np.random.default_rng(seed)
    obs = np.zeros((steps, num_envs, K, H, W), np.uint8)
    made = np.zeros((steps, num_envs), int)
    frame = lambda: rng.integers(0, 256, (1, H, W), dtype=np.uint8)  # noqa: E731
    for e in range(num_envs):
        cur = np.repeat(frame(), K, 0)
        made[0, e] = REST
        for t in range(steps):
            if t:
                u = rng.random()
                if u < p_restart:
                    cur, made[t, e] = np.repeat(frame(), K, 0), REST
                elif u < p_restart + p_shift:
                    cur, made[t, e] = np.concatenate([cur[2:], frame(), frame()]), SHIFTED
                elif u < p_restart + p_shift + p_other:
                    cur, made[t, e] = rng.integers(0, 256, (K, H, W), dtype=np.uint8), OTHER
                else:
                    cur = np.concatenate([cur[1:], frame()])
            obs[t, e] = cur
    return obs, made


def item(obs, t):
    n = obs.shape[1]
    return SequenceStep(obs=jnp.asarray(obs[t]), action=jnp.full((n,), t, jnp.int32), reward=jnp.zeros((n,)),
                        terminated=jnp.zeros((n,), bool), truncated=jnp.zeros((n,), bool),
                        reset=jnp.zeros((n,), bool), core=jnp.full((n, 2), t, jnp.int32))


def dropped_rows(made, period, side):
    """Rows the store cannot rebuild: unrelated stacks, and shifts past the `side` side frames of their
    block of `period` rows (the first row is never one)."""
    out = made == OTHER
    for e in range(made.shape[1]):
        for start in range(0, made.shape[0], period):
            shifts = np.flatnonzero(made[start:start + period, e] == SHIFTED)
            out[start + shifts[side:], e] = True
    out[0] = False
    return out


def expected_slots(now, capacity, period, length, num_envs, dropped):
    """{leaf: start time} of the valid slots after `now` writes: complete, start row not overwritten, and no
    dropped row after the start."""
    out = {}
    for t in range(max(0, now - capacity), now - length + 1):
        if t % period == 0:
            for e in range(num_envs):
                if not dropped[t + 1:t + length, e].any():
                    out[(t % capacity // period) * num_envs + e] = t
    return out


@functools.lru_cache(maxsize=None)
def jitted(capacity, batch, length, period, side):
    buf = sequence_replay(capacity, batch, length, period, frames=True, shift_frames=side)
    return buf, jax.jit(buf.add), jax.jit(buf.sample), jax.jit(sequence_stacks, static_argnums=3)


# (capacity, period, L, side frames): overlapping starts, L == capacity, period 1, period > L, no side frames
CONFIGS = [(16, 4, 10, 1), (12, 3, 12, 2), (8, 1, 5, 1), (15, 5, 3, 1), (12, 4, 9, 0)]


@pytest.mark.parametrize("capacity,period,length,side", CONFIGS)
def test_stacks_rebuilt_exactly_at_every_step(capacity, period, length, side):
    """After every write, the valid slots are exactly the complete, unbroken ones, and every valid sequence's
    rebuilt stacks equal the obs that were added, across restarts, shifts and the circular boundary."""
    num_envs, steps = 3, 4 * capacity + 3
    obs, made = frame_stream(steps, num_envs, seed=capacity + period + length, p_other=0.03)
    dropped = dropped_rows(made, period, side)
    buf, add, sample, stacks = jitted(capacity, 8, length, period, side)
    state = buf.init(item(obs, 0))
    assert isinstance(state, SequenceFrameState) and state.data.obs.shape == (capacity, num_envs, H, W)
    inside = {"restart": 0, "shift": 0, "wrapped": 0}
    for now in range(1, steps + 1):
        state = add(state, item(obs, now - 1))
        leaves = np.asarray(tree_leaf_values(state.sum_tree, jnp.arange(capacity // period * num_envs)))
        expected = expected_slots(now, capacity, period, length, num_envs, dropped)
        assert set(np.flatnonzero(leaves)) == set(expected), now
        assert int(state.dropped) == int(dropped[:now].sum())
        if not expected:
            assert not bool(buf.can_sample(state))
            continue
        leaf = np.array(sorted(expected))
        got = np.asarray(stacks(state, jnp.asarray(leaf // num_envs), jnp.asarray(leaf % num_envs), length))
        for b, lf in enumerate(leaf):
            t0, e = expected[lf], lf % num_envs
            np.testing.assert_array_equal(got[:, b], obs[t0:t0 + length, e], err_msg=f"now {now} start {t0}")
            inside["restart"] += int((made[t0 + 1:t0 + length, e] == REST).any())
            inside["shift"] += int((made[t0 + 1:t0 + length, e] == SHIFTED).any())
            inside["wrapped"] += int(t0 % capacity + length > capacity)
        batch = sample(state, jax.random.PRNGKey(now))
        starts = np.asarray(batch.action[0])
        envs = np.asarray(batch.index) % num_envs
        ref = np.stack([obs[t0:t0 + length, e] for t0, e in zip(starts, envs)], axis=1)
        np.testing.assert_array_equal(np.asarray(batch.obs), ref)
        np.testing.assert_array_equal(np.asarray(batch.core[:, 0]), starts)
    if length <= period:  # no sequence reaches past the last row
        inside.pop("wrapped")
    if side == 0:  # every shift is dropped: no valid sequence holds one
        assert inside.pop("shift") == 0 and (made == SHIFTED).any()
    assert min(inside.values()) > 0, inside
    assert dropped.any()


def test_seeds_under_vmap_share_the_write_position():
    capacity, period, length, num_envs = 12, 4, 6, 2
    buf = sequence_replay(capacity, 4, length, period, frames=True, prioritized=True)
    streams = [frame_stream(20, num_envs, seed=s)[0] for s in (1, 2)]

    def both(t):
        return jax.tree.map(lambda *x: jnp.stack(x), *(item(s, t) for s in streams))

    axes = seed_axes(buf.init(item(streams[0], 0)))
    assert axes.pos is None and axes.added is None and axes.kind == 0 and axes.stack == 0
    state = jax.vmap(buf.init, out_axes=axes)(both(0))
    add = jax.jit(jax.vmap(buf.add, in_axes=(axes, 0), out_axes=axes))
    for t in range(20):
        state = add(state, both(t))
    batch = jax.jit(jax.vmap(buf.sample, in_axes=(axes, 0)))(state, jax.random.split(jax.random.PRNGKey(0), 2))
    for s in range(2):
        for b in range(4):
            t0, e = int(batch.action[s, 0, b]), int(batch.index[s, b]) % num_envs
            np.testing.assert_array_equal(np.asarray(batch.obs[s, :, b]), streams[s][t0:t0 + length, e])


def test_rejects_non_stacks_and_bad_side_frames():
    buf = sequence_replay(8, 2, 4, 2, frames=True)
    flat = SequenceStep(jnp.zeros((2, 7)), jnp.zeros(2, jnp.int32), jnp.zeros(2), jnp.zeros(2, bool),
                        jnp.zeros(2, bool), jnp.zeros(2, bool), None)
    with pytest.raises(ValueError, match=r"obs stacks \[num_envs, K, H, W\]"):
        buf.init(flat)
    with pytest.raises(ValueError, match="shift_frames"):
        sequence_replay(8, 2, 4, 2, frames=True, shift_frames=-1)


# ---- memory --------------------------------------------------------------------------------

def test_bytes_per_stored_step_against_full_stacks():
    """R2D2's Atari store (64 envs, LSTM 512, period 40, 2 side frames per block): about one 84x84 frame per
    step plus the start stacks, side frames and cores, a 3.4x saving over full [4, 84, 84] stacks."""
    n, rows, period = 64, 4000, 40
    example = SequenceStep(jnp.zeros((n, 4, 84, 84), jnp.uint8), jnp.zeros(n, jnp.int32), jnp.zeros(n),
                           jnp.zeros(n, bool), jnp.zeros(n, bool), jnp.zeros(n, bool), initial_core("lstm", 512, n))
    frame = 84 * 84
    per = {}
    for frames in (True, False):
        buf = sequence_replay(rows, 64, 125, period, prioritized=True, frames=frames, shift_frames=2)
        per[frames] = bytes_per_step(jax.eval_shape(buf.init, example))
    fixed = 4 + 4 + 3 + 2 * 512 * 4 / period  # action, reward, flags, LSTM state at starts
    assert per[False] == pytest.approx(4 * frame + fixed, abs=20)
    assert per[True] == pytest.approx(frame * (1 + 4 / period + 2 / period) + 1 + fixed, abs=80)
    assert per[True] < 8_300 and per[False] / per[True] > 3.4


# ---- Nature encoder --------------------------------------------------------------------------

def test_nature_encoder_over_time_and_batch_equals_per_step():
    frames = jax.random.randint(jax.random.PRNGKey(0), (3, 2, 4, 84, 84), 0, 256).astype(jnp.uint8)
    enc = make_encoder("auto", (32,), "relu", (4, 84, 84))
    assert isinstance(enc, FrameEncoder)
    assert isinstance(make_encoder("cnn", (32,), "relu", (4, 84, 84)), FrameEncoder)
    assert isinstance(make_encoder("auto", (8,), "relu", (10, 10, 4)), GridEncoder)
    assert isinstance(make_encoder("auto", (8,), "relu", (7,)), VectorEncoder)
    params = enc.init(jax.random.PRNGKey(1), frames[0])
    assert params["params"]["NatureCNN_0"]["Conv_0"]["kernel"].shape == (8, 8, 4, 32)
    apply = jax.jit(enc.apply)
    out = apply(params, frames)
    assert out.shape == (3, 2, 32) and out.dtype == jnp.float32
    per_step = np.stack([np.asarray(apply(params, frames[t])) for t in range(3)])
    np.testing.assert_allclose(np.asarray(out), per_step, rtol=1e-5, atol=1e-6)
    assert float(jnp.std(out)) > 0
    with pytest.raises(ValueError, match="nature encoder takes stacked frames"):
        make_encoder("nature", (8,), "relu", (10, 10, 4))
    with pytest.raises(ValueError, match="torso must be one of 'auto', 'mlp', 'cnn', 'nature'"):
        make_encoder("resnet", (8,), "relu", (4, 84, 84))


def test_r2d2_picks_frame_replay_and_nature_encoder_for_atari_specs():
    loop = OffPolicyLoop(num_envs=2, capacity_per_env=40, batch_size=4, learning_starts_iters=0, train_frequency=1,
                         gradient_steps=1)
    cfg = r2d2.Config(hidden=(16,), core_size=8, head_hidden=(8,), burn_in=2, unroll=4, n_step=2, period=4)
    atari = EnvSpec("Pong-v5", (4, 84, 84), "uint8", Discrete(6), num_envs=2, max_episode_steps=100)
    vector = EnvSpec("v", (3,), "float32", Discrete(2), num_envs=2, max_episode_steps=100)
    assert isinstance(r2d2.network(cfg, atari).encoder, FrameEncoder)

    def state_of(spec):
        step = SequenceStep(jnp.zeros((2, *spec.obs_shape), spec.obs_dtype), jnp.zeros(2, jnp.int32), jnp.zeros(2),
                            jnp.zeros(2, bool), jnp.zeros(2, bool), jnp.zeros(2, bool), initial_core("lstm", 8, 2))
        return jax.eval_shape(r2d2.make(cfg, spec).make_buffer(loop).init, step)

    assert isinstance(state_of(atari), SequenceFrameState) and state_of(atari).side.shape[2] == cfg.shift_frames
    assert not isinstance(state_of(vector), SequenceFrameState)
    with pytest.raises(ValueError, match="torso must be one of 'auto', 'mlp', 'cnn', 'nature'"):
        r2d2.Config(torso="resnet").validate()
    with pytest.raises(ValueError, match="shift_frames"):
        r2d2.Config(shift_frames=-1).validate()
    from angle_jax.config import preset_path
    # the Atari config is sized for a GPU: used with --config, never picked as a CPU default
    assert preset_path("r2d2", "Pong-v5") is None


# ---- R2D2 on envpool ---------------------------------------------------------------------------

TINY = ["num_envs=2", "buffer_size=80", "batch_size=4", "learning_starts=368", "total_steps=400", "log_interval=2",
        "train_frequency=8", "agent.core_size=16", "agent.hidden=[16]", "agent.head_hidden=[16]", "agent.burn_in=2",
        "agent.unroll=4", "agent.n_step=2", "agent.period=4", "agent.target_update_interval=2",
        "env_kwargs.episodic_life=true", "env_kwargs.max_episode_steps=70", "env_kwargs.num_threads=1",
        "progress=false"]


@pytest.mark.timeout(300)
def test_r2d2_trains_on_envpool_breakout_and_its_replay_gives_back_envpool_obs():
    """The Atari config shrunk by --set overrides, run by the Trainer one loop iteration per chunk to record
    every obs envpool produced: losses are finite, parameters move, and every valid stored sequence (and a
    sampled batch) rebuilds the recorded obs exactly, across lost lives, restarts and wrap-around."""
    pytest.importorskip("envpool")
    from angle_jax.config import CONFIG_DIR, load_config
    from angle_jax.training.build import loop_from_config
    from angle_jax.training.trainer import Trainer

    config = load_config(CONFIG_DIR / "r2d2_atari.yaml", TINY, algo="r2d2", env="Breakout-v5")
    trainer = Trainer(config)
    trainer.carry = trainer.init_carry()
    params0 = jax.device_get(trainer.carry.agent.params)
    obs = [np.asarray(trainer.carry.obs[0])]
    length, period, num_envs = 8, 4, 2
    stacks = jax.jit(sequence_stacks, static_argnums=3)
    losses, checked, seen = [], 0, {"restart": 0, "shift": 0, "wrapped": 0}
    for log in trainer():
        obs.append(np.asarray(trainer.carry.obs[0]))
        losses.append(log["loss"])
        assert log["replay_dropped"] == 0  # the loop reports the rows its replay could not rebuild
        now = len(obs) - 1
        if now % 10 and now < trainer.total_iters:
            continue
        axes = seed_axes(trainer.carry.buffer)
        buf = jax.tree.map(lambda a, x: x if a is None else x[0], axes, jax.device_get(trainer.carry.buffer),
                           is_leaf=lambda x: x is None)
        assert isinstance(buf, SequenceFrameState) and int(buf.dropped) == 0
        capacity = buf.kind.shape[0]
        leaf = np.flatnonzero(np.asarray(tree_leaf_values(buf.sum_tree, jnp.arange(capacity // period * num_envs))))
        if not leaf.size:
            continue
        k, e = leaf // num_envs, leaf % num_envs
        got = np.asarray(stacks(buf, jnp.asarray(k), jnp.asarray(e), length))
        for b in range(leaf.size):
            t0 = max(t for t in range(now) if t % capacity == k[b] * period)
            np.testing.assert_array_equal(got[:, b], np.stack(obs[t0:t0 + length])[:, e[b]])
            kinds = np.asarray(buf.kind)[(t0 + np.arange(1, length)) % capacity, e[b]]
            seen["restart"] += int((kinds == RESTART).any())
            seen["shift"] += int((kinds >= SHIFT).any())
            seen["wrapped"] += int(t0 % capacity + length > capacity)
            checked += 1
    assert checked > 50 and min(seen.values()) > 0, seen
    # a batch as the learner samples it
    sample = trainer.algo.make_buffer(loop_from_config(config)).sample
    batch = jax.jit(sample)(buf, jax.random.PRNGKey(0))
    assert batch.obs.shape == (length, 4, 4, 84, 84) and batch.obs.dtype == jnp.uint8
    for b, lf in enumerate(np.asarray(batch.index)):
        t0 = max(t for t in range(now) if t % capacity == lf // num_envs * period)
        np.testing.assert_array_equal(np.asarray(batch.obs[:, b]), np.stack(obs[t0:t0 + length])[:, lf % num_envs])
    # it trains
    learned = [x for x in losses if np.isfinite(x)]
    assert len(learned) == 2 and all(x >= 0 for x in learned)
    moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(params0),
                                                  jax.tree.leaves(jax.device_get(trainer.carry.agent.params)))]
    assert min(moved) > 0
