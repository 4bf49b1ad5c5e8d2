"""A run directory's policy, ready to serve: the algorithm as the run made it, one agent state,
and `decide`, one compiled function per padded batch size that answers a batch of observations
with actions and the log-probability of each answer under the behaviour policy.

The agent state is an argument of `decide`, so a newer state of the same structure (published by
the online learner) swaps in without recompiling.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PUBLISHED = "policy.ckpt"  # the file the online learner publishes into RUN_DIR/serve/


def serve_dir(run_dir: Path) -> Path:
    """Where serving keeps its files: the decision log, published policies, learner state."""
    return Path(run_dir) / "serve"


def buckets(max_batch: int) -> tuple[int, ...]:
    """Padded batch sizes: powers of two up to `max_batch` (and `max_batch` itself)."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return tuple(sizes + [max_batch])


@dataclass
class Policy:
    run_dir: Path
    algo_name: str
    algo: Any
    config: Any
    spec: Any              # the env spec the policy acts in (actions of Box spaces are in [-1, 1])
    agent: Any             # one run's agent state
    label: str
    decide: Callable      # (agent, obs [B, ...], explore [B] bool, key, step) -> (action [B, ...], log_prob [B])

    @property
    def discrete(self) -> bool:
        return self.spec.discrete

    def obs_dtype(self):
        import numpy as np

        return np.dtype(self.spec.obs_dtype)


class PolicyError(ValueError):
    """A run directory that cannot be served (message is the reason)."""


def check_run_dir(path: Path, best: bool = False) -> tuple[Path, Path | None]:
    """(run_dir, checkpoint file or None) without importing JAX; PolicyError when unusable."""
    from angle_jax.runs import find_run

    try:
        run_dir, ckpt_file = find_run(Path(path))
    except FileNotFoundError as e:
        raise PolicyError(str(e)) from None
    if not (run_dir / "config.yaml").is_file():
        raise PolicyError(f"{run_dir} is not a run directory (no config.yaml)")
    if best:
        if ckpt_file is not None:
            raise PolicyError("--best takes a run directory, not a checkpoint file")
        ckpt_file = run_dir / "checkpoints" / "best.ckpt"
        if not ckpt_file.is_file():
            raise PolicyError(f"{run_dir} has no checkpoints/best.ckpt (the run evaluated no best agent)")
    return run_dir, ckpt_file


def load_policy(path: Path, best: bool = False, run_index: int = 0, fresh: bool = False) -> Policy:
    """The policy of one run of the run directory `path` (its final parameters, `best.ckpt` with
    `best`, or a checkpoint file given as `path`); `fresh`: the run's algorithm with freshly
    initialised parameters (an untrained policy to learn online from). PolicyError when the run
    cannot be served."""
    import jax

    from angle_jax import config as C
    from angle_jax import parallel, registry
    from angle_jax.checkpoint import CheckpointError
    from angle_jax.runs import agent_axes, load_agent, make_algo, pick_run

    run_dir, ckpt_file = check_run_dir(path, best)
    try:
        config = C.load_config(run_dir / "config.yaml")
    except C.ConfigError as e:
        raise PolicyError(str(e)) from None
    labels = parallel.run_labels(parallel.grid(config.sweep), config.seeds, config.seed)
    if not 0 <= run_index < len(labels):
        raise PolicyError(f"--run-index must be in [0, {len(labels)}) for this run directory, got {run_index}")
    try:
        env = registry.make_env(config.env, 1, **dict(config.env_kwargs))
        algo = make_algo(config, env.spec, jax.default_backend())
    except (registry.UnknownNameError, ValueError) as e:
        raise PolicyError(str(e)) from None
    if algo.memory is not None:
        raise PolicyError(f"{config.algo} has a recurrent policy; the server keeps no per-episode core state, "
                          f"so it serves feed-forward policies only")
    spec_file = run_dir / "spec.json"
    if spec_file.is_file():
        trained = json.loads(spec_file.read_text())
        if list(trained.get("obs_shape", env.spec.obs_shape)) != list(env.spec.obs_shape):
            raise PolicyError(f"{run_dir}: spec.json's obs_shape {trained['obs_shape']} differs from "
                              f"{config.env}'s {list(env.spec.obs_shape)}")
    if fresh:
        agent = algo.init(jax.random.PRNGKey(config.seed))
    else:
        try:
            agents = load_agent(run_dir, ckpt_file, algo, config)
        except (FileNotFoundError, CheckpointError) as e:
            raise PolicyError(str(e)) from None
        agent = pick_run(agents, agent_axes(algo, jax.random.PRNGKey(0)), run_index)
    return Policy(run_dir, config.algo, algo, config, env.spec, agent, labels[run_index],
                  make_decide(config.algo, algo, env.spec))


