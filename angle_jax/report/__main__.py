"""Compare runs: python -m angle_jax.report RUN_DIR... [--out report/] [--threshold [ENV=]G] [--ref ENV=LO,HI]
                [--reps N] [--seed S]

Runs are grouped by label (by default the algo, plus the settings that tell runs of one algo and
env apart, and a sweep point's values; `LABEL=RUN_DIR` names one yourself); each group's seeds are
pooled. Writes report.md (a table of mean, median, IQM and optimality gap with 95% stratified
bootstrap intervals) and the figures (curves.png, aggregate.png, profile.png) into --out. All input
is read and checked before anything is written; bad input is one line on stderr and exit code 2.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np

from angle_jax.report import plots, stats
from angle_jax.report.runs import Group, RunError, group_runs, load_runs

PROG = "python -m angle_jax.report"
MARKER = "<!-- angle_jax report -->"
FIGURES = ("curves.png", "aggregate.png", "profile.png")


def parse_args(argv=None):
    from angle_jax.cli import Parser

    p = Parser(prog=PROG, description="Aggregate runs by label into report.md and figures.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories written by train.py; LABEL=RUN_DIR gives a run its label")
    p.add_argument("--out", default="report", help="output directory (default: report)")
    p.add_argument("--threshold", action="append", default=[], metavar="[ENV=]GAMMA",
                   help="optimality gap threshold in score units, for all envs or (ENV=GAMMA, repeatable) one "
                        "env (default: 1.0 for envs normalised by --ref, else no gap)")
    p.add_argument("--ref", action="append", default=[], metavar="ENV=LOW,HIGH",
                   help="normalise the scores of ENV as (score - LOW) / (HIGH - LOW)")
    p.add_argument("--reps", type=int, default=50000,
                   help="bootstrap repetitions, for intervals and profile bands (default: 50000, as rliable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    return p.parse_args(argv)


def run_specs(items: list[str]) -> list[tuple[str, str | None]]:
    """RUN_DIR or LABEL=RUN_DIR (an existing path is taken whole, even with '=' in it)."""
    specs = []
    for item in items:
        label, sep, path = item.partition("=")
        if sep and not Path(item).exists():
            if not label.strip():
                raise RunError(f"empty label in {item!r} (use LABEL=RUN_DIR)")
            specs.append((path, label.strip()))
        else:
            specs.append((item, None))
    return specs


def parse_refs(items: list[str]) -> dict[str, tuple[float, float]]:
    refs = {}
    for item in items:
        env, sep, rng = item.partition("=")
        try:
            low, high = (float(v) for v in rng.split(","))
        except ValueError:
            raise RunError(f"--ref {item!r}: expected ENV=LOW,HIGH, e.g. CartPole-v1=0,500") from None
        if not sep or not env:
            raise RunError(f"--ref {item!r}: expected ENV=LOW,HIGH, e.g. CartPole-v1=0,500")
        if not low < high:
            raise RunError(f"--ref {item!r}: LOW must be below HIGH")
        refs[env] = (low, high)
    return refs


def parse_thresholds(items: list[str]) -> tuple[float | None, dict[str, float]]:
    """--threshold values: (the one for all envs or None, {env: its own})."""
    common, per_env = None, {}
    for item in items:
        env, sep, value = item.rpartition("=")
        try:
            gamma = float(value)
        except ValueError:
            raise RunError(f"--threshold {item!r}: expected a number or ENV=NUMBER") from None
        if not np.isfinite(gamma) or (sep and not env):
            raise RunError(f"--threshold {item!r}: expected a finite number or ENV=NUMBER")
        if sep:
            per_env[env] = gamma
        elif common is not None:
            raise RunError("--threshold without ENV= is given twice")
        else:
            common = gamma
    return common, per_env


def check_out_dir(out: Path) -> None:
    """An output directory must be new, empty or a previous report (its report.md has MARKER)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        report = out / "report.md"
        if not (report.is_file() and report.read_text(errors="replace").startswith(MARKER)):
            raise RunError(f"--out {out} is a non-empty directory that holds no previous report; "
                           f"choose another --out or empty it")


def _fmt(e: stats.Estimate) -> str:
    return f"{e.value:.4g} [{e.low:.4g}, {e.high:.4g}]"


def evaluation_protocol(groups: list[Group]) -> str:
    """How the runs were evaluated (episodes, mode, evaluation seed), said once when all agree."""
    def protocol(run) -> str:
        c = run.config
        seed = c.get("eval_seed")
        return (f"{c.get('eval_episodes', '?')} {c.get('eval_mode', 'greedy')} episodes per seed, "
                + (f"eval_seed {seed}" if seed is not None else "evaluation seeds of an older version (per run)"))

    found = {f"{r.label} ({r.path.name})": protocol(r) for g in groups for r in g.runs}
    if len(set(found.values())) == 1:
        return next(iter(found.values())) + " for every run (the same episodes for every run and seed)."
    return "differs between runs: " + "; ".join(f"{label}: {p}" for label, p in found.items()) + "."


