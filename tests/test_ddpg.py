"""DDPG: target, every-step actor and target updates, OU noise (pure and carried by the loop,
restarted at episode ends, through train.py with resume), and convergence on a one-step problem."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from angle_jax import checkpoint as ckpt
from angle_jax import registry
from angle_jax.algos import ddpg
from angle_jax.core.types import Transition
from angle_jax.config import ConfigError, load_config
from angle_jax.envs.base import Box, Env, EnvSpec, TimeStep
from angle_jax.envs.wrappers import EpisodeStatistics
from angle_jax.training.off_policy import OffPolicyLoop, make_train
from conftest import run_in_process

SPEC = registry.make_env("Pendulum-v1", 1).spec
SMALL = ddpg.Config(actor_hidden=(8,), critic_hidden=(8,))
BANDIT = EnvSpec("bandit", (1,), "float32", Box((-1.0,), (1.0,), (1,)), 1, 1)


def best_action(obs):
    """The optimum of the one-step problem below: a*(s) = 0.6 s - 0.2."""
    return 0.6 * obs - 0.2


def bandit_batch(key, n=128):
    """One-step episodes: reward -(a - a*(s))², every transition terminal."""
    k_obs, k_act = jax.random.split(key)
    obs = jax.random.uniform(k_obs, (n, 1), minval=-1.0, maxval=1.0)
    action = jax.random.uniform(k_act, (n, 1), minval=-1.0, maxval=1.0)
    reward = -jnp.sum(jnp.square(action - best_action(obs)), axis=-1)
    return Transition(obs, action, reward, jnp.ones(n, bool), jnp.zeros(n, bool), jnp.zeros_like(obs))


def batch(n=16, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return Transition(jax.random.normal(k[0], (n, 3)), jax.random.uniform(k[1], (n, 1), minval=-1, maxval=1),
                      jax.random.normal(k[2], (n,)), jnp.zeros(n, bool), jnp.zeros(n, bool),
                      jax.random.normal(k[3], (n, 3)))


class PiecesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_q_target_hand_computed_with_termination(self):
        next_q = jnp.array([[2.0, -1.0, 4.0]])
        target = self.variant(ddpg.q_target)(next_q, jnp.array([1.0, 0.5, 0.0]), jnp.array([False, True, False]), 0.5)
        np.testing.assert_allclose(target, [1.0 + 0.5 * 2.0, 0.5, 0.5 * 4.0])
        with pytest.raises(AssertionError):
            ddpg.q_target(jnp.zeros((2, 3)), jnp.zeros(3), jnp.zeros(3, bool), 0.5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ou_noise_without_diffusion_decays_geometrically(self):
        step = self.variant(ddpg.ou_noise_step)
        x = jnp.array([[1.0, -2.0]])
        out = step(x, jax.random.PRNGKey(0), 0.15, 0.0, 0.5)
        np.testing.assert_allclose(out, x * (1 - 0.15 * 0.5), rtol=1e-6)

    @chex.variants(with_jit=True)
    def test_ou_noise_stationary_law_and_correlation(self):
        theta, sigma, dt = 0.15, 0.2, 1.0

        def run(key):
            def body(x, k):
                x = ddpg.ou_noise_step(x, k, theta, sigma, dt)
                return x, x
            _, xs = jax.lax.scan(body, jnp.zeros((4096,)), jax.random.split(key, 300))
            return xs

        xs = np.asarray(self.variant(run)(jax.random.PRNGKey(1)))[100:]  # past the burn-in
        # Euler-Maruyama OU: x' = (1 - θ dt) x + σ sqrt(dt) ε, stationary variance σ² dt / (1 - (1 - θ dt)²)
        std = sigma * np.sqrt(dt / (1 - (1 - theta * dt) ** 2))
        assert abs(xs.mean()) < 0.01
        np.testing.assert_allclose(xs.std(), std, rtol=0.03)
        lag1 = np.mean(xs[1:] * xs[:-1]) / np.mean(xs * xs)
        np.testing.assert_allclose(lag1, 1 - theta * dt, atol=0.02)

    def test_ou_exploration_is_clipped(self):
        a = ddpg.ou_exploration(jnp.array([[0.9, -0.9]]), jnp.array([[0.5, 0.05]]))
        np.testing.assert_allclose(a, [[1.0, -0.85]], rtol=1e-6)


def changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_update_moves_actor_critic_and_both_targets():
    algo = ddpg.make(ddpg.Config(actor_hidden=(8,), critic_hidden=(8,), tau=0.5), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    assert jax.tree.leaves(state.critic_params)[0].shape[0] == 1  # a single critic
    update = jax.jit(algo.update)
    for i in range(1, 4):
        new, metrics = update(state, batch(seed=i), jax.random.PRNGKey(i))
        for name in ("actor_params", "critic_params", "actor_target", "critic_target"):
            assert changed(getattr(state, name), getattr(new, name)), (i, name)
        chex.assert_trees_all_close(new.actor_target, jax.tree.map(
            lambda o, t: t + 0.5 * (o - t), new.actor_params, state.actor_target), rtol=1e-6)
        assert np.isfinite(float(metrics["actor_loss"]))
        state = new
    assert int(state.step) == 3


def test_act_is_the_actor_and_explore_adds_gaussian_noise_of_the_configured_scale():
    algo = ddpg.make(ddpg.Config(actor_hidden=(8,), critic_hidden=(8,), exploration_noise=0.05), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    obs = jax.random.normal(jax.random.PRNGKey(1), (4096, 3))
    greedy = algo.act(state, obs)
    np.testing.assert_array_equal(greedy, ddpg.networks(SMALL, SPEC)[0].apply(state.actor_params, obs))
    noise = np.asarray(algo.explore(state, obs, jax.random.PRNGKey(2), 0) - greedy)
    inside = np.abs(np.asarray(greedy)) < 0.8  # away from the clipping bounds
    np.testing.assert_allclose(noise[inside].std(), 0.05, rtol=0.05)
    assert abs(noise[inside].mean()) < 0.005


def test_refuses_discrete_env_and_bad_config():
    with pytest.raises(ValueError, match="continuous actions"):
        ddpg.make(SMALL, registry.make_env("CartPole-v1", 1).spec)
    with pytest.raises(ValueError, match="exploration_noise"):
        ddpg.make(ddpg.Config(exploration_noise=-1.0), SPEC)
    with pytest.raises(ValueError, match="ou_sigma must be >= 0, got -0.1"):
        ddpg.make(ddpg.Config(exploration="ou", ou_sigma=-0.1), SPEC)
    with pytest.raises(ValueError, match=r"ou_theta must be in \[0, 1\].*got 1.5"):
        ddpg.make(ddpg.Config(exploration="ou", ou_theta=1.5), SPEC)


def test_bad_exploration_names_the_value_and_the_choices(capsys):
    message = "exploration must be one of 'gaussian', 'ou', got 'ornstein'"
    with pytest.raises(ValueError, match=message):
        ddpg.make(ddpg.Config(exploration="ornstein"), SPEC)
    with pytest.raises(ConfigError, match="agent." + message):
        load_config(overrides=["agent.exploration=ornstein"], algo="ddpg", env="Pendulum-v1")
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(["--algo", "ddpg", "--env", "Pendulum-v1", "--set", "agent.exploration=ornstein"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "agent." + message in err and "Traceback" not in err


def test_explore_without_carried_state_is_one_step_of_a_fresh_ou_process():
    algo = ddpg.make(ddpg.Config(actor_hidden=(8,), critic_hidden=(8,), exploration="ou", ou_sigma=0.05), SPEC)
    state = algo.init(jax.random.PRNGKey(0), SPEC)
    obs = jax.random.normal(jax.random.PRNGKey(1), (4096, 3))
    greedy = algo.act(state, obs)
    key = jax.random.PRNGKey(2)
    noise = np.asarray(algo.explore(state, obs, key, 0) - greedy)
    fresh = ddpg.ou_noise_step(jnp.zeros_like(greedy), key, 0.15, 0.05)
    np.testing.assert_allclose(algo.explore(state, obs, key, 0), ddpg.ou_exploration(greedy, fresh), rtol=1e-6)
    inside = np.abs(np.asarray(greedy)) < 0.8
    np.testing.assert_allclose(noise[inside].std(), 0.05, rtol=0.05)


def test_converges_to_the_known_optimum_of_a_one_step_problem():
    algo = ddpg.make(ddpg.Config(actor_hidden=(32, 32), critic_hidden=(32, 32), actor_lr=1e-3, critic_lr=3e-3,
                                 tau=0.05), BANDIT)

    @jax.jit
    def train(key):
        k_init, k_steps = jax.random.split(key)

        def body(state, k):
            return algo.update(state, bandit_batch(k), k)

        return jax.lax.scan(body, algo.init(k_init, BANDIT), jax.random.split(k_steps, 1500))

    obs = jnp.linspace(-1.0, 1.0, 21)[:, None]
    state0 = algo.init(jax.random.split(jax.random.PRNGKey(0))[0], BANDIT)
    start_error = jnp.abs(algo.act(state0, obs) - best_action(obs))
    state, metrics = train(jax.random.PRNGKey(0))
    error = jnp.abs(algo.act(state, obs) - best_action(obs))
    assert float(start_error.max()) > 0.5, start_error
    # the policy's argmax is as good as the small critic's fit of -(a - a*)²
    assert float(error.mean()) < 0.08 and float(error.max()) < 0.15, error
    # terminal transitions: the critic regresses onto the reward, which is at most 0 at the optimum
    assert float(metrics["critic_loss"][-1]) < 0.01


# ---- OU exploration carried by the off-policy loop ----------------------------------------

class Countdown(Env):
    """Env i's episodes last 3 + i steps; env 0's terminate, the others' are truncated."""

    def __init__(self, num_envs: int = 2):
        self.spec = EnvSpec("countdown", (1,), "float32", Box.symmetric((2,)), num_envs, 8)
        self.length = jnp.arange(num_envs) + 3

    def reset(self, key):
        t = jnp.zeros(self.spec.num_envs, jnp.int32)
        return t[:, None].astype(jnp.float32), t

    def step(self, t, action, key):
        t = t + 1
        done = t >= self.length
        terminated = done & (jnp.arange(self.spec.num_envs) == 0)
        next_obs = t[:, None].astype(jnp.float32)
        t = jnp.where(done, 0, t)
        reward = jnp.zeros(self.spec.num_envs, jnp.float32)
        return t, TimeStep(t[:, None].astype(jnp.float32), reward, terminated, done & ~terminated, next_obs, {})


