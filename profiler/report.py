"""Results on disk and the tables built from them.

A run directory ``reports/<suite>/<run-id>/`` holds:

- ``results.csv`` (+ ``results.parquet`` when pyarrow is installed): one row per finished
  (model, optimizer, seed), columns :data:`profiler.runner.RESULT_COLUMNS`;
- ``curves.csv``: the training loss of every step, long format (key, model, optimizer, seed, step, loss);
- ``suite.toml`` (the suite as run), ``run.json`` (settings), ``env.json`` (versions, device, commit);
- ``summary.md`` and the plots, rebuilt from the files above by ``python -m profiler report``.

Every write goes to a temporary file first and is moved into place with ``os.replace``: a killed
run leaves the files as they were after the last finished row. ``results.csv`` is written after
``curves.csv``, so a row present in results always has its curve.

Derived columns (per row, against the row of its ``baseline`` configuration with the same model
and seed): memory saved, step-time ratio, final-loss ratio (final loss = mean of the last 10 % of
steps), and the mean and max absolute gap between the two loss curves.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from profiler.runner import RESULT_COLUMNS, worker_env

RESULTS = "results.csv"
CURVES = "curves.csv"
CURVE_COLUMNS = ["key", "model", "optimizer", "seed", "step", "loss"]
MIB = 2**20


# ------------------------------------------------------------------------------------------ files


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a report is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv(index=False))


# Label columns read as text: a model or optimizer named "nan", "None" or "NA" stays a label.
_LABELS = {k: str for k in ("key", "model", "optimizer", "config", "baseline", "status", "class", "kwargs")}


_WHOLE_NUMBER_COLUMNS = (
    "depth", "batch_size", "min_8bit_size", "seed", "steps", "warmup", "threads", "params", "state_bytes",
    "peak_memory_bytes", "rss_start_bytes", "rss_peak_bytes", "cuda_max_allocated_bytes", "nvml_peak_bytes",
)  # fmt: skip


def read_results(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / RESULTS
    if not path.exists():
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=_LABELS)


def read_curves(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / CURVES
    if not path.exists():
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=_LABELS)


def finished_keys(run_dir: Path) -> set[str]:
    return set(read_results(run_dir)["key"].astype(str))


def append_result(run_dir: Path, row: dict, losses: list[float]) -> None:
    """Add one finished row (and its loss curve), replacing any earlier row with the same key."""
    run_dir = Path(run_dir)
    curves = read_curves(run_dir)
    curves = curves[curves["key"] != row["key"]]
    new_curve = pd.DataFrame(
        {
            "key": row["key"],
            "model": row["model"],
            "optimizer": row["optimizer"],
            "seed": row["seed"],
            "step": range(len(losses)),
            "loss": losses,
        },
        columns=CURVE_COLUMNS,
    )
    _write_frame(
        run_dir / CURVES, new_curve if curves.empty else pd.concat([curves, new_curve], ignore_index=True)
    )
    results = read_results(run_dir)
    results = results[results["key"] != row["key"]]
    new_row = pd.DataFrame([{c: row.get(c) for c in RESULT_COLUMNS}], columns=RESULT_COLUMNS)
    results = new_row if results.empty else pd.concat([results, new_row], ignore_index=True)
    for column in _WHOLE_NUMBER_COLUMNS:  # 4096, not 4096.0, where a failed row left a gap
        values = pd.to_numeric(results[column], errors="coerce")
        if (values.dropna() % 1 == 0).all():
            results[column] = values.astype("Int64")
    _write_frame(run_dir / RESULTS, results)
    _write_parquet(run_dir, results)


def _write_parquet(run_dir: Path, results: pd.DataFrame) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return
    tmp = run_dir / ".results.parquet.tmp"
    results.to_parquet(tmp, index=False)
    os.replace(tmp, run_dir / "results.parquet")


def environment(device: str, device_name: str, threads: int | None = None) -> dict:
    """Versions, device, threads and git commit: what is needed to reproduce or compare a run."""
    import torch

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        import bnb8

        bnb8_version = getattr(bnb8, "__version__", "unknown")
    except ImportError:
        bnb8_version = None
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "bnb8": bnb8_version,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "matplotlib": version("matplotlib"),
        "nvidia-ml-py": version("nvidia-ml-py"),
        "device": device,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "load_avg_1m_at_start": os.getloadavg()[0],
        "worker_env": worker_env(),
        "cuda": torch.version.cuda,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "bnb8", "ext", "profiler")),
        "command": " ".join(["python -m profiler", *sys.argv[1:]]),
    }
    if device == "cuda":
        from profiler.memory import NvmlProcessMemory

        env.update(NvmlProcessMemory(torch.cuda.current_device()).device_info())
    return env


# ----------------------------------------------------------------------------------------- tables


def divergence(losses: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Mean and max absolute gap between two loss curves over their common steps."""
    n = min(len(losses), len(baseline))
    if n == 0:
        return {"loss_gap_mean": np.nan, "loss_gap_max": np.nan}
    gap = np.abs(np.asarray(losses[:n], dtype=float) - np.asarray(baseline[:n], dtype=float))
    return {"loss_gap_mean": float(gap.mean()), "loss_gap_max": float(gap.max())}


