"""PNG figures of runs and reports, rendered with matplotlib's Agg canvas.

matplotlib is optional: it is imported inside `_figure`, and a missing install raises
`MatplotlibMissing` (one line, with the pip command) so callers can skip plots and go on.
No pyplot and no global backend switch: each figure is a `Figure` on its own Agg canvas, with
a fixed size and dpi, so a PNG's pixel size is `SIZES[name] * DPI`. Files are written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from angle_jax.report import stats
from angle_jax.report.runs import Group, Run

DPI = 100
SIZES = {  # inches (width, height); pixels = inches * DPI
    "curves": (12.0, 4.5),
    "sweep": (8.0, 4.5),
    "report_curves": (12.0, 7.0),
    "aggregate": (12.0, 6.0),
    "profile": (10.0, 4.5),
}
NOTICE = "matplotlib is not installed: plots skipped (pip install matplotlib)"


class MatplotlibMissing(ImportError):
    """matplotlib cannot be imported; str() is the one-line notice for the user."""


def pixel_size(name: str) -> tuple[int, int]:
    """(width, height) in pixels of the PNG written for figure `name`."""
    w, h = SIZES[name]
    return round(w * DPI), round(h * DPI)


def _figure(name: str):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissing(NOTICE) from None
    fig = Figure(figsize=SIZES[name], dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes at its own size (no tight bounding box, so the size is fixed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def write_png(fig, path: str | Path) -> Path:
    from angle_jax.checkpoint import atomic_write

    atomic_write(path, png_bytes(fig))
    return Path(path)


def _band(ax, steps, values, color, label, linestyle="-"):
    """Mean over seeds with a min-max band; chunks where no seed logged a value are skipped."""
    values = np.asarray(values, np.float64)
    ok = np.isfinite(values).any(axis=1)
    if not ok.any():
        return
    steps, values = np.asarray(steps)[ok], values[ok]
    with np.errstate(all="ignore"):
        mid = np.nanmean(values, axis=1)
        low, high = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
    ax.plot(steps, mid, color=color, linestyle=linestyle, label=label, marker="o" if len(steps) < 3 else None)
    if values.shape[1] > 1:
        ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _pooled(runs) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Runs with the same step grids, seeds side by side: [(steps, train, eval_steps, eval)]."""
    out: list[list] = []
    for r in runs:
        c = r.curves
        for seg in out:
            if np.array_equal(seg[0], c.steps) and np.array_equal(seg[2], c.eval_steps):
                seg[1] = np.concatenate([seg[1], c.train_return], axis=1)
                seg[3] = np.concatenate([seg[3], c.eval_return], axis=1)
                break
        else:
            out.append([c.steps, c.train_return, c.eval_steps, c.eval_return])
    return [tuple(seg) for seg in out]


