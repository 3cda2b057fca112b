"""The performance regression gate: kernel/reference ratios against a committed baseline.

    python -m tests.benchmarks.gate RESULT.json [--baseline tests/benchmarks/baseline.json] [--margin 0.3]
    python -m tests.benchmarks.gate --write-baseline RESULT.json [RESULT2.json ...]

RESULT.json is what ``pytest --benchmark-json`` writes. Every benchmark whose ``extra_info`` holds a
``gate_key`` and a ``ratio`` (kernel median / same-run reference median, see ``_bench.py``) is gated;
absolute times are never compared, because on a shared machine they move by 2x from run to run while
the ratio of two interleaved measurements moves far less.

A key FAILS when its ratio exceeds the baseline ratio by more than the margin
(``new > baseline * (1 + margin)``), when it is in the baseline but absent from the result (unless
its device is not present on this machine, or ``--allow-missing`` matches it), when its ratio is
not a positive finite number, or when two benchmarks claim the same key. A key absent from the
baseline is reported as new and passes. A ratio far below the baseline passes with a hint to
refresh the baseline (``make bench-baseline``). The gate never writes the baseline unless asked
with ``--write-baseline``; CI only reads it.

``--rerun N`` (``make bench`` passes 2): a key that fails on its ratio is measured again, up to N
times, by rerunning only its benchmark, and keeps the lowest ratio seen. A real regression is
above the limit in every attempt; a scheduler burst on a shared machine rarely is twice more.

Exit status: 0 pass, 1 regression or missing key, 2 unusable input.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASELINE = Path(__file__).with_name("baseline.json")
DEFAULT_MARGIN = 0.30
SCHEMA = 1
SETUP_KEYS = (
    "isa",
    "threads",
    "timer",
    "slowdown",
)  # how a ratio was measured: named on failure when changed


class GateError(Exception):
    """Input the gate cannot judge (unreadable file, wrong format): exit status 2."""


# ------------------------------------------------------------------------------------------ input


def _device_of(bench: dict, key: str) -> str:
    device = bench.get("extra_info", {}).get("device")
    if device:
        return str(device).split(":")[0]
    words = key.replace("_", "-").split("-") + [str(v) for v in bench.get("params", {}).values()]
    return "cuda" if "cuda" in words else "cpu"


def load_result(path: Path) -> tuple[dict[str, dict], list[str], dict]:
    """The gated entries of one pytest-benchmark JSON file by gate key, the names of benchmarks that
    carry no gate key (not gated), and the file's machine/commit information."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GateError(f"{path}: cannot read pytest-benchmark JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise GateError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    entries: dict[str, dict] = {}
    ungated: list[str] = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") or {}
        key = info.get("gate_key")
        name = bench.get("fullname") or bench.get("name") or "?"
        if not key or "ratio" not in info:
            ungated.append(name)
            continue
        if key in entries:
            raise GateError(
                f"{path}: gate key {key!r} is recorded by two benchmarks: {entries[key]['name']} and {name}"
            )
        try:
            ratio = float(info["ratio"])
        except (TypeError, ValueError):
            ratio = math.nan
        entries[key] = {
            "name": name,
            "ratio": ratio,
            "device": _device_of(bench, key),
            "reference": info.get("reference", "?"),
            "median_s": (bench.get("stats") or {}).get("median"),
            "setup": {k: info[k] for k in SETUP_KEYS if k in info},
        }
    context = {
        "commit": (data.get("commit_info") or {}).get("id"),
        "dirty": (data.get("commit_info") or {}).get("dirty"),
        "cpu": ((data.get("machine_info") or {}).get("cpu") or {}).get("brand_raw"),
        "datetime": data.get("datetime"),
    }
    return entries, ungated, context


def load_baseline(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GateError(f"{path}: no baseline; create one deliberately with `make bench-baseline`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise GateError(f"{path}: cannot read the baseline ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), dict):
        raise GateError(f"{path}: not a baseline file (no 'benchmarks' object)")
    for key, entry in data["benchmarks"].items():
        if not isinstance(entry, dict) or not _positive_finite(entry.get("ratio")):
            raise GateError(f"{path}: baseline entry {key!r} has no positive 'ratio'")
    return data