def countdown_train(config: ddpg.Config, learning_starts_iters: int = 2):
    env = EpisodeStatistics(Countdown())
    algo = ddpg.make(config, env.spec)
    loop = OffPolicyLoop(num_envs=2, capacity_per_env=16, batch_size=4, learning_starts_iters=learning_starts_iters,
                         train_frequency=1, gradient_steps=1)
    return algo, make_train(algo, env, loop)


def test_loop_carries_ou_noise_step_by_step_and_restarts_it_where_episodes_end():
    theta, sigma = 0.5, 0.3
    algo, train = countdown_train(ddpg.Config(actor_hidden=(8,), critic_hidden=(8,), exploration="ou",
                                              ou_theta=theta, ou_sigma=sigma))
    one_step = jax.jit(lambda c: train.run(c, 1)[0])
    carry = train.init(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(carry.explore, np.zeros((2, 2)))
    expected = jnp.zeros((2, 2))  # repeated ou_noise_step calls
    hand = np.zeros((2, 2))       # x <- (1 - θ) x + σ ε by hand, 0 after an episode end
    for t in range(1, 10):
        k_act = jax.random.split(carry.key, 4)[1]  # the loop's action key for this step
        agent, obs = carry.agent, carry.obs
        new = one_step(carry)
        if t > 2:  # after the two warm-up steps, which act at random and leave the noise alone
            expected = ddpg.ou_noise_step(expected, k_act, theta, sigma)
            hand = (1 - theta) * hand + sigma * np.asarray(jax.random.normal(k_act, (2, 2)))
            # the stored action is the actor's plus this step's noise (before any restart)
            np.testing.assert_allclose(new.buffer.data.action[t - 1],
                                       np.clip(np.asarray(algo.act(agent, obs)) + hand, -1, 1), rtol=1e-5,
                                       atol=1e-6)
        done = np.array([t % 3 == 0, t % 4 == 0])  # env 0 terminates every 3 steps, env 1 truncates every 4
        expected = jnp.where(done[:, None], 0.0, expected)
        hand[done] = 0.0
        np.testing.assert_allclose(new.explore, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(new.explore, hand, rtol=1e-5, atol=1e-6)
        noise = np.asarray(new.explore)
        assert np.all(noise[done] == 0.0), (t, noise)
        assert np.all(noise[~done] != 0.0) if t > 2 else np.all(noise == 0.0), (t, noise)
        carry = new
    np.testing.assert_array_equal(np.asarray(carry.obs[:, 0]), [0.0, 1.0])  # t = 9: both envs mid-episode as planned


def test_ou_noise_reset_zeroes_only_the_ended_envs():
    noise = jnp.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]])
    out = ddpg.ou_noise_reset(noise, jnp.array([False, True, False]))
    np.testing.assert_array_equal(out, np.asarray([[0.1, -0.2], [0.0, 0.0], [-0.5, 0.6]], np.float32))


