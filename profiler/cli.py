"""``python -m profiler {run,list,report,compare,bench-report}``: the command line."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path

from profiler import suite as suites

EPILOG = """examples:
  python -m profiler run                      # the smoke suite (< 3 min on 2 CPU cores)
  python -m profiler run min8bit --device cpu --steps 40
  python -m profiler run nlp --filter 'gpt/.*8bit'
  python -m profiler run smoke --nproc 2 --strategy fsdp2   # each row on 2 ranks (torch.distributed.run)
  python -m profiler run --resume reports/nlp/20250101-120000-cpu
  python -m profiler report reports/smoke/20250101-120000-cpu
  python -m profiler compare reports/smoke/RUN_CPU reports/smoke/RUN_GPU
  python -m profiler bench-report .benchmarks/bench-*.json --baseline tests/benchmarks/baseline.json
"""


class CliError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _at_least(minimum: int, why: str = ""):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}{why}, got {value}")
        return value

    return parse


_positive = _at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m profiler",
        description="Measure what 8-bit optimizers save (memory), cost (step time) and change (loss) on a zoo of models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{run,list,report,compare,bench-report}"
    )

    run = commands.add_parser(
        "run",
        help="run a suite and write reports/<suite>/<run-id>/",
        description="Train every (model, optimizer configuration, seed) of a suite, each in a fresh worker "
        "process, appending one row to results.csv as each finishes; then write summary.md and plots. "
        "README.md ('Profiler') describes every column of results.csv. Exit status: 0 when every row "
        "finished (ok, oom or diverged: results), 1 when a row ended in an error (its status column says "
        "why), 2 for a bad argument.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "suite", nargs="?", help="a suite name in suites/ or a path to a .toml file (default: smoke)"
    )
    run.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="where to train (default: auto = cuda if available)"
    )
    run.add_argument(
        "--steps",
        type=_at_least(2, " (one warm-up step and one timed step)"),
        help="training steps per run, at least 2 (default: the suite's `steps`)",
    )
    run.add_argument("--seeds", type=_positive, help="seeds per configuration (default: the suite's `seeds`)")
    run.add_argument(
        "--out", type=Path, help="reports root (default: reports/); the run goes to OUT/<suite>/<run-id>/"
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a killed run; rows already in its results.csv are skipped",
    )
    run.add_argument(
        "--threads",
        type=_positive,
        help="torch threads per run (default: torch's default, one per core); 1 is steadier on a busy machine",
    )
    run.add_argument(
        "--timeout",
        type=_positive,
        metavar="SECONDS",
        help="kill a run after this long and record it as an error (default: no limit)",
    )
    run.add_argument(
        "--filter",
        metavar="PATTERN",
        help="only runs whose key MODEL/OPTIMIZER/seedN matches this regular expression, plus the "
        "baseline rows they are compared with",
    )
    run.add_argument(
        "--nproc",
        type=_positive,
        help="train each row on N processes with torch.distributed (gloo on cpu, NCCL on cuda); "
        "memory is reported per rank, step time of the slowest rank (default: one process, no group)",
    )
    run.add_argument(
        "--strategy",
        choices=["ddp", "fsdp2"],
        help="with --nproc: ddp (replicated model and state) or fsdp2 (fully_shard: sharded) (default: ddp)",
    )

    commands.add_parser(
        "list",
        help="list suites and models",
        description="List the suites in suites/ and the models of the zoo.",
    )

    rep = commands.add_parser(
        "report",
        help="rebuild summary.md and plots of a run",
        description="Rebuild summary.md and the PNG plots from a run's results.csv and curves.csv.",
    )
    rep.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory (reports/<suite>/<run-id>)"
    )

    cmp = commands.add_parser(
        "compare",
        help="compare two runs side by side",
        description="The configurations (model, optimizer) present in both runs side by side, with B/A ratios "
        "of optimizer-state memory, peak memory, step time and final loss (means over seeds).",
    )
    cmp.add_argument("run_a", type=Path, metavar="RUN_A", help="the run compared against (ratios are B/A)")
    cmp.add_argument("run_b", type=Path, metavar="RUN_B", help="the run compared")
    cmp.add_argument("--out", type=Path, metavar="FILE", help="also write the table as markdown to FILE")

    bench = commands.add_parser(
        "bench-report",
        help="benchmark ratios across commits from pytest-benchmark JSON",
        description="Tables and plots of the kernel/reference ratio of every gated benchmark across runs "
        "(pytest --benchmark-json files, e.g. from `make bench`), labelled by commit.",
    )
    bench.add_argument("results", type=Path, nargs="+", metavar="RESULT.json")
    bench.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: reports/bench/<timestamp>)"
    )
    bench.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help="draw this baseline.json and its gate margin on the trend",
    )
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown option is reported by its subcommand, with that
    subcommand's usage and the nearest option it has (argparse leaves both to the top level)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = next(a for a in parser._subparsers._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        known = [o for a in command._actions for o in a.option_strings]
        hints = [difflib.get_close_matches(e.split("=")[0], known, n=1) for e in extras if e.startswith("-")]
        hint = "; did you mean " + ", ".join(h[0] for h in hints if h) + "?" if any(hints) else ""
        command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return {
            "run": cmd_run,
            "list": cmd_list,
            "report": cmd_report,
            "compare": cmd_compare,
            "bench-report": cmd_bench_report,
        }[args.command](args)
    except (CliError, suites.SuiteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as a piped tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # an output path that is a file, read-only, or under a missing folder
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def _check_run_dir(run_dir: Path) -> Path:
    if not (run_dir / "results.csv").is_file():
        raise CliError(f"{run_dir} is not a run directory (no results.csv)")
    return run_dir


# --------------------------------------------------------------------------------------------- run


def _new_run(args) -> tuple[suites.Suite, Path, dict]:
    from profiler import runner

    suite = suites.load(args.suite or "smoke", steps=args.steps, seeds=args.seeds)
    device = runner.resolve_device(args.device or "auto")
    _check_filter(suite, device, args.filter)  # before anything is written
    out = args.out if args.out is not None else Path("reports")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = out / suite.name / f"{stamp}-{device}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = out / suite.name / f"{stamp}-{device}-{n}"
    run_dir.mkdir(parents=True)
    shutil.copyfile(suite.path, run_dir / "suite.toml")
    settings = {
        "suite": suite.name,
        "description": suite.description,
        "source": str(suite.path),
        "steps": suite.steps,
        "warmup": suite.warmup,
        "seeds": suite.seeds,
        "device": device,
        "filter": args.filter,
        "timeout_s": args.timeout,
        "threads": args.threads,
        "nproc": args.nproc,
        "strategy": (args.strategy or "ddp") if args.nproc else None,
    }
    from profiler import report

    report.write_atomic(run_dir / "run.json", json.dumps(settings, indent=2) + "\n")
    env = report.environment(device, runner.device_name(device), args.threads)
    report.write_atomic(run_dir / "env.json", json.dumps(env, indent=2) + "\n")
    (run_dir / "results.csv").write_text(",".join(runner.RESULT_COLUMNS) + "\n")
    return suite, run_dir, settings


def _check_filter(suite: suites.Suite, device: str, pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        runs = suite.runs(device, pattern)
    except re.error as e:
        raise CliError(f"--filter: not a valid regular expression {pattern!r}: {e}") from None
    if not runs:
        raise CliError(f"--filter {pattern!r} matches no run of suite {suite.name!r}")


def _resumed_run(args) -> tuple[suites.Suite, Path, dict]:
    given = [
        f"--{k}"
        for k in ("device", "steps", "seeds", "out", "filter", "timeout", "nproc", "strategy", "threads")
        if getattr(args, k) is not None
    ]
    if args.suite:
        given.insert(0, "SUITE")
    if given:
        raise CliError(
            f"--resume takes its settings from RUN_DIR/run.json; do not also give {', '.join(given)}"
        )
    try:
        suite, settings = suites.load_recorded(args.resume)
    except suites.SuiteError as e:
        raise CliError(f"--resume: {e}") from None
    return suite, args.resume, settings


def cmd_run(args) -> int:
    from tqdm import tqdm

    from profiler import report, runner

    if args.strategy and not args.nproc:
        raise CliError("--strategy needs --nproc N (the number of processes)")
    suite, run_dir, settings = _resumed_run(args) if args.resume else _new_run(args)
    runs = suite.runs(settings["device"], settings["filter"])
    if not runs:
        raise CliError(f"--filter {settings['filter']!r} matches no run of suite {suite.name!r}")
    done = report.finished_keys(run_dir)
    pending = [r for r in runs if r.key not in done]
    print(
        f"suite {suite.name}: {len(runs)} runs ({len(runs) - len(pending)} already done) on {settings['device']} -> {run_dir}"
    )
    try:
        for i, spec in enumerate(pending, 1):
            desc = f"[{i}/{len(pending)}] {spec.key}"
            with tqdm(total=spec.steps, desc=desc, unit="step", leave=False, dynamic_ncols=True) as bar:

                def progress(step: int, loss: float, bar=bar) -> None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

                if settings.get("nproc"):  # torch.distributed: a process group per row
                    from profiler import distributed

                    row, losses = distributed.run_distributed(
                        spec, settings["nproc"], settings["strategy"], progress, settings.get("timeout_s"),
                        settings.get("threads"),
                    )  # fmt: skip
                else:
                    row, losses = runner.run_isolated(
                        spec, progress, settings.get("timeout_s"), settings.get("threads")
                    )
            report.append_result(run_dir, row, losses)
            tqdm.write(f"{desc}: {row['status']}" + (f", {row['wall_s']:.1f}s" if row.get("wall_s") else ""))
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m profiler run --resume {run_dir}", file=sys.stderr)
        return 130
    _write_reports(run_dir)
    results = report.read_results(run_dir)
    # A script or CI step must not mistake a broken run for a measurement. `oom` and `diverged` rows
    # are results (that configuration does not fit, or that learning rate diverges); `error` rows are not.
    failed = results[results["status"].str.startswith("error")]
    if not failed.empty:
        print(
            f"error: {len(failed)} of {len(results)} rows failed ({', '.join(failed['key'])}); their status "
            f"column in {run_dir / 'results.csv'} says why",
            file=sys.stderr,
        )
        return 1
    return 0


def _write_reports(run_dir: Path) -> int:
    from profiler import plots, report

    try:
        made = plots.make_all(run_dir)
    except Exception as error:  # the rows and the summary matter more than a picture
        print(f"warning: plots not written: {type(error).__name__}: {error}", file=sys.stderr)
        made = []
    incomplete = report.incomplete_note(run_dir)  # reads the recorded suite back: once, for both uses
    summary = report.write_summary(run_dir, made, incomplete)
    print()
    print(report.terminal_summary(run_dir))
    print(f"\nreport: {summary}" + "".join(f"\nplot:   {p}" for p in made))
    if incomplete:
        print(f"warning: {incomplete}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------- list / report / compare


def cmd_list(args) -> int:
    from profiler import zoo

    print("suites (suites/*.toml; run with: python -m profiler run NAME):")
    for name in suites.available_suites():
        try:
            s = suites.load(name)
            what = f"{s.description}  [{len(s.models)} models x {len(s.optimizers)} optimizer configs x {s.seeds} seeds, {s.steps} steps]"
        except suites.SuiteError as e:
            what = f"(invalid: {str(e).splitlines()[-1].strip()})"
        print(f"  {name:<12} {what}")
    print("\nmodels (zoo; every model takes width, depth, batch_size):")
    for name in zoo.MODELS:
        options = ", ".join(f"{k}={v}" for k, v in zoo.model_options(name).items())
        print(f"  {name:<8} {zoo.describe(name)}" + (f"  [options: {options}]" if options else ""))
    return 0


def cmd_report(args) -> int:
    return _write_reports(_check_run_dir(args.run_dir))


def cmd_compare(args) -> int:
    from profiler import report

    table, notes = report.compare_runs(_check_run_dir(args.run_a), _check_run_dir(args.run_b))
    text = (
        f"A = {args.run_a}\nB = {args.run_b}\n\n"
        + report.markdown(table)
        + "".join(f"\n{n}" for n in notes)
        + "\n"
    )
    print(text)
    if args.out:
        report.write_atomic(args.out, text)
    return 0


def cmd_bench_report(args) -> int:
    from profiler import bench_report, report

    out = (
        args.out
        if args.out is not None
        else Path("reports") / "bench" / datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    summary, made, trend = bench_report.write(args.results, out, args.baseline)
    print(report.plain(trend))
    print(f"\nreport: {summary}" + "".join(f"\nplot:   {p}" for p in made))
    return 0
