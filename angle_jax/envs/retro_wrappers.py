"""The Retro preprocessing wrappers `gym_make` stacks on a stable-retro env (see its docstring).
Imported only where a Retro env is built (a vector env's worker process)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from PIL import Image


class ButtonCombos(gym.ActionWrapper):
    """`Discrete(len(combos))` over a list of button combinations of a `MultiBinary` Retro env."""

    def __init__(self, env, combos):
        super().__init__(env)
        buttons = list(env.unwrapped.buttons)
        self._table = np.zeros((len(combos), len(buttons)), np.int8)
        for i, combo in enumerate(combos):
            for b in combo:
                self._table[i, buttons.index(b)] = 1
        self.action_space = gym.spaces.Discrete(len(combos))

    def action(self, action):
        return self._table[int(action)].copy()


class GameInfo(gym.Wrapper):
    """`info["raw_reward"]` (the game's reward of the agent step) and `info["game_over"]`."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["raw_reward"] = float(reward)
        info["game_over"] = bool(terminated)
        return obs, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """A lost life terminates the episode for learning; the game itself goes on (reset continues
    it with a no-op step) until it is really over (Mnih et al. 2015)."""

    def __init__(self, env):
        super().__init__(env)
        self._lives = 0
        self._game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = bool(terminated)
        lives = int(info.get("lives", 0))
        if 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self._game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            noop = np.zeros_like(self.action_space.sample()) if self.action_space.shape else 0
            obs, _, terminated, truncated, info = self.env.step(noop)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self._lives = int(info.get("lives", 0))
        self._game_over = False
        return obs, info


class Frames(gym.ObservationWrapper):
    """RGB frames -> `size` x `size` uint8, grayscale (`[size, size]`) or colour (`[size, size, 3]`),
    resized with Pillow's area-averaging filter."""

    def __init__(self, env, size: int, gray: bool):
        super().__init__(env)
        self.size = int(size)
        self.gray = bool(gray)
        shape = (self.size, self.size) if self.gray else (self.size, self.size, 3)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)

    def observation(self, obs):
        image = Image.fromarray(np.asarray(obs, np.uint8))
        if self.gray:
            image = image.convert("L")
        return np.asarray(image.resize((self.size, self.size), Image.Resampling.BOX), np.uint8)
