"""Multi-device checks for tests/test_scale.py, run in a fresh process whose XLA_FLAGS
give 4 host devices (the flag is read when JAX starts). Prints one JSON object.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/scale_checks.py [check ...]
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from angle_jax.config import load_config  # noqa: E402
from angle_jax.training.trainer import Trainer  # noqa: E402

TINY = ["total_steps=400", "learning_starts=200", "buffer_size=400", "batch_size=32", "log_interval=400",
        "eval_episodes=2", "agent.actor_hidden=[8]", "agent.critic_hidden=[8]", "progress=false",
        "tensorboard=false"]


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def train(config, devices):
    trainer = Trainer(config, devices=devices)
    start = jax.device_get(trainer.init_carry().agent)
    logs = list(trainer())
    return trainer, start, jax.device_get(trainer.carry.agent), logs


def check_sharded_sweep() -> dict:
    """2 configs (critic_lr 0 and 1e-3) x 2 seeds = 4 runs: on 4 devices and on 1."""
    config = load_config(overrides=TINY + ["seeds=2"], algo="td3", env="Pendulum-v1")
    config = dataclasses.replace(config, sweep={"critic_lr": [0.0, 1e-3]})
    sharded, start, end, logs = train(config, jax.devices())
    _, _, end1, logs1 = train(config, jax.devices()[:1])
    moved = [max_diff(jax.tree.map(lambda x: x[r], start.critic_params),
                      jax.tree.map(lambda x: x[r], end.critic_params)) for r in range(4)]
    return {
        "devices": len(jax.devices()),
        "mesh": list(sharded.mesh.devices.shape),
        "critic_sharding": str(sharded.carry.agent.critic_params["params"]["VmapMLP_0"]["Dense_0"]["kernel"].sharding.spec),
        "sharded_vs_single_device": max_diff(end, end1),
        "logs_diff": max(abs(a - b) for a, b in zip(logs[-1]["per_seed"]["critic_loss"],
                                                    logs1[-1]["per_seed"]["critic_loss"])),
        "run_critic_lr": np.asarray(end.hparams.critic_lr).tolist(),
        "critic_moved_per_run": moved,
        "labels": sharded.labels,
    }


def check_dp_update() -> dict:
    """One TD3 update on a full batch of 32 vs 4 data-parallel shards of 8 on 4 devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from angle_jax import registry
    from angle_jax.algos import td3
    from angle_jax.core.types import Transition
    from angle_jax.core.axes import seed_axes

    spec = registry.make_env("Pendulum-v1", 1).spec
    cfg = td3.Config(actor_hidden=(16,), critic_hidden=(16,), policy_delay=1, target_noise=0.0)
    single = td3.make(cfg, spec)
    sharded = td3.make(dataclasses.replace(cfg, axis_name="data"), spec)
    state = single.init(jax.random.PRNGKey(0), spec)
    k = jax.random.split(jax.random.PRNGKey(1), 5)
    n = 32
    batch = Transition(jax.random.normal(k[0], (n, 3)), jax.random.uniform(k[1], (n, 1), minval=-1, maxval=1),
                       jax.random.normal(k[2], (n,)), jax.random.bernoulli(k[3], 0.1, (n,)),
                       jnp.zeros((n,), bool), jax.random.normal(k[4], (n, 3)))
    key = jax.random.PRNGKey(2)
    ref, ref_metrics = jax.jit(single.update)(state, batch, key)
    ref, _ = jax.jit(single.update)(ref, batch, key)  # a second step: Adam moments from averaged grads

    d = 4
    axes = seed_axes(state)
    mesh = Mesh(np.asarray(jax.devices()[:d]), ("data",))
    put = lambda tree, spec_: jax.device_put(tree, NamedSharding(mesh, spec_))
    states = jax.tree.map(lambda a, x: x if a is None else jnp.broadcast_to(x, (d, *x.shape)),
                          axes, state, is_leaf=lambda x: x is None)
    states = jax.tree.map(lambda a, x: put(x, P() if a is None else P("data")), axes, states,
                          is_leaf=lambda x: x is None)
    shards = put(jax.tree.map(lambda x: x.reshape(d, n // d, *x.shape[1:]), batch), P("data"))
    step = jax.jit(jax.vmap(sharded.update, in_axes=(axes, 0, None), out_axes=(axes, 0), axis_name="data"))
    hlo = step.lower(states, shards, key).compile().as_text()
    out, metrics = step(states, shards, key)
    out, _ = step(out, shards, key)
    per_shard = [max_diff(jax.tree.map(lambda a, x: x if a is None else x[i], axes, out,
                                       is_leaf=lambda x: x is None), ref) for i in range(d)]
    return {"dp_vs_single_per_shard": per_shard,
            "critic_loss_mean_vs_full": abs(float(jnp.mean(metrics["critic_loss"])) - float(ref_metrics["critic_loss"])),
            "all_reduce_in_hlo": "all-reduce" in hlo,
            "params_changed": max_diff(ref.actor_params, state.actor_params) > 0}


def check_dp_train() -> dict:
    """A tiny data-parallel run (4 shards, one per device): shards stay identical, and it
    matches the same 4-shard run on one device."""
    config = dp_config()
    trainer, start, end, logs = train(config, jax.devices())
    _, _, end1, _ = train(config, jax.devices()[:1])
    params = (end.actor_params, end.critic_params, end.actor_target, end.critic_target)
    spread = max(float(np.max(np.abs(x - x[:, :1]))) for x in jax.tree.leaves(params))
    hlo = trainer.programs._runs[trainer.chunk_iters].as_text()
    return {"shard_spread": spread, "dp_sharded_vs_single_device": max_diff(end, end1),
            "moved": max_diff(start.actor_params, end.actor_params),
            "all_reduce_in_hlo": "all-reduce" in hlo,
            "mesh": list(trainer.mesh.devices.shape),
            "steps": logs[-1]["step"], "episodes": logs[-1]["episodes"],
            "export_shape": list(jax.tree.leaves(trainer.agent_params())[0].shape),
            "fingerprint": fingerprint(trainer.agent_params()), "eval": trainer.evaluate().tolist()}


def dp_config(**extra):
    over = TINY + ["num_envs=4", "total_steps=800", "log_interval=800", "data_parallel=4", "buffer_size=800"]
    return load_config(overrides=over + [f"{k}={v}" for k, v in extra.items()], algo="td3", env="Pendulum-v1")


def fingerprint(tree) -> list[float]:
    """Sum of |x| per leaf (float64), to compare a run across processes and layouts."""
    return [float(np.abs(np.asarray(x, np.float64)).sum()) for x in jax.tree.leaves(tree)]


def check_multihost(process_id: int, port: int) -> dict:
    """One process of a 2-process job on 127.0.0.1 (2 host devices each): a cross-process
    sum, then the 4-shard data-parallel run of `check_dp_train` laid over both processes."""
    from angle_jax import distributed
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    info = distributed.initialize(f"127.0.0.1:{port}", 2, process_id, timeout_s=120)
    mesh = Mesh(np.asarray(jax.devices()), ("d",))
    ones = jax.make_array_from_callback((jax.device_count(),), NamedSharding(mesh, P("d")),
                                        lambda idx: np.arange(jax.device_count(), dtype=np.float32)[idx] + 1)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(ones)
    trainer = Trainer(dp_config())
    list(trainer())
    agent = trainer.agent_params()
    returns = trainer.evaluate()
    out = {"process": info.process_id, "processes": info.num_processes, "global_devices": info.global_devices,
           "local_devices": info.local_devices, "psum": float(np.asarray(total.addressable_data(0))),
           "mesh": list(trainer.mesh.devices.shape), "fingerprint": fingerprint(agent),
           "eval": np.asarray(returns).tolist()}
    distributed.shutdown()
    return out


def check_recurrent_init() -> dict:
    """8 seeds of a 64-unit LSTM policy built on 4 devices (2 runs each): the init program once
    deadlocked here (batched LAPACK QRs of the orthogonal initialisers waiting on each other);
    each seed's parameters must equal the single run's with that seed."""
    over = ["total_steps=512", "num_envs=2", "agent.core=lstm", "agent.core_size=64", "agent.hidden=[8]",
            "agent.rollout_length=16", "agent.minibatches=1", "progress=false", "tensorboard=false"]
    many = Trainer(load_config(overrides=over + ["seeds=8"], algo="ppo", env="CartPoleNoVel-v1"),
                   devices=jax.devices())
    params = jax.device_get(many.init_carry().agent.params)
    diffs = []
    for seed in (0, 5):
        one = Trainer(load_config(overrides=over + [f"seed={seed}"], algo="ppo", env="CartPoleNoVel-v1"),
                      devices=jax.devices()[:1])
        single = jax.device_get(one.init_carry().agent.params)
        diffs.append(max_diff(jax.tree.map(lambda x: x[seed], params), jax.tree.map(lambda x: x[0], single)))
    return {"mesh": list(many.mesh.devices.shape), "seed_vs_single": diffs}


CHECKS = {"sharded_sweep": check_sharded_sweep, "dp_update": check_dp_update, "dp_train": check_dp_train,
          "recurrent_init": check_recurrent_init}

if __name__ == "__main__":
    if sys.argv[1:2] == ["multihost"]:
        print(json.dumps(check_multihost(int(sys.argv[2]), int(sys.argv[3]))))
        sys.exit(0)
    names = sys.argv[1:] or list(CHECKS)
    print(json.dumps({name: CHECKS[name]() for name in names}))