def make_decide(algo_name: str, algo, spec) -> Callable:
    """`decide(agent, obs, explore, key, step) -> (action, log_prob)`, jitted.

    Rows with `explore` act as the algorithm collects data (`explore`: ε-greedy, Gaussian noise,
    a sample of the policy); the others act greedily (`act`). `log_prob` is the log-probability
    (discrete) or log-density (continuous) of the answered action under that behaviour:
    - ε-greedy (DQN family): log(ε/|A| + (1-ε)·[a = greedy]), ε at env step `step`; greedy rows 0;
    - Gaussian noise (TD3, DDPG): the Gaussian log-density around the greedy action (clipping to
      [-1, 1] ignored); greedy rows NaN (a point mass);
    - SAC: the squashed Gaussian's log-density of its sample; greedy rows NaN;
    - any other algorithm: NaN (not known), reported as null.
    """
    import jax
    import jax.numpy as jnp

    def hparams_of(agent):
        return getattr(agent, "hparams", None)

    if algo_name == "sac":
        from angle_jax.algos import sac

        actor, _ = sac.networks(algo.config, spec)

        def sample(agent, obs, key):
            mean, log_std = actor.apply(agent.actor_params, obs)
            return sac.squashed_gaussian(mean, log_std).sample_and_log_prob(seed=key)
    else:
        sample = None

    def decide(agent, obs, explore, key, step):
        key = jax.random.fold_in(key, step)
        greedy = algo.act(agent, obs)
        hp = hparams_of(agent)
        nan = jnp.full(obs.shape[:1], jnp.nan, jnp.float32)
        if sample is not None:
            explored, lp = sample(agent, obs, key)
            log_prob = jnp.where(explore, lp, nan)
        else:
            explored = algo.explore(agent, obs, key, step)
            if spec.discrete and hp is not None and hasattr(hp, "epsilon_start"):
                from angle_jax.algos.dqn import epsilon_schedule

                eps = epsilon_schedule(step, hp.epsilon_start, hp.epsilon_end, hp.epsilon_decay_steps)
                n = spec.action_dim
                prob = jnp.where(explored == greedy, eps / n + 1.0 - eps, eps / n)
                log_prob = jnp.where(explore, jnp.log(prob), 0.0).astype(jnp.float32)
            elif not spec.discrete and hp is not None and hasattr(hp, "exploration_noise"):
                sigma = jnp.maximum(hp.exploration_noise, 1e-8)
                z = (explored - greedy) / sigma
                dims = math.prod(spec.action_space.shape)
                lp = -0.5 * jnp.sum(jnp.reshape(z * z, (z.shape[0], -1)), axis=-1) \
                    - dims * (jnp.log(sigma) + 0.5 * jnp.log(2 * jnp.pi))
                log_prob = jnp.where(explore, lp, nan).astype(jnp.float32)
            elif spec.discrete:
                log_prob = jnp.where(explore, nan, 0.0)
            else:
                log_prob = nan
        mask = jnp.reshape(explore, explore.shape + (1,) * (greedy.ndim - 1))
        action = jnp.where(mask, explored, greedy)
        return action, log_prob.astype(jnp.float32)

    return jax.jit(decide)


def serve_key(seed: int):
    """The exploration key `decide` takes: a typed key of XLA's RngBitGenerator ("rbg"), which on
    CPU costs a fraction of the default threefry (ε-greedy's uniform + randint for one row: about
    110 µs instead of 270 µs per call of the DQN preset's `decide`)."""
    import jax

    return jax.random.key(seed, impl="rbg")


def compile_buckets(policy: Policy, sizes: tuple[int, ...]) -> dict[int, Callable]:
    """`decide` compiled once per padded batch size (ahead of time: no compile while serving),
    for keys made by `serve_key`."""
    import jax.numpy as jnp
    import numpy as np

    compiled = {}
    key = serve_key(0)
    for b in sizes:
        obs = jnp.zeros((b, *policy.spec.obs_shape), policy.obs_dtype())
        explore = jnp.zeros((b,), jnp.bool_)
        compiled[b] = policy.decide.lower(policy.agent, obs, explore, key, np.int32(0)).compile()
    return compiled
