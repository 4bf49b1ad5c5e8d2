"""Run configuration: dataclasses loaded from YAML and `--set key=value` overrides.

Every problem (unknown key, wrong type, impossible value) raises `ConfigError`
with a one-line message naming the key, before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from angle_jax import parallel, registry
from angle_jax.checkpoint import atomic_write
from angle_jax.meta.config import MetaConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

KERNELS = ("auto", "xla", "cpu")
DEVICES = ("auto", "cpu", "gpu", "tpu")
EVAL_MODES = ("greedy", "sample")


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run is: algorithm, env, budget, loop sizes, logging. `agent` holds the
    algorithm's own settings (its module's `Config`)."""

    algo: str = "td3"
    env: str = "Pendulum-v1"
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    imports: tuple[str, ...] = ()  # modules imported first, e.g. ones that register custom envs
    seed: int = 0
    seeds: int = 1
    total_steps: int = 1_000_000
    num_envs: int = 1
    buffer_size: int = 1_000_000
    batch_size: int = 256
    learning_starts: int = 25_000
    train_frequency: int = 1
    gradient_steps: int = 1
    log_interval: int = 5_000
    eval_episodes: int = 10
    eval_interval: int = 0
    eval_seed: int = 0  # every evaluation of every run plays the episodes of this seed (common to comparisons)
    eval_mode: str = "greedy"  # greedy (act) or sample (explore: the policy's sampled actions)
    eval_overlap: bool = True  # evaluate while the next chunk trains (logged one chunk later)
    checkpoint_interval: int = 0
    keep_checkpoints: int = 3
    save_buffer: bool | None = None
    modules: tuple[str, ...] = ()
    module_kwargs: dict = dataclasses.field(default_factory=dict)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    auxiliary: tuple[str, ...] = ()
    tensorboard: bool = True
    plots: bool = True  # curves.png (and sweep.png) in the run directory at the end (needs matplotlib)
    wandb: bool = False
    progress: bool = True
    sweep: dict = dataclasses.field(default_factory=dict)  # traced hparam name -> values, vmapped in one compile
    data_parallel: int = 1  # shards of each run (envs, batch, replay split; gradients averaged)
    kernels: str = "auto"  # auto (cpu on the CPU backend, else xla), xla (plain JAX/flax) or cpu (angle_jax.xla_cpu)
    device: str = "auto"  # auto (the default backend), cpu, gpu or tpu
    agent: Any = None

    def validate(self) -> None:
        positive = ("seeds", "total_steps", "num_envs", "buffer_size", "batch_size", "train_frequency",
                    "gradient_steps", "log_interval", "eval_episodes", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("learning_starts", "eval_interval", "checkpoint_interval", "seed", "eval_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_mode not in EVAL_MODES:
            raise ConfigError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if self.kernels not in KERNELS:
            raise ConfigError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        try:
            spec = registry.algo_spec(self.algo)
        except registry.UnknownNameError as e:
            raise ConfigError(str(e)) from None
        self._validate_scale(spec.loop == "on_policy")
        if registry.is_host_env(self.env) and (self.seeds > 1 or self.sweep or self.data_parallel > 1):
            raise ConfigError(f"{self.env} steps its envs on the host (one vector env per run), so runs cannot be "
                              f"vmapped over it: use seeds=1, no sweep and no data_parallel (start one process "
                              f"per seed with --seed S)")
        if spec.loop == "off_policy":
            if self.buffer_size < self.num_envs:
                raise ConfigError(f"buffer_size ({self.buffer_size}) must be at least num_envs ({self.num_envs})")
            if self.batch_size > self.buffer_size:
                raise ConfigError(f"batch_size ({self.batch_size}) is larger than buffer_size ({self.buffer_size})")
        if self.agent is not None:
            try:
                self.agent.validate(self.num_envs)
            except ValueError as e:
                raise ConfigError(f"agent.{e}") from None
        try:
            self.meta.validate(self.auxiliary)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.meta.wants_gradient and spec.meta_options is None:
            available = sorted(n for n, s in registry.ALGOS.items() if s.meta_options is not None)
            raise ConfigError(f"meta-gradients need a validation objective; algorithm {self.algo!r} has none "
                              f"(available for: {', '.join(available)})")

    def _validate_scale(self, on_policy: bool) -> None:
        """Sweep values and data-parallel divisibility (names are checked against the
        algorithm's traced hparams by the Trainer, still before any compile)."""
        try:
            parallel.normalize_sweep(self.sweep)
        except parallel.SweepError as e:
            raise ConfigError(str(e)) from None
        if self.data_parallel < 1:
            raise ConfigError(f"data_parallel must be >= 1, got {self.data_parallel}")
        if self.data_parallel > 1:
            try:
                parallel.check_data_parallel(self, self.data_parallel, on_policy)
            except parallel.SweepError as e:
                raise ConfigError(str(e)) from None


# ---- typed coercion -------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (from YAML or the command line) to the field type `tp`, or fail naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        return _int32(key, _integer(key, value))
    if tp is float:
        number = _number(key, value)
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if origin is tuple or tp is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else Any
        return tuple(_coerce(f"{key}[{i}]", v, elem) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    if origin is list or tp is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return list(value)
    if dataclasses.is_dataclass(tp):  # a typed section, e.g. meta
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return _build(tp, value, key + ".")
        raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
    return value


def build_section(cls: type, values: dict, prefix: str = "") -> Any:
    """A typed config section (e.g. `MetaConfig`) from a mapping, through the same coercion and
    errors as a config file: unknown keys and wrong types raise `ConfigError` naming the key."""
    return _build(cls, values, prefix)


INT32_MAX = 2**31 - 1


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            f = float(value.replace("_", ""))
            if f.is_integer():
                return int(f)
        except ValueError:
            pass
    raise ConfigError(f"{key} must be an integer, got {value!r}")


def _int32(key: str, value: int) -> int:
    """Integer settings become int32 arrays and counters in the compiled programs."""
    if not -INT32_MAX <= value <= INT32_MAX:
        raise ConfigError(f"{key} must be at most {INT32_MAX:,} in size (it is held in int32), got {value:,}")
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key} must be a number, got {value!r}")


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (valid: {', '.join(valid)})")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(prefix + key, names)
        kwargs[key] = _coerce(prefix + key, value, hints[key])
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _mapping_fields() -> tuple[str, ...]:
    """RunConfig fields holding a mapping or a typed section (meta, env_kwargs, ...), which `--set`
    may reach into."""
    hints = typing.get_type_hints(RunConfig)
    return tuple(f.name for f in dataclasses.fields(RunConfig)
                 if hints[f.name] is dict or dataclasses.is_dataclass(hints[f.name]))


def _set_nested(data: dict, key: str, value: Any) -> None:
    """`--set meta.bounds.gamma=[0.9,0.999]`: set one entry inside a mapping setting, keeping the rest."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set key {key!r} has an empty part")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {'.'.join(parts[:i + 1])} is {child!r}, not a mapping")
        node[part] = child = dict(child)
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not {type(data).__name__}")
    return data


def preset_path(algo: str, env: str) -> Path | None:
    """The tuned preset for (algo, env) named by the algorithm's spec, if there is one."""
    name = registry.presets().get((algo, env))
    if name is None:
        return None
    path = CONFIG_DIR / name
    return path if path.is_file() else None


def load_config(config_file: str | Path | None = None, overrides: list[str] | None = None,
                **cli: Any) -> RunConfig:
    """Defaults < YAML file < command-line flags (`cli`, None = not given) < `--set` overrides.

    An override `agent.<name>=v` sets an algorithm setting; `meta.interval=5` or
    `meta.bounds.gamma=[0.9,0.999]` sets one entry of a mapping setting (meta, env_kwargs,
    module_kwargs, sweep), keeping the others from the file."""
    data: dict = {}
    if config_file is not None:
        data.update(read_yaml(config_file))
    for key, value in cli.items():
        if value is not None:
            data[key] = value
    agent_values = data.pop("agent", None)
    if agent_values is None:
        agent_values = {}
    if not isinstance(agent_values, dict):
        raise ConfigError(f"agent must be a mapping of algorithm settings, got {agent_values!r}")
    agent_values = dict(agent_values)
    for item in overrides or []:
        key, value = _parse_override(item)
        if key.startswith("agent."):
            agent_values[key[len("agent."):]] = value
        elif key.split(".", 1)[0] in _mapping_fields() and "." in key:
            _set_nested(data, key, value)
        else:
            data[key] = value
    algo = data.get("algo", RunConfig.algo)
    if not isinstance(algo, str):
        raise ConfigError(f"algo must be a string, got {algo!r}")
    try:
        spec = registry.algo_spec(algo)
    except registry.UnknownNameError as e:
        raise ConfigError(str(e)) from None
    agent = _build(spec.Config, agent_values, "agent.")
    run = _build(RunConfig, data)
    import_modules(run.imports)
    run = dataclasses.replace(run, agent=agent, sweep=_normalized_sweep(run.sweep))
    try:
        registry.check_env_name(run.env)
    except registry.UnknownNameError as e:
        raise ConfigError(str(e)) from None
    run.validate()
    return run


def _normalized_sweep(sweep: dict) -> dict:
    try:
        return parallel.normalize_sweep(sweep)
    except parallel.SweepError as e:
        raise ConfigError(str(e)) from None


def import_modules(names) -> None:
    """Import user modules (e.g. ones calling `registry.register_env`); a missing one is a ConfigError."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"imports: cannot import {name!r}: {e}") from None


def to_dict(config: RunConfig) -> dict:
    """Plain YAML-able dict of a run config (tuples as lists)."""
    def plain(x):
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        return x

    out = {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "agent"}
    if config.agent is not None:
        out["agent"] = {f.name: plain(getattr(config.agent, f.name)) for f in dataclasses.fields(config.agent)}
    return out


def save_config(config: RunConfig, path: str | Path) -> None:
    """The resolved config as YAML, written atomically."""
    atomic_write(path, yaml.safe_dump(to_dict(config), sort_keys=False))
