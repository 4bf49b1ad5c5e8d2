"""Frames for gymnax envs drawn with PIL: classic-control scenes, MinAtar grids,
and a bar plot of the observation for anything else. No display or pygame needed."""
from __future__ import annotations

import math

import jax
import numpy as np
from PIL import Image, ImageDraw

SIZE = 256
_PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190],
], np.uint8)


def _canvas():
    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    return img, ImageDraw.Draw(img)


def _pendulum(theta: float):
    img, d = _canvas()
    c = SIZE / 2
    x, y = c + 90 * math.sin(theta), c - 90 * math.cos(theta)
    d.line([(c, c), (x, y)], fill=(204, 77, 77), width=12)
    d.ellipse([c - 6, c - 6, c + 6, c + 6], fill=(0, 0, 0))
    return img


def _cartpole(x: float, theta: float):
    img, d = _canvas()
    scale = SIZE / 4.8
    cx, cy = SIZE / 2 + x * scale, SIZE * 0.7
    d.line([(0, cy + 10), (SIZE, cy + 10)], fill=(0, 0, 0))
    d.rectangle([cx - 20, cy - 10, cx + 20, cy + 10], fill=(0, 0, 0))
    px, py = cx + 100 * math.sin(theta), cy - 100 * math.cos(theta)
    d.line([(cx, cy), (px, py)], fill=(202, 152, 101), width=8)
    return img


def _acrobot(t1: float, t2: float):
    img, d = _canvas()
    c = SIZE / 2
    x1, y1 = c + 60 * math.sin(t1), c + 60 * math.cos(t1)
    x2, y2 = x1 + 60 * math.sin(t1 + t2), y1 + 60 * math.cos(t1 + t2)
    d.line([(0, c - 60), (SIZE, c - 60)], fill=(0, 0, 0))
    d.line([(c, c), (x1, y1)], fill=(0, 204, 204), width=8)
    d.line([(x1, y1), (x2, y2)], fill=(0, 204, 204), width=8)
    return img


def _mountain_car(pos: float):
    img, d = _canvas()
    xs = np.linspace(-1.2, 0.6, 100)
    to_px = lambda x, y: ((x + 1.2) / 1.8 * SIZE, SIZE * 0.9 - (y * 0.45 + 0.55) * SIZE * 0.8)
    d.line([to_px(x, math.sin(3 * x)) for x in xs], fill=(0, 0, 0), width=2)
    gx, gy = to_px(0.5, math.sin(1.5))
    d.line([(gx, gy), (gx, gy - 30)], fill=(0, 0, 0), width=2)
    cx, cy = to_px(pos, math.sin(3 * pos))
    d.ellipse([cx - 10, cy - 20, cx + 10, cy], fill=(200, 0, 0))
    return img


def grid_frame(obs: np.ndarray) -> np.ndarray:
    """A [H, W, C] binary grid (MinAtar) as an RGB image, one colour per channel."""
    obs = np.asarray(obs)
    h, w, c = obs.shape
    rgb = np.zeros((h, w, 3), np.uint8)
    for ch in range(c):
        rgb[obs[..., ch] > 0] = _PALETTE[ch % len(_PALETTE)]
    cell = max(1, SIZE // max(h, w))
    return np.kron(rgb, np.ones((cell, cell, 1), np.uint8))


def bar_frame(obs: np.ndarray) -> np.ndarray:
    """An observation vector drawn as bars: a frame for envs with no picture."""
    v = np.asarray(obs, np.float32).reshape(-1)[:64]
    img, d = _canvas()
    m = max(1e-6, float(np.max(np.abs(v)))) if v.size else 1.0
    width = SIZE / max(1, v.size)
    for i, x in enumerate(v):
        h = x / m * SIZE * 0.45
        d.rectangle([i * width + 1, SIZE / 2 - max(h, 0), (i + 1) * width - 1, SIZE / 2 - min(h, 0)],
                    fill=(0, 100, 200))
    d.line([(0, SIZE / 2), (SIZE, SIZE / 2)], fill=(0, 0, 0))
    return np.asarray(img)


def render_gymnax(name: str, env, state, params) -> np.ndarray:
    """An RGB uint8 frame for one (unbatched) gymnax env state."""
    if name == "Pendulum-v1":
        return np.asarray(_pendulum(float(state.theta)))
    if name == "CartPole-v1":
        return np.asarray(_cartpole(float(state.x), float(state.theta)))
    if name == "Acrobot-v1":
        return np.asarray(_acrobot(float(state.joint_angle1), float(state.joint_angle2)))
    if name in ("MountainCar-v0", "MountainCarContinuous-v0"):
        return np.asarray(_mountain_car(float(state.position)))
    obs = env.get_obs(state, params) if hasattr(env, "get_obs") else None
    if obs is None:
        obs = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(state)])
    obs = np.asarray(obs)
    if obs.ndim == 3:
        return grid_frame(obs)
    return bar_frame(obs)
