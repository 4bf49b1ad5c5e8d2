"""Plots of one run directory: `curves.png` (returns and losses vs env steps) and, for a sweep,
`sweep.png` (final return by grid point), written into the run directory.

    python -m angle_jax.report.curves RUN_DIR

`write_run_plots(run_dir)` is what a trainer calls at the end of a run: without matplotlib it
prints one notice and returns no paths.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from angle_jax.report import plots
from angle_jax.report.runs import RunError, load_run


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_run_plots(run_dir: str | Path, notice: Callable[[str], None] = _stderr) -> list[Path]:
    """Write curves.png (and sweep.png for a sweep run) into `run_dir`; returns the paths written.
    Raises RunError for a directory that is not a run."""
    run_dir = Path(run_dir)
    runs = load_run(run_dir)
    title = f"{runs[0].algo} on {runs[0].env}  ({run_dir.name}, {sum(len(r.seeds) for r in runs)} runs)"
    try:
        figures = {"curves.png": plots.run_curves(runs, title)}
        if runs[0].point:
            figures["sweep.png"] = plots.sweep_points(runs, title)
    except plots.MatplotlibMissing as e:
        notice(str(e))
        return []
    return [plots.write_png(fig, run_dir / name) for name, fig in figures.items()]


def main(argv=None) -> int:
    from angle_jax.cli import Parser, fail

    prog = "python -m angle_jax.report.curves"
    p = Parser(prog=prog, description="Write curves.png (and sweep.png for a sweep) into a run directory.")
    p.add_argument("run_dir", help="a run directory written by train.py")
    args = p.parse_args(argv)
    try:
        paths = write_run_plots(args.run_dir)
    except RunError as e:
        fail(str(e), prog)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
