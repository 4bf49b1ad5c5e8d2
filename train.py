"""Train an agent: python train.py --algo td3 --env Pendulum-v1 [--config FILE] [--set key=value ...]"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path


def names_epilog() -> str:
    """The algorithm and env names, for --help (listing envs imports JAX and gymnax)."""
    from angle_jax import registry

    return ("algorithms: " + ", ".join(registry.algo_names()) + "\n"
            "envs: " + ", ".join(registry.env_names()))


def parse_args(argv=None):
    from angle_jax.cli import Parser

    p = Parser(description="Train an angle_jax agent. Settings come from defaults < --config < flags < --set.",
               epilog_fn=names_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", help="algorithm name (listed below)")
    p.add_argument("--env", help="env name (listed below)")
    p.add_argument("--config", help="YAML config file (default: the preset for algo+env, if any)")
    p.add_argument("--no-preset", action="store_true", help="ignore the tuned preset for this algo+env")
    p.add_argument("--seeds", type=int, help="independent seeds trained together (vmapped)")
    p.add_argument("--seed", type=int, help="first seed")
    p.add_argument("--total-steps", type=int, help="env steps per seed")
    p.add_argument("--run-dir", help="run directory (default runs/<algo>_<env>_<seed>_<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--device", choices=["auto", "cpu", "gpu", "tpu"],
                   help="backend to run on (default auto: JAX's default backend)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set batch_size=128 --set agent.tau=0.01 "
                        "--set meta.kind=meta_gradient (dotted keys reach into mappings such as meta)")
    g = p.add_argument_group("scaling (docs/scaling.md)")
    g.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="sweep a traced hyperparameter; several --sweep make a grid, trained with the seeds "
                        "in one compiled program, e.g. --sweep critic_lr=1e-4,3e-4 --sweep tau=0.005,0.01")
    g.add_argument("--data-parallel", type=int, nargs="?", const=0, metavar="N",
                   help="split each run into N data-parallel shards (default: one per device)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: address of process 0")
    g.add_argument("--num-processes", type=int, metavar="N", help="multi-host: number of processes")
    g.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process's index")
    g.add_argument("--distributed", action="store_true",
                   help="multi-host: let JAX detect the cluster (SLURM, Open MPI, TPU pod, Kubernetes)")
    return p.parse_args(argv)


def resolve_config(args):
    from angle_jax import config as C

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise C.ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
        if args.sweep or args.data_parallel is not None:
            raise C.ConfigError("--sweep and --data-parallel cannot change on --resume (config.yaml keeps them)")
        cli = dict(total_steps=args.total_steps, device=args.device)
        return C.load_config(run_dir / "config.yaml", args.overrides, **cli), run_dir, None
    cli = dict(algo=args.algo, env=args.env, seeds=args.seeds, seed=args.seed, total_steps=args.total_steps,
               sweep=_sweep_arg(args.sweep), data_parallel=_data_parallel_arg(args.data_parallel),
               device=args.device)
    config_file, preset = args.config, None
    if config_file is None and not args.no_preset:
        base = C.RunConfig()
        preset = C.preset_path(args.algo or base.algo, args.env or base.env)
        config_file = preset
    config = C.load_config(config_file, args.overrides, **cli)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / (
        f"{config.algo}_{config.env}_{config.seed}_{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    return config, run_dir, preset


def _sweep_arg(items):
    """--sweep items -> {name: [values]} (None when not given)."""
    if not items:
        return None
    from angle_jax import parallel
    from angle_jax.config import ConfigError

    try:
        return parallel.parse_sweep_items(items)
    except parallel.SweepError as e:
        raise ConfigError(str(e)) from None


def _data_parallel_arg(value):
    """--data-parallel N -> N; bare --data-parallel -> one shard per global device."""
    if value is None:
        return None
    if value == 0:
        import jax

        return jax.device_count()
    return value


def _host_devices_wanted(args) -> int:
    """Independent units a CPU-only host can spread over cores: runs x shards (for --resume, as the
    run's config.yaml records them)."""
    if args.resume:
        return _resumed_units(Path(args.resume) / "config.yaml")
    grid = 1
    for item in args.sweep:
        grid *= max(1, len([v for v in item.split("=", 1)[-1].split(",") if v.strip()]))
    shards = args.data_parallel if args.data_parallel else (os.cpu_count() or 1) if args.data_parallel == 0 else 1
    return (args.seeds or 1) * grid * shards


def _resumed_units(path: Path) -> int:
    """runs x shards of a run directory's config.yaml, read without JAX (1 when unreadable: the
    config is checked properly later)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
        grid = 1
        for values in (data.get("sweep") or {}).values():
            grid *= max(1, len(values) if isinstance(values, list) else 1)
        return int(data.get("seeds") or 1) * grid * int(data.get("data_parallel") or 1)
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.resume or args.seeds or args.sweep or args.data_parallel is not None:
        from angle_jax.host_devices import split_cpu_for_seeds

        split_cpu_for_seeds(_host_devices_wanted(args))
    from angle_jax import config as C
    from angle_jax.cli import EXIT_DIVERGED, fail
    from angle_jax.registry import UnknownNameError

    multi = args.coordinator or args.num_processes is not None or args.process_id is not None or args.distributed
    if multi or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from angle_jax import distributed

        try:
            distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
        except ValueError as e:
            fail(str(e))
    try:
        config, run_dir, preset = resolve_config(args)
    except (C.ConfigError, UnknownNameError) as e:
        fail(str(e))
    import jax

    is_main = jax.process_index() == 0
    if is_main and not args.resume and run_dir.exists() and (run_dir / "config.yaml").exists():
        fail(f"run directory {run_dir} already holds a run; use --resume {run_dir} or another --run-dir")

    from angle_jax.training.trainer import DivergenceError, Trainer

    try:
        trainer = Trainer(config, run_dir, resume=bool(args.resume), warn=lambda m: print(m, file=sys.stderr))
        if args.resume:  # the checkpoints must fit the resumed settings before anything is rewritten
            trainer.restore()
    except (C.ConfigError, UnknownNameError, ValueError) as e:
        fail(str(e))

    from angle_jax import checkpoint as ckpt
    from angle_jax import loggers

    # the run directory records the kernels the run was made with: its checkpoints hold optimizer
    # state in their layout, so a resume or play.py on another backend must use the same
    config = dataclasses.replace(config, kernels=trainer.kernels.name)
    log = []
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        C.save_config(config, run_dir / "config.yaml")
        ckpt.atomic_write(run_dir / "spec.json", json.dumps(_spec_dict(trainer.env.spec), indent=1))
        if preset is not None:
            print(f"config: preset {preset}")
        scale = ""
        if config.sweep:
            scale += f" sweep={len(trainer.configs)} configs x {config.seeds} seeds = {trainer.runs} runs"
        if trainer.shards > 1:
            scale += f" data_parallel={trainer.shards}"
        if trainer.mesh is not None:
            scale += f" devices={trainer.mesh.devices.size} (mesh runs x data = {tuple(trainer.mesh.devices.shape)})"
        print(f"run: {run_dir}  algo={config.algo} env={config.env} seeds={config.seeds} "
              f"total_steps={config.total_steps:,}{scale}", flush=True)
        if config.tensorboard:
            log.append(loggers.TensorBoardLogger(run_dir / "events", config.seeds,
                                                 trainer.labels if config.sweep else None))
        log.append(loggers.JsonlLogger(run_dir / "metrics.jsonl"))
        if config.progress:
            log.append(loggers.ProgressLogger(config.total_steps * 1))
        if config.wandb:
            log.append(loggers.WandbLogger(run_dir, C.to_dict(config), run_dir.name))

    start = time.perf_counter()
    compiled_before = trainer.compile_s  # building, and a resume's restore, compile before the clock starts
    try:
        for log_data in trainer():
            for lg in log:
                lg.log(log_data)
    except C.ConfigError as e:  # e.g. --resume with checkpoints that do not fit this run
        for lg in log:
            lg.close()
        fail(str(e))
    except DivergenceError as e:
        kept = (f"last good checkpoint kept in {run_dir / 'checkpoints'}" if trainer.checkpoints is not None
                and trainer.checkpoints.manager.all_steps() else "no checkpoint had been written")
        print(f"train.py: {e}; stopping ({kept})", file=sys.stderr, flush=True)
        for lg in log:
            lg.close()
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        path = trainer.save_checkpoint()
        print(f"\ninterrupted at step {trainer.step:,}; checkpoint {path}; resume with "
              f"python train.py --resume {run_dir}", file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    trainer.save_checkpoint()
    returns = trainer.evaluate()
    agent = trainer.agent_params()
    if not is_main:
        return 0
    ckpt.save(run_dir / "params.ckpt", agent, {"step": trainer.step, "algo": config.algo})
    used = trainer.devices_used()
    # `wall` starts after the Trainer was built (and restored); compiles after that do not count as training
    train_s = max(wall - (trainer.compile_s - compiled_before), 1e-9)
    summary = {
        "algo": config.algo, "env": config.env, "seeds": config.seeds, "seed": config.seed,
        "total_steps": trainer.step,
        "final_eval_return_mean": float(returns.mean()),
        "final_eval_return_per_seed": returns.mean(axis=1).tolist(),
        "final_eval_returns": returns.tolist(),  # [runs][episodes]
        "eval_episodes": config.eval_episodes, "eval_seed": config.eval_seed, "eval_mode": config.eval_mode,
        "compile_s": round(trainer.compile_s, 3), "train_s": round(train_s, 3), "wall_s": round(wall, 3),
        # the steps trained in this invocation (a resumed run started at its checkpoint's step)
        "steps_per_s": round((trainer.step - trainer.start_step) / train_s, 1),
        "agent_steps_per_s": round((trainer.step - trainer.start_step) * trainer.runs / train_s, 1),
        "data_parallel": trainer.shards,
        "devices": 1 if trainer.mesh is None else int(trainer.mesh.devices.size),
        "processes": jax.process_count(),
        "backend": used["backend"], "device_kind": used["device_kind"], "kernels": trainer.kernels.name,
    }
    learned = _meta_hparams(config, trainer.parts.spec, agent)
    if learned:
        summary["meta_hparams"] = learned
    if config.sweep:
        from angle_jax import parallel

        summary["runs"] = trainer.labels
        summary["sweep"] = parallel.sweep_results(trainer.configs, config.seeds, config.seed, returns)
    ckpt.atomic_write(run_dir / "summary.json", json.dumps(summary, indent=1))
    for lg in log:
        lg.close()
    if config.plots:
        from angle_jax.report.curves import write_run_plots

        for path in write_run_plots(run_dir, notice=lambda m: print(m, file=sys.stderr)):
            print(f"plot: {path}")
    per_seed = ", ".join(f"{r:.1f}" for r in summary["final_eval_return_per_seed"])
    print(f"final eval ({config.eval_episodes} episodes/seed, {config.eval_mode}, eval_seed {config.eval_seed}): "
          f"mean {summary['final_eval_return_mean']:.2f}  per seed [{per_seed}]")
    for name, values in learned.items():
        print(f"meta-learned {name}: per seed [{', '.join(f'{v:.4g}' for v in values)}]")
    if config.sweep:
        from angle_jax import parallel

        print(f"sweep ({len(trainer.configs)} configs x {config.seeds} seeds, final eval return):")
        print(parallel.format_table(summary["sweep"], list(config.sweep)))
    print(f"compile {summary['compile_s']:.1f}s  train {summary['train_s']:.1f}s  "
          f"{summary['steps_per_s']:,.0f} steps/s  -> {run_dir}/summary.json")
    return 0


def _meta_hparams(config, algo_spec, agent) -> dict[str, list[float]]:
    """Final values of the meta-learned hyperparameters, one per run ({} without meta-gradients)."""
    import numpy as np

    from angle_jax.core.optim import get_hparams
    from angle_jax.meta.build import learned_hparam_names

    names = learned_hparam_names(config.meta, algo_spec)
    if not names or not hasattr(agent, "hparams"):
        return {}
    return {n: np.asarray(v, np.float64).reshape(-1).tolist() for n, v in get_hparams(agent, names).items()}


def _spec_dict(spec) -> dict:
    space = spec.action_space
    d = dataclasses.asdict(spec)
    d["action_space"] = {"type": type(space).__name__, **dataclasses.asdict(space)}
    return d


if __name__ == "__main__":
    sys.exit(main())
