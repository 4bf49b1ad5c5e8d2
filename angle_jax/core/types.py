"""The types every layer shares: what an env step, a replay batch and a rollout hold, and the
protocols of algorithms, stateful exploration, meta-learners and on-policy loop modules.

Each protocol is a NamedTuple of pure functions, like an optax transformation; states are
flax struct dataclasses. An algorithm module describes itself with one `AlgoSpec`, from which
the registry, the config loader and the Trainer read everything they need.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from angle_jax.core.kernels import XLA, Kernels


class UnknownNameError(ValueError):
    """An algo, module or env name that is not registered; the message lists the valid ones."""


# ---- data ------------------------------------------------------------------------

@struct.dataclass
class Transition:
    """One vectorised env step as stored in replay (leaves `[num_envs, ...]`)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array


@struct.dataclass
class Rollout(Transition):
    """`T` vectorised env steps, leaves `[T, num_envs, ...]`: the `Transition` fields
    plus `advantage_bonus`.

    `action` is the action as sampled by the policy (before any clipping to the
    env bounds); `next_obs` is the true successor (pre-reset), so truncated
    steps can bootstrap from it. `advantage_bonus` is added to the
    algorithm's own advantages (zero unless a loop module contributes).
    """

    advantage_bonus: jax.Array
    reset: jax.Array | None = None  # [T, N] bool: obs_t starts an episode (recurrent policies only)
    core: Any = None  # the policy's core state at the rollout's first step, leaves [N, ...]


@struct.dataclass
class SequenceStep:
    """One vectorised env step as sequence replay stores it (leaves `[num_envs, ...]`).

    No `next_obs`: the next row holds it (time-major storage keeps each observation once).
    `reset`: obs starts an episode, so the core state is reset before this step; `core`: the
    recurrent state the actor fed its network at this step (already reset where `reset`).
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    reset: jax.Array
    core: Any


@struct.dataclass
class SequenceBatch:
    """B stored sequences of L steps, time-major: sequence leaves `[L, B, ...]`.

    obs, action, reward, terminated, truncated, reset: the L consecutive steps of one env
    (episode ends inside a sequence appear as `terminated`/`truncated` at a step and `reset` at
    the next; nothing is padded); core: the core state at the first step, leaves `[B, ...]`;
    index: `[B]` the sequence's slot (for priority updates); weights: `[B]` importance weights
    (ones for uniform sampling).
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    reset: jax.Array
    core: Any
    index: jax.Array
    weights: jax.Array


@struct.dataclass
class NStepBatch:
    """A batch of n-step transitions (B = batch size).

    obs, action: the sampled transition's; rewards, mask: `[B, n]` per-step
    rewards and 1.0 for the steps inside the window (rewards are zero outside);
    terminated: `[B]` the window's last step ended the episode (no bootstrap);
    next_obs: successor of the window's last step (bootstrap observation);
    index: `[B]` flat slot `row * num_envs + env` (for priority updates);
    weights: `[B]` importance weights (ones for uniform sampling).
    """

    obs: jax.Array
    action: jax.Array
    rewards: jax.Array
    mask: jax.Array
    terminated: jax.Array
    next_obs: jax.Array
    index: jax.Array
    weights: jax.Array


def as_nstep_batch(batch: Transition | NStepBatch) -> NStepBatch:
    """View a plain batch of one-step Transitions as an NStepBatch with n = 1."""
    if isinstance(batch, NStepBatch):
        return batch
    b = batch.reward.shape[0]
    return NStepBatch(
        obs=batch.obs,
        action=batch.action,
        rewards=batch.reward.astype(jnp.float32)[:, None],
        mask=jnp.ones((b, 1), jnp.float32),
        terminated=batch.terminated,
        next_obs=batch.next_obs,
        index=jnp.full((b,), -1, jnp.int32),
        weights=jnp.ones((b,), jnp.float32),
    )


# ---- algorithms ------------------------------------------------------------------

class Exploration(NamedTuple):
    """Exploration that carries state from one env step to the next, such as a noise
    process per env or a schedule. The off-policy loop keeps the state in its carry
    (batched over seeds like the rest of it).

    init(key, spec) -> explore_state
    explore(state, explore_state, obs, key, step) -> (action, explore_state)
    reset(explore_state, done) -> explore_state   restart the envs whose episode just ended
                                                  (`done`: bool [num_envs], terminated or
                                                  truncated); None: the state is never reset
    """

    init: Callable[..., Any]
    explore: Callable[..., tuple[jax.Array, Any]]
    reset: Callable[..., Any] | None = None


class Memory(NamedTuple):
    """What an algorithm with a recurrent policy tells the loops.

    initial(num_envs) -> core   the core state at an episode start, leaves `[num_envs, ...]`

    Such an algorithm's `act(state, obs, core, reset) -> (action, core)` and
    `explore(state, obs, core, reset, key, step) -> (action, core)` take and return the core
    state; `reset` (bool `[num_envs]`) marks observations that start an episode, where the
    core state is replaced by its initial value before it is used.
    """

    initial: Callable[[int], Any]


