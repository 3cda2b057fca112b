"""``python -m profiler bench-report RESULT.json [RESULT2.json ...]``: benchmark trends across commits.

Reads pytest-benchmark JSON files (``make bench`` writes one per run) and builds the same kind of
pandas tables and matplotlib plots as a profiler run. Every benchmark that records the agreed
``extra_info`` (``gate_key``, ``ratio``, ``reference``, ``bytes_moved``, ``gbps``; see
``tests/benchmarks/_bench.py``) becomes one row per (run, gate key); runs are ordered by time and
labelled by their commit (``commit_info.id`` of the JSON).

Output directory (default ``reports/bench/<timestamp>/``):

- ``bench.csv``: the long table, one row per (run, gate key), absolute times included;
- ``bench_summary.md``: ratio per gate key and run (the trend), and the latest run in detail;
- ``bench_ratio_trend.png``: ratio per gate key across runs, the baseline and its margin dashed;
- ``bench_times.png``: kernel and reference medians across runs (absolute times: plotted, never gated).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from profiler import plots, report  # noqa: E402

COLUMNS = [
    "run",
    "order",
    "file",
    "commit",
    "datetime",
    "gate_key",
    "family",
    "device",
    "name",
    "reference",
    "ratio",
    "kernel_median_s",
    "kernel_min_s",
    "reference_median_s",
    "bytes_moved",
    "gbps",
    "rounds",
    "threads",
    "isa",
]


class BenchReportError(ValueError):
    """A file that is not pytest-benchmark JSON (printed by the CLI as one line)."""


def _commit_label(commit_info: dict) -> str:
    commit = str(commit_info.get("id") or "unknown")[:8]
    return commit + ("+dirty" if commit_info.get("dirty") else "")


def _read(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchReportError(f"{path}: cannot read pytest-benchmark JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BenchReportError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def load(paths: list[Path]) -> pd.DataFrame:
    """The long table: one row per (file, benchmark with a ``gate_key``), runs ordered by time."""
    runs = []
    for path in paths:
        data = _read(path)
        commit_info = data.get("commit_info") or {}
        when = data.get("datetime") or commit_info.get("time") or ""
        runs.append((str(when), str(path), data, _commit_label(commit_info)))
    runs.sort(key=lambda r: r[0])
    rows = []
    seen: dict[str, int] = {}
    for order, (when, path, data, commit) in enumerate(runs):
        seen[commit] = seen.get(commit, 0) + 1
        label = commit if seen[commit] == 1 else f"{commit}#{seen[commit]}"
        for bench in data["benchmarks"]:
            info = bench.get("extra_info") or {}
            key = info.get("gate_key")
            if not key:
                continue
            stats = bench.get("stats") or {}
            rows.append(
                {
                    "run": label,
                    "order": order,
                    "file": path,
                    "commit": commit,
                    "datetime": when,
                    "gate_key": key,
                    "family": str(key).split("-")[0],
                    "device": info.get("device", "cpu"),
                    "name": bench.get("name", ""),
                    "reference": info.get("reference", ""),
                    "ratio": _float(info.get("ratio")),
                    "kernel_median_s": _float(stats.get("median")),
                    "kernel_min_s": _float(stats.get("min")),
                    "reference_median_s": _float(info.get("reference_median_s")),
                    "bytes_moved": _float(info.get("bytes_moved")),
                    "gbps": _float(info.get("gbps")),
                    "rounds": stats.get("rounds"),
                    "threads": info.get("threads"),
                    "isa": info.get("isa"),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def load_baseline(path: Path | None) -> tuple[dict[str, float], float | None]:
    """Baseline ratio per gate key and the margin, from ``tests/benchmarks/baseline.json``."""
    if path is None or not Path(path).is_file():
        return {}, None
    data = json.loads(Path(path).read_text())
    ratios = {k: float(v["ratio"]) for k, v in (data.get("benchmarks") or {}).items() if "ratio" in v}
    return ratios, data.get("margin")


# ------------------------------------------------------------------------------------------ tables


def run_labels(frame: pd.DataFrame) -> list[str]:
    return list(frame.sort_values("order")["run"].drop_duplicates())


def trend_table(frame: pd.DataFrame, baseline: dict[str, float] | None = None) -> pd.DataFrame:
    """Ratio per gate key (rows) and run (columns, oldest first), plus the baseline and the change of
    the latest run against the first (or against the baseline when there is one)."""
    labels = run_labels(frame)
    wide = frame.pivot_table(index="gate_key", columns="run", values="ratio", aggfunc="first")
    wide = wide.reindex(columns=labels)
    table = pd.DataFrame({"gate key": wide.index})
    if baseline:
        table["baseline"] = [report._fmt_ratio(baseline.get(k, math.nan)) for k in wide.index]
    for label in labels:
        table[label] = [report._fmt_ratio(v) for v in wide[label]]
    latest = wide[labels[-1]]
    start = (
        pd.Series([baseline.get(k, math.nan) for k in wide.index], index=wide.index)
        if baseline
        else wide[labels[0]]
    )
    table["latest vs " + ("baseline" if baseline else "first")] = [
        report._fmt_pct(v) for v in (latest / start - 1)
    ]
    return table


def latest_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The latest run in detail: absolute medians (for the record), GB/s and the gated ratio."""
    latest = frame[frame["order"] == frame["order"].max()].sort_values("gate_key")
    return pd.DataFrame(
        {
            "gate key": latest["gate_key"],
            "kernel ms": [report._fmt_num(v * 1e3) for v in latest["kernel_median_s"]],
            "reference ms": [report._fmt_num(v * 1e3) for v in latest["reference_median_s"]],
            "ratio": [report._fmt_ratio(v) for v in latest["ratio"]],
            "GB/s": [report._fmt_num(v) for v in latest["gbps"]],
            "reference": latest["reference"],
        }
    )