def compare_to_baseline(results: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Each row with its baseline-relative columns (NaN where the baseline is missing or failed)."""
    rows = results.copy()
    ok = rows[rows["status"] == "ok"].set_index(["model", "seed", "optimizer"])
    by_key = {k: g["loss"].to_numpy() for k, g in curves.sort_values("step").groupby("key")}
    derived = []
    for _, row in rows.iterrows():
        out: dict[str, float] = {}
        base_id = (row["model"], row["seed"], row["baseline"])
        if row["status"] == "ok" and base_id in ok.index:
            base = ok.loc[base_id]
            out["state_saved"] = (
                1 - row["state_bytes"] / base["state_bytes"] if base["state_bytes"] else np.nan
            )
            out["peak_saved"] = (
                1 - row["peak_memory_bytes"] / base["peak_memory_bytes"]
                if base["peak_memory_bytes"]
                else np.nan
            )
            out["step_time_ratio"] = row["step_ms_median"] / base["step_ms_median"]
            out["optim_time_ratio"] = row["optim_step_ms_median"] / base["optim_step_ms_median"]
            out["final_loss_ratio"] = row["final_loss"] / base["final_loss"]
            out["eval_loss_ratio"] = row["eval_loss"] / base["eval_loss"]
            out.update(
                divergence(by_key.get(row["key"], np.array([])), by_key.get(base["key"], np.array([])))
            )
        derived.append(out)
    extra = pd.DataFrame(derived, index=rows.index, columns=DERIVED_COLUMNS)
    return pd.concat([rows, extra], axis=1)


DERIVED_COLUMNS = [
    "state_saved", "peak_saved", "step_time_ratio", "optim_time_ratio", "final_loss_ratio",
    "eval_loss_ratio", "loss_gap_mean", "loss_gap_max",
]  # fmt: skip

NUMERIC_MEANS = [
    "params", "state_bytes", "state_bytes_per_param", "peak_memory_bytes", "min_8bit_size",
    "step_ms_median", "step_ms_p90", "optim_step_ms_median", "optim_step_ms_p90", "samples_per_s",
    "final_loss", "eval_loss", *DERIVED_COLUMNS,
]  # fmt: skip


def aggregate_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, optimizer): means over seeds; status 'ok' only if every seed is ok."""
    if table.empty:
        return table
    order = {k: i for i, k in enumerate(dict.fromkeys(zip(table["model"], table["optimizer"])))}
    groups = []
    for (model, optimizer), g in table.groupby(["model", "optimizer"], sort=False):
        ok = g[g["status"] == "ok"]
        row = {
            "model": model,
            "optimizer": optimizer,
            "config": g["config"].iloc[0],
            "baseline": g["baseline"].iloc[0],
        }
        row["seeds"] = len(g)
        statuses = sorted(set(g["status"]))
        row["status"] = (
            "ok" if statuses == ["ok"] else "; ".join(f"{s} ({(g['status'] == s).sum()})" for s in statuses)
        )
        row["peak_memory_source"] = (
            g["peak_memory_source"].dropna().iloc[0] if g["peak_memory_source"].notna().any() else ""
        )
        for column in NUMERIC_MEANS:
            values = pd.to_numeric(ok[column], errors="coerce") if column in ok else pd.Series(dtype=float)
            row[column] = values.mean() if values.notna().any() else np.nan
        groups.append(row)
    out = pd.DataFrame(groups)
    out["_order"] = [order[(m, o)] for m, o in zip(out["model"], out["optimizer"])]
    return out.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def load_summary(run_dir: Path) -> pd.DataFrame:
    results, curves = read_results(run_dir), read_curves(run_dir)
    return aggregate_seeds(compare_to_baseline(results, curves))


# ------------------------------------------------------------------------------------- rendering


def _fmt_mib(v) -> str:
    return "" if pd.isna(v) else f"{v / MIB:,.2f}"


def _fmt_pct(v) -> str:
    return "" if pd.isna(v) else f"{100 * v:+.1f}%"


def _fmt_ratio(v) -> str:
    return "" if pd.isna(v) else f"{v:.3f}x"


def _fmt_num(v, digits: int = 3) -> str:
    """``digits`` significant digits with their trailing zeros, so a column reads alike (23.0 beside
    22.9, not 23); whole numbers with thousands separators from 1,000 on."""
    if pd.isna(v):
        return ""
    if abs(v) >= 999.5:  # would round to 1,000 or more
        return f"{v:,.0f}"
    return f"{v:#.{digits}g}".rstrip(".")


def _fmt_int(v) -> str:
    return "" if pd.isna(v) else f"{int(v):,}"


SUMMARY_COLUMNS = {  # heading: (column, formatter) -- the one-screen table printed after a run
    "model": ("model", str),
    "optimizer": ("optimizer", str),
    "status": ("status", str),
    "state MiB": ("state_bytes", _fmt_mib),
    "B/param": ("state_bytes_per_param", lambda v: "" if pd.isna(v) else f"{v:.2f}"),
    "state saved": ("state_saved", _fmt_pct),
    "peak MiB": ("peak_memory_bytes", _fmt_mib),
    "peak saved": ("peak_saved", _fmt_pct),
    "step ms": ("step_ms_median", _fmt_num),
    "time ratio": ("step_time_ratio", _fmt_ratio),
    "opt.step ratio": ("optim_time_ratio", _fmt_ratio),
    "loss ratio": ("final_loss_ratio", _fmt_ratio),
}

MEMORY_COLUMNS = {
    "model": ("model", str),
    "optimizer": ("optimizer", str),
    "params": ("params", _fmt_int),
    "state MiB": ("state_bytes", _fmt_mib),
    "state B/param": ("state_bytes_per_param", lambda v: "" if pd.isna(v) else f"{v:.3f}"),
    "state saved vs baseline": ("state_saved", _fmt_pct),
    "peak MiB": ("peak_memory_bytes", _fmt_mib),
    "peak saved vs baseline": ("peak_saved", _fmt_pct),
}

SPEED_COLUMNS = {
    "model": ("model", str),
    "optimizer": ("optimizer", str),
    "step ms (median)": ("step_ms_median", _fmt_num),
    "step ms (p90)": ("step_ms_p90", _fmt_num),
    "step-time ratio": ("step_time_ratio", _fmt_ratio),
    "optimizer.step ms": ("optim_step_ms_median", _fmt_num),
    "optimizer.step ratio": ("optim_time_ratio", _fmt_ratio),
    "samples/s": ("samples_per_s", _fmt_num),
}

ACCURACY_COLUMNS = {
    "model": ("model", str),
    "optimizer": ("optimizer", str),
    "baseline": ("baseline", str),
    "final loss": ("final_loss", lambda v: _fmt_num(v, 4)),
    "final-loss ratio": ("final_loss_ratio", lambda v: "" if pd.isna(v) else f"{v:.4f}x"),
    "mean abs gap": ("loss_gap_mean", lambda v: _fmt_num(v, 3)),
    "max abs gap": ("loss_gap_max", lambda v: _fmt_num(v, 3)),
    "held-out loss": ("eval_loss", lambda v: _fmt_num(v, 4)),
    "held-out ratio": ("eval_loss_ratio", lambda v: "" if pd.isna(v) else f"{v:.4f}x"),
}


def format_table(summary: pd.DataFrame, columns: dict) -> pd.DataFrame:
    return pd.DataFrame({head: [fmt(v) for v in summary[col]] for head, (col, fmt) in columns.items()})


def markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table of already-formatted strings (no tabulate dependency)."""
    heads = list(table.columns)
    numeric = [all(_looks_numeric(v) for v in table[h] if v) for h in heads]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def plain(table: pd.DataFrame) -> str:
    """An aligned plain-text table for the terminal."""
    heads = list(table.columns)
    numeric = [all(_looks_numeric(v) for v in table[h] if v) for h in heads]
    widths = [max([len(h), *(len(str(v)) for v in table[h])]) for h in heads]

    def line(values) -> str:
        return "  ".join(
            str(v).rjust(w) if n else str(v).ljust(w) for v, w, n in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join(
        [line(heads), line("-" * w for w in widths), *(line(row) for row in table.itertuples(index=False))]
    )


def _looks_numeric(text: str) -> bool:
    try:
        float(str(text).replace(",", "").rstrip("x%"))
    except ValueError:
        return False
    return True


def incomplete_note(run_dir: Path) -> str | None:
    """A one-line notice when rows of the run's suite (as recorded) have no result yet, else None.

    None too when the recorded suite cannot be read back (e.g. an optimizer class no longer imports):
    then nothing can be said about what is missing.
    """
    from profiler import suite as suites

    try:
        suite, settings = suites.load_recorded(run_dir)
        expected = [r.key for r in suite.runs(settings["device"], settings.get("filter"))]
    except (ValueError, KeyError, TypeError, re.error):  # SuiteError is a ValueError; a hand-edited run.json
        return None
    done = finished_keys(run_dir)
    missing = [k for k in expected if k not in done]
    if not missing:
        return None
    return (
        f"incomplete run: {len(expected) - len(missing)} of {len(expected)} rows finished (missing: "
        f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); continue it with "
        f"`python -m profiler run --resume {run_dir}`"
    )


def write_summary(run_dir: Path, plots: list[Path], incomplete: str | None) -> Path:
    """``summary.md``: settings, memory / speed / accuracy tables, failures, plots; ``incomplete`` is
    :func:`incomplete_note` of the run, shown at the top."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    settings = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    lines = [f"# Profiler run `{settings.get('suite', '?')}` / `{run_dir.name}`", ""]
    if incomplete:
        lines += [f"**Warning: {incomplete}.**", ""]
    if settings.get("description"):
        lines += [settings["description"], ""]
    lines += [
        f"- device: {env.get('device', '?')} ({env.get('device_name', '?')}), torch threads {env.get('torch_threads', '?')}",
        f"- torch {env.get('torch', '?')}, bnb8 {env.get('bnb8')}, Python {env.get('python', '?')}, commit `{(env.get('git_commit') or '?')[:10]}`",
        f"- steps {settings.get('steps', '?')} (timing excludes the first {settings.get('warmup', '?')}), seeds {settings.get('seeds', '?')}",
        f"- machine load (1-min load average) while rows finished: {_load_range(run_dir)}",
        f"- command: `{env.get('command', '?')}`",
        "",
    ]
    if summary.empty:
        lines.append("No finished rows yet.")
    else:
        sources = ", ".join(sorted(set(summary["peak_memory_source"].dropna()) - {""})) or "n/a"
        lines += [
            "Each row is the mean over seeds. Ratios and savings compare with the row's `baseline`",
            "configuration (same model, same seed): a ratio below 1 means less time or lower loss.",
            "",
            "## Memory",
            "",
            "`state` is the exact size of every tensor in `optimizer.state` (shared storages once).",
            f"`peak` is labelled by source: {sources}.",
            "",
            markdown(format_table(summary, MEMORY_COLUMNS)),
            "",
            "## Speed",
            "",
            "Median and p90 over the timed steps; a step is forward + backward + `optimizer.step()`.",
            "",
            markdown(format_table(summary, SPEED_COLUMNS)),
            "",
            "## Loss divergence",
            "",
            "Final loss = mean training loss over the last 10 % of steps; gaps compare the two loss",
            "curves step by step; held-out loss is measured once after training.",
            "",
            markdown(format_table(summary, ACCURACY_COLUMNS)),
            "",
        ]
        failed = summary[summary["status"] != "ok"]
        if not failed.empty:
            lines += [
                "## Failed configurations",
                "",
                markdown(failed[["model", "optimizer", "status"]].astype(str)),
                "",
            ]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    path = run_dir / "summary.md"
    write_atomic(path, "\n".join(lines))
    return path


def _load_range(run_dir: Path) -> str:
    results = read_results(run_dir)
    if "load_avg_1m" not in results:  # a run from before the column existed
        return "not recorded"
    load = pd.to_numeric(results["load_avg_1m"], errors="coerce").dropna()
    if load.empty:
        return "not recorded"
    env_path = Path(run_dir) / "env.json"
    cpus = json.loads(env_path.read_text()).get("cpu_count") if env_path.exists() else None
    return f"{load.min():.1f} to {load.max():.1f}" + (f" on {cpus} CPUs" if cpus else "")  # the run's machine


def terminal_summary(run_dir: Path) -> str:
    summary = load_summary(run_dir)
    if summary.empty:
        return "no finished rows"
    return plain(format_table(summary, SUMMARY_COLUMNS))


COMPARE_METRICS = [
    ("state MiB", "state_bytes", _fmt_mib),
    ("peak MiB", "peak_memory_bytes", _fmt_mib),
    ("step ms", "step_ms_median", _fmt_num),
    ("final loss", "final_loss", lambda v: _fmt_num(v, 4)),
]


def compare_runs(run_a: Path, run_b: Path) -> tuple[pd.DataFrame, list[str]]:
    """The configurations present in both runs, side by side with B/A ratios; plus notes on the rest."""
    a, b = load_summary(run_a), load_summary(run_b)
    if a.empty or b.empty:
        raise ValueError(f"no finished rows in {run_a if a.empty else run_b}")
    merged = a.merge(b, on=["model", "optimizer"], suffixes=("_a", "_b"))
    table = pd.DataFrame({"model": merged["model"], "optimizer": merged["optimizer"]})
    for head, column, fmt in COMPARE_METRICS:
        table[f"{head} A"] = [fmt(v) for v in merged[f"{column}_a"]]
        table[f"{head} B"] = [fmt(v) for v in merged[f"{column}_b"]]
        ratio = merged[f"{column}_b"] / merged[f"{column}_a"]
        table[f"{head} B/A"] = [_fmt_ratio(v) for v in ratio]
    keys_a = set(zip(a["model"], a["optimizer"]))
    keys_b = set(zip(b["model"], b["optimizer"]))
    notes = [f"only in A: {m}/{o}" for m, o in sorted(keys_a - keys_b)]
    notes += [f"only in B: {m}/{o}" for m, o in sorted(keys_b - keys_a)]
    notes += _setting_differences(run_a, run_b)
    for name, run in (("A", run_a), ("B", run_b)):
        incomplete = incomplete_note(run)
        if incomplete:
            notes.append(f"warning: {name} is an {incomplete}")
    return table, notes


def _setting_differences(run_a: Path, run_b: Path) -> list[str]:
    """Warnings for settings that make the two runs' numbers incomparable (from run.json/env.json)."""

    def settings(run: Path) -> dict:
        out = {}
        for name in ("run.json", "env.json"):
            path = Path(run) / name
            if path.exists():
                out.update(json.loads(path.read_text()))
        return out

    a, b = settings(run_a), settings(run_b)
    keys = ("steps", "warmup", "seeds", "device", "nproc", "strategy", "threads", "device_name", "torch")
    return [
        f"warning: {key} differs (A: {a.get(key)}, B: {b.get(key)}): the ratios compare unlike runs"
        for key in keys
        if a.get(key) != b.get(key)
    ]
