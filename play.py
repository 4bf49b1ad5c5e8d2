"""Watch or evaluate a trained agent: python play.py --checkpoint runs/<run> [--run-index I] [--env NAME] [--episodes N] [--video out.gif]"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from angle_jax.runs import _agent_from_checkpoint, agent_axes, find_run, load_agent, make_algo, pick_run  # noqa: F401


def parse_args(argv=None):
    from angle_jax.cli import Parser

    p = Parser(description="Run deterministic episodes with a trained agent; optionally write a video.")
    p.add_argument("--checkpoint", required=True, help="a run directory, or a .ckpt file inside one")
    p.add_argument("--env", help="env name (default: the env the agent was trained on)")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--video", help="write frames of the first episode to this .gif or .mp4")
    p.add_argument("--seed", type=int, default=0, help="seed for the episodes' initial states")
    p.add_argument("--run-index", "--agent-seed", dest="run_index", type=int, default=0, metavar="I",
                   help="which trained run to play: runs = sweep configs x seeds, run r = g * seeds + s "
                        "(labels in summary.json; default 0)")
    p.add_argument("--max-steps", type=int, help="cap on steps per episode (default: the env's limit)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu", "tpu"],
                   help="backend to play on (default auto: JAX's default backend)")
    p.add_argument("--env-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an env setting, e.g. --env-set split=train (data-feed envs play "
                        "their test period by default)")
    return p.parse_args(argv)


def run_labels(config) -> list[str]:
    """`run_<i>: name=value ... seed=<s>` for every run trained together (runs = sweep configs
    x seeds), the labels train.py writes to summary.json."""
    from angle_jax import parallel

    return parallel.run_labels(parallel.grid(config.sweep), config.seeds, config.seed)


def spec_mismatch(trained: dict, spec) -> str | None:
    from train import _spec_dict

    now = _spec_dict(spec)
    for key in ("obs_shape", "obs_dtype", "action_space"):
        a, b = trained.get(key), now.get(key)
        if json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
            return f"{key} differs: trained on {a}, env has {b}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    from angle_jax import config as C
    from angle_jax import registry
    from angle_jax.checkpoint import CheckpointError
    from angle_jax.cli import fail

    if args.episodes <= 0:
        fail(f"--episodes must be positive, got {args.episodes}")
    if args.video and not args.video.lower().endswith((".gif", ".mp4")):
        fail(f"--video must end in .gif or .mp4, got {args.video}")
    try:
        run_dir, ckpt_file = find_run(Path(args.checkpoint))
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
        config = C.load_config(run_dir / "config.yaml")
    except (FileNotFoundError, C.ConfigError) as e:
        fail(str(e))
    labels = run_labels(config)
    if not 0 <= args.run_index < len(labels):
        fail(f"--run-index must be in [0, {len(labels)}) for this checkpoint's {len(labels)} run(s), "
             f"got {args.run_index} ({'; '.join(labels)})")
    env_name = args.env or config.env
    env_kwargs = dict(config.env_kwargs) if env_name == config.env else {}
    if env_name.startswith("DataFeed"):
        env_kwargs.setdefault("split", "test")
    for item in args.env_set:
        if "=" not in item:
            fail(f"--env-set expects key=value, got {item!r}")
        import yaml

        key, raw = item.split("=", 1)
        env_kwargs[key] = yaml.safe_load(raw)
    try:
        env = registry.make_env(env_name, args.episodes, **env_kwargs)
    except (registry.UnknownNameError, ValueError) as e:
        fail(str(e))
    spec_file = run_dir / "spec.json"
    if spec_file.is_file():
        problem = spec_mismatch(json.loads(spec_file.read_text()), env.spec)
        if problem:
            fail(f"checkpoint does not fit {env_name}: {problem}")

    import imageio.v2 as imageio
    import jax
    import jax.numpy as jnp
    import numpy as np

    from angle_jax import devices

    try:
        device = devices.select_devices(args.device or config.device)[0]
    except ValueError as e:
        fail(str(e))
    jax.config.update("jax_default_device", device)
    try:
        algo = make_algo(config, env.spec, device.platform)
    except ValueError as e:
        fail(str(e))
    try:
        agents = load_agent(run_dir, ckpt_file, algo, config)
    except (FileNotFoundError, CheckpointError) as e:
        fail(str(e))
    agent = pick_run(agents, agent_axes(algo, jax.random.PRNGKey(0)), args.run_index)
    print(f"playing {labels[args.run_index]}")

    act = jax.jit(algo.act)
    step = jax.jit(env.step)
    key = jax.random.PRNGKey(args.seed)
    key, k_reset = jax.random.split(key)
    obs, state = jax.jit(env.reset)(k_reset)
    n = args.episodes
    # a recurrent policy carries its core state per env, reset where an episode starts (as evaluation does)
    memory = algo.memory
    core = None if memory is None else memory.initial(n)
    reset = jnp.ones(n, jnp.bool_)
    horizon = args.max_steps or env.spec.max_episode_steps
    returns = np.zeros(n)
    lengths = np.zeros(n, int)
    alive = np.ones(n, bool)
    frames = []
    want_video = args.video is not None
    if want_video:
        try:
            frames.append(env.render(state, 0))
        except NotImplementedError as e:
            fail(str(e))
    for _ in range(horizon):
        key, k = jax.random.split(key)
        if memory is None:
            action = act(agent, obs)
        else:
            action, core = act(agent, obs, core, reset)
        state, ts = step(state, action, k)
        reset = ts.done
        reward = np.asarray(ts.info.get("raw_reward", ts.reward))
        done = np.asarray(ts.info.get("episode_end", ts.done))
        returns += np.where(alive, reward, 0.0)
        lengths += alive
        if want_video and alive[0] and not done[0]:
            frames.append(env.render(state, 0))
        alive &= ~done
        obs = ts.obs
        if not alive.any():
            break
    for i, (r, l) in enumerate(zip(returns, lengths)):
        print(f"episode {i}: return {r:.2f}  length {l}")
    print(f"mean return over {n} episodes: {returns.mean():.2f}")
    if env_name.startswith("DataFeed"):
        from angle_jax.envs import datafeed

        print(datafeed.play_report(env_name, returns, **env_kwargs))
    if want_video:
        path = Path(args.video)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if path.suffix.lower() == ".gif":
                imageio.mimsave(path, frames, duration=1 / 30, loop=0)
            else:
                imageio.mimsave(path, frames, fps=30)
        except Exception as e:  # imageio raises backend-specific errors (e.g. no ffmpeg for mp4)
            fail(f"could not write {path}: {e}")
        print(f"video: {path} ({len(frames)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