def markdown(groups: list[Group], estimates: list[dict[str, stats.Estimate]], args, refs,
             thresholds: list[float | None], figures: list[str], command: str) -> str:
    gap = any(t is not None for t in thresholds)
    cols = ["mean", "median", "IQM"] + (["optimality gap"] if gap else [])
    keys = ["mean", "median", "iqm"] + (["optimality_gap"] if gap else [])
    lines = [MARKER, "# Run comparison", ""]
    score = "final evaluation return per seed (each seed's mean over its evaluation episodes)"
    if refs:
        score += "; normalised as (score - low) / (high - low) for " + ", ".join(
            f"{env} [{lo:g}, {hi:g}]" for env, (lo, hi) in refs.items())
    by_env = dict.fromkeys((g.env, t) for g, t in zip(groups, thresholds) if t is not None)
    gaps = ("; optimality gap, the mean of max(threshold - score, 0), at threshold "
            + ", ".join(f"{t:g} ({env})" for env, t in by_env) + "." if gap
            else "; no optimality gap (give --threshold).")
    lines += [f"Score: {score}. Runs of one label are pooled: one score per seed, one task (env) per label.",
              "Estimators of rliable (Agarwal et al. 2021): mean; median of the per-task means (with one task, "
              "the mean again); IQM, the 25% trimmed mean of all scores" + gaps,
              f"Intervals: 95% percentile intervals of a stratified bootstrap (seeds resampled within each task), "
              f"{args.reps} repetitions, seed {args.seed}.",
              "Evaluation: " + evaluation_protocol(groups), ""]
    lines.append("| label | algo | env | seeds | " + " | ".join(f"{c} [95% CI]" for c in cols) + " |")
    lines.append("| --- | --- | --- | ---: | " + " | ".join("---" for _ in cols) + " |")
    for g, est in zip(groups, estimates):
        cells = [g.label, g.algo, g.env, str(len(g.final_return)),
                 *(_fmt(est[k]) if k in est else "n/a" for k in keys)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Runs", ""]
    for g in groups:
        for r in g.runs:
            seeds = ", ".join(str(s) for s in r.seeds)
            lines.append(f"- {g.label}: `{r.path}` (seeds {seeds}; final evaluation returns "
                         + ", ".join(f"{v:.4g}" for v in r.final_return) + ")")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    lines += ["", "## Command", "", "```", command, "```", ""]
    return "\n".join(lines)


def build(args):
    """Read and check everything; nothing is written here. Returns the groups, their scores
    (normalised where --ref says), estimates, the --ref ranges and each group's threshold."""
    if args.reps < 1:
        raise RunError(f"--reps must be >= 1, got {args.reps}")
    refs = parse_refs(args.ref)
    common, per_env = parse_thresholds(args.threshold)
    groups = group_runs(load_runs(run_specs(args.runs)))
    envs = sorted({g.env for g in groups})
    unknown = sorted((set(refs) | set(per_env)) - set(envs))
    if unknown:
        raise RunError(f"--ref/--threshold for {', '.join(unknown)}, which no run uses; the runs' envs: "
                       + ", ".join(envs))
    rng = stats.as_generator(args.seed)
    scores, estimates, thresholds = [], [], []
    for g in groups:
        s = stats.normalize(g.scores, *refs[g.env]) if g.env in refs else g.scores
        gamma = per_env.get(g.env, common if common is not None else (1.0 if g.env in refs else None))
        scores.append(s)
        thresholds.append(gamma)
        estimates.append(stats.aggregate(s, gamma, args.reps, rng))
    return groups, scores, estimates, refs, thresholds


def render(groups, scores, estimates, args, refs, notice) -> dict[str, bytes]:
    """The figures as PNG bytes, or none (with one notice) when matplotlib is missing."""
    unit = "score" if refs else "final evaluation return"
    labels = [g.label for g in groups]
    try:
        figs = {"curves.png": plots.report_curves(groups),
                "aggregate.png": plots.aggregate_chart(labels, [g.env for g in groups], estimates, unit),
                "profile.png": plots.profile_chart(labels, [g.env for g in groups], scores, args.reps,
                                                   args.seed, unit=unit)}
    except plots.MatplotlibMissing as e:
        notice(str(e))
        return {}
    return {name: plots.png_bytes(fig) for name, fig in figs.items()}


def main(argv=None) -> int:
    from angle_jax.cli import fail

    args = parse_args(argv)
    command = shlex.join([*PROG.split(), *(sys.argv[1:] if argv is None else argv)])
    try:
        if not args.runs:
            raise RunError("no run directories given")
        out = Path(args.out)
        check_out_dir(out)
        groups, scores, estimates, refs, thresholds = build(args)
    except (RunError, ValueError) as e:
        fail(str(e), PROG)
    notice = lambda message: print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    pngs = render(groups, scores, estimates, args, refs, notice)
    text = markdown(groups, estimates, args, refs, thresholds, list(pngs), command)

    from angle_jax.checkpoint import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:  # figures of a previous report that this one does not have
        if name not in pngs and (out / name).exists():
            (out / name).unlink()
    for name, data in pngs.items():
        atomic_write(out / name, data)
    atomic_write(out / "report.md", text)
    print(f"wrote {out / 'report.md'}" + (f" and {', '.join(pngs)}" if pngs else "") + f" ({len(groups)} labels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