def test_gaussian_exploration_keeps_no_state_in_the_loop():
    algo, train = countdown_train(SMALL)
    assert algo.exploration is None
    assert jax.eval_shape(train.init, jax.random.PRNGKey(0)).explore is None


def test_train_py_with_ou_exploration_runs_and_resumes_bit_identically(tmp_path):
    tiny = ["total_steps=400", "learning_starts=100", "buffer_size=400", "batch_size=32", "log_interval=100",
            "checkpoint_interval=200", "eval_episodes=1", "agent.actor_hidden=[16]", "agent.critic_hidden=[16]",
            "progress=false", "num_envs=2", "agent.exploration=ou", "agent.ou_sigma=0.3"]
    args = ["--algo", "ddpg", "--env", "Pendulum-v1", "--no-preset", "--run-dir", str(tmp_path / "run")]
    for o in tiny:
        args += ["--set", o]
    proc = run_in_process("train.py", *args)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "run"
    config = load_config(run_dir / "config.yaml")
    assert config.agent.exploration == "ou" and config.agent.ou_sigma == 0.3
    manager = ckpt.CheckpointManager(run_dir / "checkpoints")
    assert manager.all_steps() == [200, 400]
    last = ckpt.read_meta(manager.path_for(400))[1]
    params = ckpt.read_meta(run_dir / "params.ckpt")[1]
    manager.path_for(400).unlink()
    from angle_jax.training.trainer import Trainer

    # the carried noise is in the checkpoint: one process per seed, env and action dimension
    trainer = Trainer(config, run_dir, resume=True)
    assert trainer.restore() and trainer.step == 200
    noise = np.asarray(trainer.carry.explore)
    assert noise.shape == (1, 2, 1) and np.all(np.isfinite(noise)) and np.all(noise != 0.0)
    # resume from step 200: the same run, bit for bit
    resumed = run_in_process("train.py", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert ckpt.read_meta(manager.path_for(400))[1] == last
    assert ckpt.read_meta(run_dir / "params.ckpt")[1] == params
    # Pendulum episodes are 200 steps, so at step 400 both envs have just ended one: noise restarted
    assert trainer.restore() and trainer.step == 400
    np.testing.assert_array_equal(np.asarray(trainer.carry.explore), np.zeros((1, 2, 1), np.float32))