def run_curves(runs: list[Run], title: str):
    """One run directory (its grid points for a sweep): returns vs env steps, losses beside."""
    fig = _figure("curves")
    ax_ret, ax_loss = fig.subplots(1, 2)
    colors = _colors(len(runs))
    for run, color in zip(runs, colors):
        name = run.label if len(runs) > 1 else ""
        c = run.curves
        _band(ax_ret, c.steps, c.train_return, color, f"{name} training".strip())
        _band(ax_ret, c.eval_steps, c.eval_return, color, f"{name} evaluation".strip(), linestyle="--")
        for (loss, values), ls in zip(sorted(c.losses.items()), ["-", "--", ":", "-."] * 4):
            _band(ax_loss, c.steps, values, color, f"{name} {loss}".strip(), linestyle=ls)
    ax_ret.set(xlabel="env steps", ylabel="return", title="return (mean over seeds, band min-max)")
    ax_loss.set(xlabel="env steps", ylabel="loss", title="losses (mean over seeds, band min-max)")
    for ax in (ax_ret, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def sweep_points(runs: list[Run], title: str, reps: int = 2000, seed: int = 0):
    """Final evaluation return by grid point: each seed, the mean and its 95% bootstrap interval."""
    fig = _figure("sweep")
    ax = fig.subplots()
    rng = np.random.default_rng(seed)
    x = np.arange(len(runs))
    for i, run in enumerate(runs):
        scores = run.final_return[:, None]
        low, high = stats.bootstrap_interval(scores, stats.mean, reps, rng)
        m = float(stats.mean(scores))
        ax.errorbar([i], [m], yerr=[[m - low], [high - m]], fmt="o", color="C0", capsize=4,
                    label="mean, 95% CI" if i == 0 else None)
        ax.scatter(np.full(len(run.final_return), i + 0.15), run.final_return, s=12, color="C1",
                   label="seeds" if i == 0 else None)
    ax.set_xticks(x, [" ".join(f"{k}={v:g}" for k, v in r.point.items()) or r.label for r in runs],
                  rotation=20, fontsize=8)
    ax.set(ylabel="final evaluation return", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _envs(envs: list[str]) -> list[str]:
    return list(dict.fromkeys(envs))


def report_curves(groups: list[Group]):
    """Training (top) and evaluation (bottom) return vs env steps of every label, one column per env
    (mean over seeds, min-max band)."""
    fig = _figure("report_curves")
    envs = _envs([g.env for g in groups])
    axes = fig.subplots(2, len(envs), squeeze=False)
    for group, color in zip(groups, _colors(len(groups))):
        col = envs.index(group.env)
        for k, (steps, train, eval_steps, eval_return) in enumerate(_pooled(group.runs)):
            name = group.label if k == 0 else None
            _band(axes[0, col], steps, train, color, name)
            _band(axes[1, col], eval_steps, eval_return, color, name)
    for col, env in enumerate(envs):
        axes[0, col].set(title=f"{env}: training return", ylabel="return")
        axes[1, col].set(title=f"{env}: evaluation return", xlabel="env steps", ylabel="return")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle("mean over seeds, band min-max", fontsize=9)
    fig.tight_layout()
    return fig


def _wrap(label: str, width: int = 32) -> str:
    import textwrap

    return textwrap.fill(label, width, break_long_words=True)


def aggregate_chart(labels: list[str], envs: list[str], estimates: list[dict[str, stats.Estimate]],
                    unit: str = "final evaluation return"):
    """Columns: mean, median, IQM, optimality gap; one row of panels per env (its own scale), one
    line per label: the point estimate and its 95% interval."""
    fig = _figure("aggregate")
    names = [m for m in stats.METRICS if any(m in e for e in estimates)]
    rows = _envs(envs)
    axes = fig.subplots(len(rows), len(names), squeeze=False)
    colors = _colors(len(labels))
    for r, env in enumerate(rows):
        idx = [i for i, e in enumerate(envs) if e == env]
        y = np.arange(len(idx))[::-1]
        for c, name in enumerate(names):
            ax = axes[r, c]
            for yi, i in zip(y, idx):
                if name not in estimates[i]:
                    continue
                e = estimates[i][name]
                ax.plot([e.low, e.high], [yi, yi], color=colors[i], linewidth=6, alpha=0.5, solid_capstyle="butt")
                ax.plot([e.value], [yi], "|", color="black", markersize=14)
            ax.set_ylim(-0.6, len(idx) - 0.4)
            ax.grid(axis="x", alpha=0.3)
            if r == 0:
                ax.set_title({"iqm": "IQM", "optimality_gap": "optimality gap"}.get(name, name))
            if c == 0:
                ax.set_yticks(y, [_wrap(labels[i]) for i in idx], fontsize=7)
                ax.set_ylabel(env, fontsize=8)
            else:
                ax.set_yticks(y, [])
    fig.supxlabel(f"{unit} (point estimate and 95% stratified bootstrap CI)", fontsize=9)
    fig.tight_layout()
    return fig


def profile_chart(labels: list[str], envs: list[str], scores: list[np.ndarray], reps: int = 2000,
                  seed: int = 0, points: int = 101, unit: str = "final evaluation return"):
    """Performance profiles, one panel per env: the fraction of runs with score > tau, with 95%
    stratified bootstrap bands. `scores[i]` is label i's `[runs, tasks]` matrix."""
    fig = _figure("profile")
    panels = _envs(envs)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    rng = np.random.default_rng(seed)
    colors = _colors(len(labels))
    for col, env in enumerate(panels):
        idx = [i for i, e in enumerate(envs) if e == env]
        pooled = np.concatenate([np.ravel(scores[i]) for i in idx])
        lo, hi = float(pooled.min()), float(pooled.max())
        pad = 0.05 * (hi - lo) if hi > lo else max(1.0, abs(lo)) * 0.05
        taus = np.linspace(lo - pad, hi + pad, points)
        ax = axes[col]
        for i in idx:
            profile, low, high = stats.performance_profile_bands(scores[i], taus, reps, rng)
            ax.plot(taus, profile, color=colors[i], label=labels[i])
            ax.fill_between(taus, low, high, color=colors[i], alpha=0.2, linewidth=0)
        ax.set(xlabel=f"{unit} (tau)", title=env, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("fraction of runs with score > tau")
    fig.suptitle("performance profile (95% stratified bootstrap bands)", fontsize=9)
    fig.tight_layout()
    return fig