def _positive_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


# ------------------------------------------------------------------------------------------ judge


def available_devices(spec: str) -> set[str]:
    if spec != "auto":
        return {d.strip() for d in spec.split(",") if d.strip()}
    devices = {"cpu"}
    try:
        import torch

        if torch.cuda.is_available():
            devices.add("cuda")
    except ImportError:
        pass
    return devices


def judge(
    result: dict[str, dict],
    baseline: dict,
    margin: float,
    devices: set[str],
    allow_missing: list[str] = (),
) -> tuple[list[dict], list[str]]:
    """One row per key of the result or the baseline: ``status`` is ok, faster, new, skipped, allowed
    (missing but allowed) or FAIL, with a one-line ``message``; and the list of failure messages."""
    rows: list[dict] = []
    failures: list[str] = []
    base = baseline["benchmarks"]
    for key in sorted(set(result) | set(base)):
        new = result.get(key)
        old = base.get(key)
        row = {
            "key": key,
            "baseline": old["ratio"] if old else None,
            "ratio": new["ratio"] if new else None,
            "change": None,
        }
        if new is None:
            device = old.get("device", "cpu")
            if device not in devices:
                row["status"], row["message"] = "skipped", f"device {device} is not on this machine"
            elif any(fnmatch.fnmatchcase(key, p) for p in allow_missing):
                row["status"], row["message"] = (
                    "allowed",
                    "missing from the result (allowed by --allow-missing)",
                )
            else:
                row["status"] = "FAIL"
                row["message"] = (
                    f"{key}: in the baseline (ratio {old['ratio']:.3f}) but missing from the result; "
                    "a benchmark was removed, renamed or failed (rename: `make bench-baseline`; "
                    "a deliberate subset: --allow-missing PATTERN)"
                )
        elif not _positive_finite(new["ratio"]):
            row["status"] = "FAIL"
            row["message"] = f"{key}: ratio {new['ratio']!r} is not a positive finite number ({new['name']})"
        elif old is None:
            row["status"] = "new"
            row["message"] = (
                f"{key}: new (ratio {new['ratio']:.3f}), not in the baseline; add it with `make bench-baseline`"
            )
        else:
            row["change"] = new["ratio"] / old["ratio"] - 1
            limit = old["ratio"] * (1 + margin)
            if new["ratio"] > limit:
                row["status"] = "FAIL"
                row["message"] = (
                    f"{key}: ratio {new['ratio']:.3f} vs baseline {old['ratio']:.3f} "
                    f"({row['change']:+.0%}, margin {margin:.0%}, limit {limit:.3f}): "
                    f"slower relative to {new['reference']} ({new['name']})"
                )
                changed = [
                    f"{k} {new['setup'][k]} (baseline {old[k]})"
                    for k in SETUP_KEYS
                    if k in old and k in new["setup"] and new["setup"][k] != old[k]
                ]
                if changed:
                    row["message"] += "; measured differently: " + ", ".join(changed)
            elif new["ratio"] < old["ratio"] / (1 + margin):
                row["status"] = "faster"
                row["message"] = (
                    f"{key}: ratio {new['ratio']:.3f} vs baseline {old['ratio']:.3f} ({row['change']:+.0%}); "
                    "faster than the baseline by more than the margin: refresh it with `make bench-baseline`"
                )
            else:
                row["status"], row["message"] = "ok", ""
        if row["status"] == "FAIL":
            failures.append(row["message"])
        rows.append(row)
    return rows, failures


def _fmt(value, spec: str, width: int) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return ("-" if missing else format(value, spec)).rjust(width)


def table(rows: list[dict]) -> str:
    width = max([len("gate key")] + [len(r["key"]) for r in rows])
    lines = [f"{'gate key':<{width}}  {'baseline':>8}  {'ratio':>8}  {'change':>7}  status"]
    for r in rows:
        lines.append(
            f"{r['key']:<{width}}  {_fmt(r['baseline'], '.3f', 8)}  {_fmt(r['ratio'], '.3f', 8)}  "
            f"{_fmt(r['change'], '+.0%', 7)}  {r['status']}"
        )
    return "\n".join(lines)


