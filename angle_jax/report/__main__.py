"""Compare runs: python -m angle_jax.report RUN_DIR... [--out report/] [--threshold G] [--reps N] [--seed S]

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
    p.add_argument("--threshold", type=float, metavar="GAMMA",
                   help="optimality gap threshold, in score units (default: 1.0 with --ref, else no gap)")
    p.add_argument("--ref", action="append", default=[], metavar="ENV=LOW,HIGH",
                   help="normalise the scores of ENV as (score - LOW) / (HIGH - LOW)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions (default: 2000)")
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


def markdown(groups: list[Group], estimates: list[dict[str, stats.Estimate]], args, refs, threshold,
             figures: list[str], command: str) -> str:
    cols = ["mean", "median", "IQM"] + (["optimality gap"] if threshold is not None else [])
    keys = ["mean", "median", "iqm"] + (["optimality_gap"] if threshold is not None else [])
    lines = [MARKER, "# Run comparison", ""]
    score = "final evaluation return per seed (each seed's mean over its evaluation episodes)"
    if refs:
        score += "; normalised as (score - low) / (high - low) for " + ", ".join(
            f"{env} [{lo:g}, {hi:g}]" for env, (lo, hi) in refs.items())
    lines += [f"Score: {score}. Runs of one label are pooled: one score per seed, one task (env) per label.",
              f"Estimators of rliable (Agarwal et al. 2021): mean; median of the per-task means (with one task, "
              f"the mean again); IQM, the 25% trimmed mean of all scores"
              + (f"; optimality gap at threshold {threshold:g}, mean of max({threshold:g} - score, 0)."
                 if threshold is not None else "; no optimality gap (give --threshold)."),
              f"Intervals: 95% percentile intervals of a stratified bootstrap (seeds resampled within each task), "
              f"{args.reps} repetitions, seed {args.seed}.", ""]
    lines.append("| label | algo | env | seeds | " + " | ".join(f"{c} [95% CI]" for c in cols) + " |")
    lines.append("| --- | --- | --- | ---: | " + " | ".join("---" for _ in cols) + " |")
    for g, est in zip(groups, estimates):
        cells = [g.label, g.algo, g.env, str(len(g.final_return)), *(_fmt(est[k]) for k in keys)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Runs", ""]
    for g in groups:
        for r in g.runs:
            seeds = ", ".join(str(s) for s in r.seeds)
            lines.append(f"- {g.label}: `{r.path}` (seeds {seeds}; final returns "
                         + ", ".join(f"{v:.4g}" for v in r.final_return) + ")")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    lines += ["", "## Command", "", "```", command, "```", ""]
    return "\n".join(lines)


def build(args) -> tuple[list[Group], list[dict], dict, float | None]:
    """Read and check everything; nothing is written here."""
    if args.reps < 1:
        raise RunError(f"--reps must be >= 1, got {args.reps}")
    refs = parse_refs(args.ref)
    groups = group_runs(load_runs(run_specs(args.runs)))
    unknown = sorted(set(refs) - {g.env for g in groups})
    if unknown:
        raise RunError(f"--ref for {', '.join(unknown)}, which no run uses; the runs' envs: "
                       + ", ".join(sorted({g.env for g in groups})))
    threshold = args.threshold if args.threshold is not None else (1.0 if refs else None)
    estimates = []
    rng = stats.as_generator(args.seed)
    for g in groups:
        scores = g.scores
        if g.env in refs:
            scores = stats.normalize(scores, *refs[g.env])
        estimates.append(stats.aggregate(scores, threshold, args.reps, rng))
    return groups, estimates, refs, threshold


def render(groups, estimates, args, refs, notice) -> dict[str, bytes]:
    """The figures as PNG bytes, or none (with one notice) when matplotlib is missing."""
    unit = "score" if refs else "final evaluation return"
    try:
        figs = {"curves.png": plots.report_curves(groups),
                "aggregate.png": plots.aggregate_chart([g.label for g in groups], estimates, unit),
                "profile.png": plots.profile_chart(groups, args.reps, args.seed)}
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
        groups, estimates, refs, threshold = build(args)
    except (RunError, ValueError) as e:
        fail(str(e), PROG)
    notice = lambda message: print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    pngs = render(groups, estimates, args, refs, notice)
    text = markdown(groups, estimates, args, refs, threshold, list(pngs), command)

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
