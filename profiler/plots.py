"""PNG plots of a run: memory vs ``min_8bit_size``, loss curves, step time, memory per optimizer.

Every function takes the seed-aggregated summary (:func:`profiler.report.load_summary`) and/or
the loss curves and writes one figure; :func:`make_all` writes those that apply and returns
their paths (a suite without a ``min_8bit_size`` sweep gets no sweep plot).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from profiler import report  # noqa: E402

MIB = 2**20


def _grid(n: int, width: float = 5.0, height: float = 3.4, max_cols: int = 3):
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    # tight_layout ignores a suptitle: keep 0.4 inch free above the top row for it.
    top = 1 - 0.4 / fig.get_figheight() if fig.get_suptitle() else 1
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _size_label(v: float) -> str:
    if v >= 1e9:
        return f"{v:.0e}".replace("+0", "").replace("+", "")
    if v >= 1024 and v % 1024 == 0:
        return f"{int(v) // 1024}k"
    return f"{int(v)}"


def min_8bit_sweep(summary: pd.DataFrame, path: Path) -> Path | None:
    """Optimizer state, peak memory and final loss vs ``min_8bit_size``, each relative to the baseline."""
    ok = summary[(summary["status"] == "ok") & summary["min_8bit_size"].notna()]
    swept = ok.groupby(["model", "config"]).filter(lambda g: g["min_8bit_size"].nunique() > 1)
    if swept.empty:
        return None
    sizes = sorted(swept["min_8bit_size"].unique())
    x_of = {s: i for i, s in enumerate(sizes)}
    panels = [
        ("state_saved", "optimizer state, % of baseline", lambda v: 100 * (1 - v)),
        ("peak_saved", "peak memory, % of baseline", lambda v: 100 * (1 - v)),
        ("final_loss_ratio", "final loss / baseline final loss", lambda v: v),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for (model, config), g in swept.groupby(["model", "config"], sort=False):
        g = g.sort_values("min_8bit_size")
        xs = [x_of[s] for s in g["min_8bit_size"]]
        label = model if swept["config"].nunique() == 1 else f"{model} / {config}"
        for ax, (column, _, transform) in zip(axes, panels):
            ax.plot(xs, transform(g[column].to_numpy(dtype=float)), marker="o", label=label)
    for ax, (_, title, _) in zip(axes, panels):
        ax.set_xticks(range(len(sizes)), [_size_label(s) for s in sizes])
        ax.set_xlabel("min_8bit_size (tensors with fewer elements keep 32-bit state)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].axhline(100, color="black", lw=1, ls="--")
    axes[1].axhline(100, color="black", lw=1, ls="--")
    axes[2].axhline(1, color="black", lw=1, ls="--")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle("What min_8bit_size buys: dashed line = 32-bit baseline")
    return _save(fig, path)


def _line_styles(summary: pd.DataFrame) -> dict[str, dict]:
    """One style per optimizer label. With one baseline: the baseline thick grey, the others in the
    colour cycle. With several (8-bit vs its 32-bit twin): one colour per baseline group, the
    baseline thick and translucent, its 8-bit partners thin (dashed/dotted if a group has several)."""
    pairs = list(dict.fromkeys(zip(summary["optimizer"], summary["baseline"])))
    baselines = list(dict.fromkeys(b for _, b in pairs))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    thick = {"lw": 3.2, "alpha": 0.5, "zorder": 1}
    styles: dict[str, dict] = {}
    if len(baselines) == 1:
        others = [o for o, _ in pairs if o != baselines[0]]
        styles[baselines[0]] = {"color": "0.3", **thick}
        for i, optimizer in enumerate(others):
            styles[optimizer] = {"color": cycle[i % len(cycle)], "lw": 1.2, "zorder": 2}
        return styles
    dashes = ["-", "--", ":", "-."]
    for g, base in enumerate(baselines):
        color = cycle[g % len(cycle)]
        styles[base] = {"color": color, **thick}
        partners = [o for o, b in pairs if b == base and o != base]
        for i, optimizer in enumerate(partners):
            styles[optimizer] = {"color": color, "lw": 1.3, "zorder": 2, "ls": dashes[i % len(dashes)]}
    return styles


def loss_curves(summary: pd.DataFrame, curves: pd.DataFrame, path: Path) -> Path | None:
    """Training loss per step for every optimizer (mean over seeds), one panel per model; one legend."""
    if curves.empty:
        return None
    # Models with a curve (a model whose every run failed before its first step has none).
    models = [m for m in dict.fromkeys(summary["model"]) if (curves["model"] == m).any()]
    styles = _line_styles(summary)
    labels = list(dict.fromkeys(summary["optimizer"]))
    cols = min(len(labels), 4)
    legend_rows = -(-len(labels) // cols)
    n_cols = min(len(models), 3)
    n_rows = -(-len(models) // n_cols)
    legend_h = 0.25 * legend_rows + 0.2
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(max(5.0 * n_cols, 3.1 * cols), 3.4 * n_rows + legend_h), squeeze=False
    )
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    handles: dict[str, object] = {}
    baselines = set(summary["baseline"])
    for ax, model in zip(axes.flat, models):
        steps = int(curves[curves["model"] == model]["step"].max() + 1)
        window = max(1, steps // 20)
        for optimizer in summary[summary["model"] == model]["optimizer"]:
            c = curves[(curves["model"] == model) & (curves["optimizer"] == optimizer)]
            if c.empty:
                continue
            smooth = c.groupby("step")["loss"].mean().rolling(window, min_periods=1).mean()
            label = optimizer + (" (baseline)" if optimizer in baselines else "")
            (line,) = ax.plot(smooth.index, smooth.to_numpy(), label=label, **styles[optimizer])
            handles.setdefault(optimizer, line)
        ax.set_title(f"{model} (moving average, {window} steps)" if window > 1 else model)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    ordered = [handles[o] for o in labels if o in handles]
    fig.legend(
        ordered, [h.get_label() for h in ordered], loc="lower center", ncol=cols, fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _barh_panels(summary: pd.DataFrame, path: Path, bars, xlabel: str, title: str) -> Path | None:
    ok = summary[summary["status"] == "ok"]
    if ok.empty:
        return None
    models = list(dict.fromkeys(ok["model"]))
    n_opt = ok.groupby("model").size().max()
    fig, axes = _grid(len(models), height=0.9 + 0.32 * n_opt * len(bars))
    for ax, model in zip(axes, models):
        rows = ok[ok["model"] == model].iloc[::-1]
        y = np.arange(len(rows))
        h = 0.8 / len(bars)
        for i, (column, label, color, scale, err) in enumerate(bars):
            values = rows[column].to_numpy(dtype=float) * scale
            xerr = None
            if err is not None:
                xerr = np.vstack([np.zeros_like(values), rows[err].to_numpy(dtype=float) * scale - values])
            offset = (i - (len(bars) - 1) / 2) * h
            ax.barh(y + offset, values, h, label=label, color=color, xerr=xerr, capsize=2)
        ax.set_yticks(y, rows["optimizer"], fontsize=8)
        ax.set_title(model)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.legend(handles, labels, loc="lower center", ncol=len(bars), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if len(axes) <= 3 else 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def step_time(summary: pd.DataFrame, path: Path) -> Path | None:
    """Median training-step and optimizer-step time per optimizer (whisker: p90 of the step)."""
    bars = [
        ("step_ms_median", "training step (median, whisker p90)", "tab:blue", 1.0, "step_ms_p90"),
        ("optim_step_ms_median", "optimizer.step() (median)", "tab:orange", 1.0, None),
    ]
    return _barh_panels(summary, path, bars, "milliseconds", "Step time per optimizer")


def memory(summary: pd.DataFrame, path: Path) -> Path | None:
    """Optimizer-state bytes and peak memory per optimizer."""
    source = next(iter(summary["peak_memory_source"].dropna()), "")
    bars = [
        ("state_bytes", "optimizer state (exact)", "tab:green", 1 / MIB, None),
        ("peak_memory_bytes", f"peak memory ({source})", "tab:gray", 1 / MIB, None),
    ]
    return _barh_panels(summary, path, bars, "MiB", "Memory per optimizer")


def make_all(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    summary = report.load_summary(run_dir)
    if summary.empty:
        return []
    curves = report.read_curves(run_dir)
    made = [
        min_8bit_sweep(summary, run_dir / "memory_vs_min_8bit_size.png"),
        memory(summary, run_dir / "memory.png"),
        loss_curves(summary, curves, run_dir / "loss_curves.png"),
        step_time(summary, run_dir / "step_time.png"),
    ]
    return [p for p in made if p is not None]