def rerun_benchmarks(nodeids: list[str], out: Path) -> Path:
    """Run only these benchmarks again (pytest node ids from the JSON's ``fullname``) into ``out``."""
    command = [sys.executable, "-m", "pytest", *nodeids, "-m", "benchmark", "--benchmark-only", "-q"]
    command += ["-p", "no:randomly", "-p", "no:cacheprovider", f"--benchmark-json={out}"]
    print(f"rerun: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=False)
    return out


def confirm(result: dict[str, dict], rows: list[dict], path: Path, attempt: int) -> list[str]:
    """Measure the keys that failed on their ratio again; each keeps the lowest ratio of its attempts.
    Returns the keys rerun (none: nothing to confirm)."""
    keys = [r["key"] for r in rows if r["status"] == "FAIL" and r["key"] in result]
    nodeids = list(dict.fromkeys(result[k]["name"] for k in keys if "::" in result[k]["name"]))
    if not nodeids:
        return []
    out = path.with_name(f"{path.stem}.rerun{attempt}.json")
    try:
        again, _, _ = load_result(rerun_benchmarks(nodeids, out))
    except GateError as e:
        print(f"rerun {attempt}: no usable result ({e})")
        return []
    for key in keys:
        if key in again and _positive_finite(again[key]["ratio"]):
            before = result[key]["ratio"]
            now = again[key]["ratio"]
            if not _positive_finite(before) or now < before:
                result[key]["ratio"] = now
            print(
                f"rerun {attempt}: {key}: ratio {before:.3f} -> {now:.3f}, keeping {result[key]['ratio']:.3f}"
            )
    return keys


# ------------------------------------------------------------------------------------------ baseline


def make_baseline(results: list[tuple[Path, dict[str, dict], dict]], margin: float) -> dict:
    """The slowest ratio of every key over one or more runs, with the runs' ratios and their spread.

    No gate can be tighter than a key's own noise, so the baseline is the slowest of the runs: an
    unchanged kernel must not fail. (A median baseline was tried: on this shared machine the next run
    of an unchanged kernel measured 33 % above a 5-run median, in three attempts in a row.)
    """
    keys = sorted({k for _, entries, _ in results for k in entries})
    benchmarks = {}
    for key in keys:
        found = [entries[key] for _, entries, _ in results if key in entries]
        ratios = [e["ratio"] for e in found if _positive_finite(e["ratio"])]
        if not ratios:
            raise GateError(f"{key}: no run recorded a positive finite ratio; cannot baseline it")
        spread = max(ratios) / min(ratios) - 1
        benchmarks[key] = {
            "ratio": round(max(ratios), 4),
            "device": found[0]["device"],
            "reference": found[0]["reference"],
            **found[0]["setup"],
            "runs": [round(r, 4) for r in ratios],
            "spread": round(spread, 4),
        }
    context = results[-1][2]
    return {
        "schema": SCHEMA,
        "margin": margin,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": context.get("commit"),
        "cpu": context.get("cpu"),
        "runs": len(results),
        "note": "Written by `make bench-baseline` (python -m tests.benchmarks.gate --write-baseline); "
        "ratio = the slowest over the runs of kernel median / same-run reference median. CI never rewrites it.",
        "benchmarks": benchmarks,
    }


def slower_than_before(old: dict, new: dict, margin: float) -> list[str]:
    """Keys of a freshly measured baseline that are slower than the one it would replace by more than
    the margin: a refresh must not quietly absorb a regression (make bench gates first)."""
    slower = []
    for key, entry in new["benchmarks"].items():
        before = old.get("benchmarks", {}).get(key, {}).get("ratio")
        if _positive_finite(before) and entry["ratio"] > before * (1 + margin):
            slower.append(f"{key}: {before:.3f} -> {entry['ratio']:.3f} (+{entry['ratio'] / before - 1:.0%})")
    return slower


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.gate",
        description="Fail when a benchmark's kernel/reference ratio regressed beyond the margin against the baseline.",
    )
    parser.add_argument(
        "results", nargs="+", type=Path, metavar="RESULT.json", help="pytest --benchmark-json output"
    )
    parser.add_argument(
        "--baseline", type=Path, default=DEFAULT_BASELINE, help=f"(default: {DEFAULT_BASELINE})"
    )
    parser.add_argument(
        "--margin",
        type=float,
        help=f"allowed relative growth of a ratio, 0.3 = +30%% (default: the baseline's 'margin', else {DEFAULT_MARGIN})",
    )
    parser.add_argument(
        "--devices",
        default="auto",
        help="devices this run could measure, comma-separated; baseline keys of other devices are skipped "
        "(default: auto = cpu, plus cuda when torch sees a GPU)",
    )
    parser.add_argument(
        "--allow-missing",
        action="append",
        default=[],
        metavar="PATTERN",
        help="baseline keys matching this shell pattern may be absent from the result (repeatable)",
    )
    parser.add_argument(
        "--rerun",
        type=int,
        default=0,
        metavar="N",
        help="rerun the benchmarks of failing keys up to N times, keeping each key's lowest ratio (default: 0)",
    )
    parser.add_argument(
        "--write-baseline",
        action="store_true",
        help="write the baseline from the slowest ratio of each key over all RESULT files instead of gating; "
        "refused when a key got slower than the current baseline by more than the margin",
    )
    parser.add_argument(
        "--accept-slower",
        action="store_true",
        help="with --write-baseline: write it even where keys got slower (an intended trade-off)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.margin is not None and not (0 < args.margin < 10):
            raise GateError(f"--margin must be a fraction such as 0.3, got {args.margin}")
        loaded = [(path, *load_result(path)) for path in args.results]
        if args.write_baseline:
            margin = args.margin if args.margin is not None else DEFAULT_MARGIN
            baseline = make_baseline([(p, e, c) for p, e, _, c in loaded], margin)
            if args.baseline.exists() and not args.accept_slower:
                slower = slower_than_before(load_baseline(args.baseline), baseline, margin)
                if slower:
                    raise GateError(
                        f"not writing {args.baseline}: slower than the current baseline beyond the {margin:.0%} "
                        f"margin: {'; '.join(slower)}. Find the regression (make bench), or pass --accept-slower "
                        "(make bench-baseline GATE_ARGS=--accept-slower) if it is intended"
                    )
            args.baseline.write_text(json.dumps(baseline, indent=2) + "\n")
            spread = max((b["spread"] for b in baseline["benchmarks"].values()), default=0.0)
            print(
                f"wrote {args.baseline}: {len(baseline['benchmarks'])} keys from {len(loaded)} run(s), "
                f"largest run-to-run spread {spread:.0%}, margin {margin:.0%}"
            )
            return 0
        if len(loaded) != 1:
            raise GateError("gate one RESULT.json at a time (several only with --write-baseline)")
        path, result, ungated, context = loaded[0]
        baseline = load_baseline(args.baseline)
        margin = args.margin if args.margin is not None else float(baseline.get("margin", DEFAULT_MARGIN))
    except GateError as e:
        print(f"gate: error: {e}", file=sys.stderr)
        return 2

    devices = available_devices(args.devices)
    rows, failures = judge(result, baseline, margin, devices, args.allow_missing)
    for attempt in range(1, args.rerun + 1):
        if not failures or not confirm(result, rows, path, attempt):
            break
        rows, failures = judge(result, baseline, margin, devices, args.allow_missing)
    print(f"benchmark gate: {path} against {args.baseline} (margin {margin:.0%}; commit {context['commit']})")
    if baseline.get("cpu") and context.get("cpu") and baseline["cpu"] != context["cpu"]:
        print(f"note: baseline measured on {baseline['cpu']!r}, this run on {context['cpu']!r}")
    print(table(rows))
    for row in rows:
        if row["status"] in ("new", "faster"):
            print(f"{row['status']}: {row['message']}")
        elif row["status"] in ("skipped", "allowed"):
            print(f"{row['status']}: {row['key']}: {row['message']}")
    if ungated:
        print(
            f"not gated ({len(ungated)} benchmarks without extra_info gate_key/ratio): {', '.join(ungated)}"
        )
    if not result:
        failures.append(f"{path}: no benchmark recorded a gate_key and ratio; nothing was gated")
    if failures:
        print(f"\nFAILED: {len(failures)} problem(s)", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    print(
        f"\npassed: {sum(r['status'] in ('ok', 'faster', 'new') for r in rows)} keys within the margin or new"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