class Algorithm(NamedTuple):
    """An algorithm is a bundle of pure functions, like an optax transformation.

    init(key, spec) -> state
    update(state, batch, key) -> (state, metrics)
    act(state, obs) -> action                 deterministic, for evaluation
    explore(state, obs, key, step) -> action  stochastic, for collecting data; `step` is the
                                              int32 count of env steps so far (for schedules)
    make_buffer(loop) -> ReplayBuffer         optional: the replay this algorithm samples
                                              from (default: uniform replay of Transitions)
    exploration: Exploration                  optional: stateful exploration; when given, the
                                              off-policy loop collects with it instead of
                                              `explore` (which should then act as a freshly
                                              reset `exploration` would)
    validation(**options) -> Validation       optional: its meta-gradient objective, built on
                                              the same networks, targets and optimizer
    kernels: the kernel bundle it was made with (the loops and the Trainer use the same)
    memory: Memory                            optional: the policy is recurrent; `act` and
                                              `explore` then carry a core state (see Memory)
    observe(state, transition, key) -> state  optional, off-policy loop only: called once per
                                              vectorised env step with that step's `Transition`
                                              (leaves `[num_envs, ...]`; `next_obs` is the true
                                              successor, pre-reset), after the env step and
                                              before the replay add, in warm-up too; the
                                              returned state is the one that learns this step
                                              (e.g. NEC writes its dictionary here). A
                                              recurrent algorithm's is
                                              observe(state, step, next_obs, key) -> (state, step):
                                              the `SequenceStep` and the true successor in,
                                              the step its replay stores out.

    An on-policy algorithm's `update(state, rollout, key)` takes a whole `Rollout`
    (leaves [T, num_envs, ...]) and its `explore` may return unclipped Box samples: the
    loop clips the copy it sends to the env.

    When `update`'s metrics contain "priorities" (shape [batch]) and the buffer has
    `update_priorities(buffer_state, batch, priorities)`, the off-policy loop
    feeds them back after every update.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, dict]]
    act: Callable[..., jax.Array]
    explore: Callable[..., jax.Array]
    config: Any
    make_buffer: Callable[..., Any] | None = None
    exploration: Exploration | None = None
    validation: Callable[..., "Validation"] | None = None
    kernels: Kernels = XLA
    memory: Memory | None = None
    observe: Callable[..., Any] | None = None


def bind_kernels(algo: Algorithm) -> Algorithm:
    """`algo` with every function that applies networks run under `algo.kernels`'
    interceptor (the same functions for the plain bundle)."""
    bind = algo.kernels.bind
    exploration = algo.exploration
    if exploration is not None:
        exploration = exploration._replace(explore=bind(exploration.explore))
    return algo._replace(update=bind(algo.update), act=bind(algo.act), explore=bind(algo.explore),
                         exploration=exploration, observe=bind(algo.observe))


class Validation(NamedTuple):
    """An algorithm's meta-objective for meta-gradients: `objective(updated_state, val_data,
    key) -> J`, and `prepare(agent_state, val_batch) -> val_data`, run on the validation half
    with the pre-update state (None: the half is used as it is). What `prepare` computes does
    not depend on the meta-learned hyperparameters, e.g. PPO's behaviour log-probs and
    reference advantages. `update` is the inner step to differentiate through (None: the
    algorithm's own update)."""

    objective: Callable[[Any, Any, jax.Array], jax.Array]
    prepare: Callable[[Any, Any], Any] | None = None
    update: Callable | None = None


class AlgoSpec(NamedTuple):
    """Everything the rest of the library needs to know about one algorithm.

    name: the `--algo` name
    loop: "off_policy" or "on_policy"
    action_kind: "continuous", "discrete" or "both"
    Config: its frozen settings dataclass (`validate(num_envs)` raises ValueError)
    make(config, env_spec, *, total_steps=None, kernels=XLA) -> Algorithm
    presets: env name -> preset file name in configs/
    meta_options: the `meta.*` options its `Algorithm.validation` objective takes (None: it
        has no meta-gradient objective); `meta_params`: the hyperparameters meta-gradients
        learn when the config names none
    """

    name: str
    loop: str
    action_kind: str
    Config: type
    make: Callable[..., Algorithm]
    presets: dict = {}
    meta_options: tuple[str, ...] | None = None
    meta_params: tuple[str, ...] = ("gamma",)


# ---- learners beside the algorithm ---------------------------------------------------

class MetaLearner(NamedTuple):
    """A learner that runs beside the algorithm every `interval` learning iterations.

    init(key, agent_state, spec) -> meta_state
    update(meta_state, agent_state, batch, key) -> (meta_state, agent_state, metrics)
    `update` may change the agent state (e.g. meta-learned hyperparameters). In the
    off-policy loop it sees a replay batch drawn for it alone; in the on-policy loop,
    the fresh rollout, before the agent learns from it.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, Any, dict]]
    interval: int


@struct.dataclass
class ModuleOutput:
    """What a loop module contributes for one rollout; `data` (leaves `[T, N, ...]`) is its own."""

    reward: jax.Array | None = None
    advantage: jax.Array | None = None
    data: Any = None
    metrics: dict = struct.field(default_factory=dict)


class Module(NamedTuple):
    """A learner run beside an on-policy algorithm (e.g. RND curiosity), chosen by
    configuration (`RunConfig.modules`, settings in `RunConfig.module_kwargs[name]`).

    init(key, spec) -> state
    process(state, rollout) -> (state, ModuleOutput)   reward / advantage it contributes
    update(state, rollout, output, key) -> (state, metrics)   trains on its own losses
    needs: the Rollout fields `process` and `update` read.

    `out.reward` (if not None) is added to the rewards the algorithm learns from;
    `out.advantage` (if not None) is added to the algorithm's advantages through
    `Rollout.advantage_bonus`. The algorithm sees only a `Rollout`; the module sees
    only the `Rollout` and its own state. Neither imports the other.
    """

    name: str
    init: Callable[..., Any]
    process: Callable[..., tuple[Any, ModuleOutput]]
    update: Callable[..., tuple[Any, dict]]
    needs: tuple[str, ...] = ()
    config: Any = None


class ModuleSpec(NamedTuple):
    """A loop module's description: `make(config, env_spec, *, kernels=XLA) -> Module`."""

    name: str
    Config: type
    make: Callable[..., Module]
