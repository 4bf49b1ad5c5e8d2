"""The online learner: `python -m angle_jax.serve.learn --run RUN_DIR`.

Tails the decision log through the joiner, adds each transition to the algorithm's replay and runs
its pure `update` (DQN, TD3, SAC, DDPG), and every `--publish-every` updates publishes the agent to
RUN_DIR/serve/policy.ckpt (an atomic file replace, model_version + 1), which the server polls and
swaps in. Its own state (agent, replay, key) is checkpointed to RUN_DIR/serve/learner.ckpt together
with the log offset it has consumed up to, in one atomic file: a restart resumes from exactly that
offset, so no transition is learned twice or skipped.

Importance weights: the three algorithms learn 1-step off-policy targets (Q-learning, clipped
double-Q, soft Q), which do not depend on the behaviour policy, so none is needed; the logged
behaviour log-probability travels with every transition for algorithms that would need it.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

PROG = "python -m angle_jax.serve.learn"
ONLINE_ALGOS = ("dqn", "td3", "sac", "ddpg")
LEARNER_CKPT = "learner.ckpt"


def parse_args(argv=None):
    from angle_jax.cli import Parser

    p = Parser(prog=PROG, description="Learn online from the policy server's decision log and publish the policy "
                                      "back to the server.")
    p.add_argument("--run", required=True, help="the run directory the server serves")
    p.add_argument("--log", help="the decision log (default RUN_DIR/serve/decisions.db)")
    p.add_argument("--fresh", action="store_true",
                   help="start from freshly initialised parameters (as the server's --fresh) instead of the run's")
    p.add_argument("--publish-every", type=int, default=100, metavar="K", help="publish after every K updates")
    p.add_argument("--checkpoint-every", type=int, default=1000, metavar="N",
                   help="checkpoint the learner after every N transitions consumed (and at every publish)")
    p.add_argument("--batch-size", type=int, help="replay batch (default: the run's batch_size)")
    p.add_argument("--buffer-size", type=int, help="replay capacity in transitions (default: the run's buffer_size)")
    p.add_argument("--learning-starts", type=int, help="transitions before the first update (default: the run's)")
    p.add_argument("--updates-per-transition", type=float,
                   help="gradient updates per transition (default: the run's gradient_steps / (train_frequency "
                        "x num_envs))")
    p.add_argument("--default-reward", type=float, default=0.0,
                   help="reward of a decision whose feedback never came within the feedback window")
    p.add_argument("--poll-interval", type=float, default=0.05, help="seconds between polls of an idle log")
    p.add_argument("--max-transitions", type=int, help="stop after consuming this many in total (default: run on)")
    p.add_argument("--idle-exit", type=float, help="stop after this many seconds without a new transition")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def fail(message: str):
    from angle_jax.cli import fail as cli_fail

    cli_fail(message, PROG)


def check_args(args) -> None:
    from angle_jax.serve.policy import PolicyError, check_run_dir

    for name in ("publish_every", "checkpoint_every", "batch_size", "buffer_size", "max_transitions"):
        v = getattr(args, name)
        if v is not None and v < 1:
            fail(f"--{name.replace('_', '-')} must be positive, got {v}")
    if args.learning_starts is not None and args.learning_starts < 0:
        fail(f"--learning-starts must be >= 0, got {args.learning_starts}")
    upt = args.updates_per_transition
    if upt is not None and (not math.isfinite(upt) or upt <= 0):
        fail(f"--updates-per-transition must be positive, got {upt}")
    if not (math.isfinite(args.poll_interval) and args.poll_interval > 0):
        fail(f"--poll-interval must be positive, got {args.poll_interval}")
    if not math.isfinite(args.default_reward):
        fail("--default-reward must be finite")
    try:
        check_run_dir(Path(args.run))
    except PolicyError as e:
        fail(str(e))
    if not Path(args.run).is_dir():
        fail(f"--run takes a run directory, got the file {args.run}")


class Learner:
    """The learner's state and its compiled step; `run()` is the tail-learn-publish loop."""

    def __init__(self, policy, log, *, batch_size: int, capacity: int, learning_starts: int,
                 updates_per_transition: float, publish_every: int, checkpoint_every: int, seed: int,
                 default_reward: float = 0.0, chunk: int = 64):
        import jax
        import jax.numpy as jnp

        from angle_jax.core.types import Transition
        from angle_jax.replay.buffer import uniform_replay
        from angle_jax.serve.joiner import Joiner
        from angle_jax.serve.policy import serve_dir

        self.policy, self.log = policy, log
        self.joiner = Joiner(log, default_reward=default_reward)
        self.dir = serve_dir(policy.run_dir)
        self.publish_every, self.checkpoint_every = publish_every, checkpoint_every
        self.learning_starts = learning_starts
        self.chunk = chunk
        algo, spec = policy.algo, policy.spec
        self.buffer = uniform_replay(capacity, batch_size, kernels=algo.kernels)
        obs = jnp.zeros((1, *spec.obs_shape), jnp.float32)
        action = jnp.zeros((1,), jnp.int32) if spec.discrete else jnp.zeros((1, *spec.action_space.shape),
                                                                             jnp.float32)
        flag = jnp.zeros((1,), jnp.bool_)
        self.example = Transition(obs, action, jnp.zeros((1,), jnp.float32), flag, flag, obs)
        # the learner state: one pytree, checkpointed atomically with the counters below
        self.state = {"agent": policy.agent, "buffer": self.buffer.init(self.example),
                      "key": jax.random.PRNGKey(seed), "credit": jnp.zeros((), jnp.float32)}
        self.offset = 0          # last log seq consumed
        self.consumed = 0        # transitions added to replay (the counting objective's numbers)
        self.seq_sum = 0         # sum of their seqs
        self.dropped = 0
        self.updates = 0
        self.model_version = 0
        self._since_publish = 0
        self._since_ckpt = 0
        self._step = jax.jit(self._make_step(algo, updates_per_transition))

    def _make_step(self, algo, updates_per_transition: float):
        """One compiled program for `chunk` transitions: for each valid one, add it, earn
        `updates_per_transition` updates of credit, and once replay holds `learning_starts`,
        spend whole credits on (sample, update)."""
        import jax
        import jax.numpy as jnp

        buffer, starts = self.buffer, self.learning_starts
        max_updates = max(1, math.ceil(updates_per_transition))

        def one(carry, x):
            item, valid = x
            agent, buf, key, credit, n = carry

            def add(args):
                agent, buf, key, credit, n = args
                buf = buffer.add(buf, item)
                ready = buf.size >= jnp.maximum(starts, 1)
                credit = jnp.where(ready, credit + updates_per_transition, credit)

                def learn(i, c):
                    agent, key, credit, n = c
                    key, k_sample, k_update = jax.random.split(key, 3)
                    do = credit >= 1.0

                    def go(agent):
                        batch = buffer.sample(buf, k_sample)
                        return algo.update(agent, batch, k_update)[0]

                    agent = jax.lax.cond(do, go, lambda a: a, agent)
                    return agent, key, credit - do, n + do

                agent, key, credit, n = jax.lax.fori_loop(0, max_updates, learn, (agent, key, credit, n))
                return agent, buf, key, credit, n

            carry = jax.lax.cond(valid, add, lambda c: c, (agent, buf, key, credit, n))
            return carry, None

        def step(state, items, valid):
            carry = (state["agent"], state["buffer"], state["key"], state["credit"], jnp.zeros((), jnp.int32))
            (agent, buf, key, credit, n), _ = jax.lax.scan(one, carry, (items, valid))
            return {"agent": agent, "buffer": buf, "key": key, "credit": credit}, n

        return step

    # -- persistence ---------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"log_offset": self.offset, "consumed": self.consumed, "seq_sum": self.seq_sum,
                "dropped": self.dropped, "updates": self.updates, "model_version": self.model_version}

    def checkpoint(self) -> None:
        from angle_jax import checkpoint as ckpt

        ckpt.save(self.dir / LEARNER_CKPT, self.state, self._meta())
        self._since_ckpt = 0

    def publish(self) -> None:
        """Checkpoint, then publish the agent as the next model_version (in this order: a crash in
        between republishes the same learner state under a newer version, never an older one)."""
        from angle_jax import checkpoint as ckpt

        self.model_version += 1
        self.checkpoint()
        ckpt.save(self.dir / "policy.ckpt", self.state["agent"], self._meta())
        self._since_publish = 0

    def restore(self) -> bool:
        """Resume from RUN_DIR/serve/learner.ckpt if there is one; True if resumed."""
        from angle_jax import checkpoint as ckpt

        path = self.dir / LEARNER_CKPT
        if not path.is_file():
            return False
        state, meta = ckpt.restore(path, self.state)
        self.state = state
        self.offset, self.consumed, self.seq_sum = int(meta["log_offset"]), int(meta["consumed"]), int(meta["seq_sum"])
        self.dropped, self.updates = int(meta["dropped"]), int(meta["updates"])
        self.model_version = int(meta["model_version"])
        published = self.dir / "policy.ckpt"
        if published.is_file():  # never publish a version the server has already seen
            try:
                header, _ = ckpt.read_meta(published)
                self.model_version = max(self.model_version, int(header.get("model_version", 0)))
            except ckpt.CheckpointError:
                pass
        return True

    # -- the loop -----------------------------------------------------------------------------
    def _batch(self, transitions):
        import numpy as np

        spec, n, c = self.policy.spec, len(transitions), self.chunk
        obs = np.zeros((c, 1, *spec.obs_shape), np.float32)
        next_obs = np.zeros_like(obs)
        if spec.discrete:
            action = np.zeros((c, 1), np.int32)
        else:
            action = np.zeros((c, 1, *spec.action_space.shape), np.float32)
        reward = np.zeros((c, 1), np.float32)
        term = np.zeros((c, 1), bool)
        trunc = np.zeros((c, 1), bool)
        for i, t in enumerate(transitions):
            obs[i, 0] = t.obs
            next_obs[i, 0] = t.next_obs
            action[i, 0] = np.reshape(np.asarray(t.action, action.dtype), action.shape[2:])
            reward[i, 0], term[i, 0], trunc[i, 0] = t.reward, t.terminated, t.truncated
        valid = np.arange(c) < n
        from angle_jax.core.types import Transition

        return Transition(obs, action, reward, term, trunc, next_obs), valid

    def learn(self, transitions) -> int:
        """Learn from `transitions` (at most `chunk`) and advance the offset past them."""
        items, valid = self._batch(transitions)
        self.state, n = self._step(self.state, items, valid)
        n = int(n)
        self.updates += n
        self._since_publish += n
        self.consumed += len(transitions)
        self._since_ckpt += len(transitions)
        self.seq_sum += sum(t.seq for t in transitions)
        return n

    def run(self, max_transitions: int | None = None, poll_interval: float = 0.05, idle_exit: float | None = None,
            stop=lambda: False, report=None) -> None:
        last_new = time.monotonic()
        while not stop():
            limit = self.chunk
            if max_transitions is not None:
                limit = min(limit, max_transitions - self.consumed)
                if limit <= 0:
                    break
            transitions, offset, dropped = self.joiner.poll(self.offset, limit)
            if not transitions and offset == self.offset:
                if idle_exit is not None and time.monotonic() - last_new > idle_exit:
                    break
                time.sleep(poll_interval)
                continue
            last_new = time.monotonic()
            if transitions:
                self.learn(transitions)
            self.offset, self.dropped = offset, self.dropped + dropped
            if self._since_publish >= self.publish_every:
                self.publish()
                if report:
                    report(self)
            elif self._since_ckpt >= self.checkpoint_every:
                self.checkpoint()
        self.checkpoint()