# ------------------------------------------------------------------------------------------- plots


def _trend_panels(frame: pd.DataFrame, path: Path, draw, ylabel: str, title: str) -> Path | None:
    if frame.empty:
        return None
    labels = run_labels(frame)
    families = sorted(frame["family"].unique())
    fig, axes = plots._grid(len(families))
    for ax, family in zip(axes, families):
        rows = frame[frame["family"] == family]
        for i, key in enumerate(sorted(rows["gate_key"].unique())):
            draw(ax, rows[rows["gate_key"] == key].sort_values("order"), key, f"C{i % 10}")
        ax.set_title(family)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return plots._save(fig, path)


def ratio_trend(
    frame: pd.DataFrame, path: Path, baseline: dict[str, float] | None = None, margin: float | None = None
) -> Path | None:
    """Ratio (kernel / reference) per gate key across runs; the baseline dotted, its limit dashed."""
    baseline = baseline or {}

    def draw(ax, rows, key, color):
        ax.plot(rows["order"], rows["ratio"], marker="o", ms=3, color=color, label=key.split("-", 1)[-1])
        if key in baseline:
            ax.axhline(baseline[key], color=color, ls=":", lw=0.8)
            if margin:
                ax.axhline(baseline[key] * (1 + margin), color=color, ls="--", lw=0.8, alpha=0.6)

    note = f" (dotted: baseline; dashed: +{margin:.0%} gate limit)" if baseline and margin else ""
    return _trend_panels(frame, path, draw, "kernel / reference", "Ratio to the same-run reference" + note)


def times_trend(frame: pd.DataFrame, path: Path) -> Path | None:
    """Kernel median (solid) and reference median (dashed) per gate key across runs, in ms."""

    def draw(ax, rows, key, color):
        ax.plot(
            rows["order"],
            rows["kernel_median_s"] * 1e3,
            marker="o",
            ms=3,
            color=color,
            label=key.split("-", 1)[-1],
        )
        ax.plot(rows["order"], rows["reference_median_s"] * 1e3, ls="--", color=color, alpha=0.6)
        ax.set_yscale("log")

    return _trend_panels(
        frame, path, draw, "median ms (log)", "Absolute medians: kernel solid, reference dashed (not gated)"
    )


# ------------------------------------------------------------------------------------------ driver


def write(
    paths: list[Path], out: Path, baseline_path: Path | None = None
) -> tuple[Path, list[Path], pd.DataFrame]:
    """Write bench.csv, the plots and bench_summary.md into ``out``; return the summary path, the
    plots and the trend table."""
    frame = load(paths)
    if frame.empty:
        raise BenchReportError("no benchmark in these files records an extra_info gate_key")
    baseline, margin = load_baseline(baseline_path)
    out.mkdir(parents=True, exist_ok=True)
    report.write_atomic(out / "bench.csv", frame.to_csv(index=False))
    made = [
        p
        for p in (
            ratio_trend(frame, out / "bench_ratio_trend.png", baseline, margin),
            times_trend(frame, out / "bench_times.png"),
        )
        if p is not None
    ]
    trend = trend_table(frame, baseline)
    runs = frame.drop_duplicates("order").sort_values("order")
    lines = [
        "# Benchmark report",
        "",
        "Ratio = kernel median / median of its reference timed in the same test, rounds interleaved;",
        "below 1 the kernel is faster. Only ratios are gated (`make bench`); absolute times are for the record.",
        "",
        "Runs (oldest first):",
        "",
        *(f"- `{r.run}` {r.datetime} — `{r.file}`" for r in runs.itertuples()),
        "",
        "## Ratio per gate key and run",
        "",
        report.markdown(trend),
        "",
        f"## Latest run (`{runs['run'].iloc[-1]}`)",
        "",
        report.markdown(latest_table(frame)),
        "",
    ]
    if made:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in made] + [""]
    summary = out / "bench_summary.md"
    report.write_atomic(summary, "\n".join(lines))
    return summary, made, trend