def learner_from_args(args):
    """The Learner `args` describe (loads the run and the log); resumed when a checkpoint exists."""
    from angle_jax.serve.log import SQLiteLog
    from angle_jax.serve.policy import PolicyError, load_policy, serve_dir

    try:
        policy = load_policy(Path(args.run), fresh=args.fresh)
    except PolicyError as e:
        fail(str(e))
    if policy.algo_name not in ONLINE_ALGOS:
        fail(f"online learning supports {', '.join(ONLINE_ALGOS)}; this run is {policy.algo_name}")
    config = policy.config
    log_path = Path(args.log) if args.log else serve_dir(policy.run_dir) / "decisions.db"
    if not log_path.is_file():
        fail(f"no decision log at {log_path} (start the server first, or pass --log)")
    upt = args.updates_per_transition
    if upt is None:
        upt = config.gradient_steps / (config.train_frequency * config.num_envs)
    learner = Learner(policy, SQLiteLog(log_path, policy.spec.obs_shape),
                      batch_size=args.batch_size or config.batch_size,
                      capacity=args.buffer_size or config.buffer_size,
                      learning_starts=config.learning_starts if args.learning_starts is None else args.learning_starts,
                      updates_per_transition=upt, publish_every=args.publish_every,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, default_reward=args.default_reward)
    learner.restore()
    return learner


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)
    learner = learner_from_args(args)
    print(f"learning {learner.policy.algo_name} online from {learner.log.path} at offset {learner.offset} "
          f"(model_version {learner.model_version}, {learner.consumed} transitions consumed)", flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

    def report(lr):
        print(f"published model_version {lr.model_version}: offset {lr.offset}, {lr.consumed} transitions, "
              f"{lr.updates} updates", flush=True)

    try:
        learner.run(args.max_transitions, args.poll_interval, args.idle_exit, stop=lambda: bool(stopping),
                    report=report)
    except KeyboardInterrupt:
        learner.checkpoint()
    print(f"stopped at offset {learner.offset}: {learner.consumed} transitions, {learner.updates} updates, "
          f"model_version {learner.model_version}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
