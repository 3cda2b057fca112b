"""CPU thread scaling of one Adam step: bnb8 ``Adam8bit`` against ``torch.optim.Adam(fused=True)``.

    python tests/benchmarks/cpu_scaling.py [--params 16777216] [--threads 1,2,4] [--out reports/cpu-scaling]
                                           [--bitsandbytes]

Why it exists: torch's fused 32-bit step moves 28 B per parameter and is bound by memory bandwidth
from a few cores on; bnb8's 8-bit step moves 16 B but does more arithmetic per parameter (decode,
update, exact re-quantization), so on few cores it is bound by compute. Their ratio therefore depends
on how many cores share the memory, and this script measures it at each thread count
(``torch.set_num_threads``, which bnb8's kernels follow).

Both optimizers update one shared float32 parameter (each keeps its own state), one step each per
round, the order alternating from round to round; times are wall-clock medians (``time.perf_counter``)
after warm-up. ``--bitsandbytes`` adds bitsandbytes' CPU ``Adam8bit`` to each round (and bnb8's speed-up
over it; the README's step-time table). Writes cpu_scaling.md and cpu_scaling.json to --out.
``make gpu-check`` runs it on the GPU host's CPU too (reports/gpu/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

# Bytes one step must move per fp32 parameter (DESIGN.md): 8-bit Adam 16 B + two absmax per block of
# 256, read and written; torch's 32-bit Adam 28 B.
BYTES_8BIT = 16 + 2 * 2 * 4 / 256
BYTES_32BIT = 28


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> list[int]:
    """1, 2, 4, ... up to the usable CPUs, and that count itself."""
    cpus = usable_cpus()
    counts = [1]
    while counts[-1] * 2 <= cpus:
        counts.append(counts[-1] * 2)
    if counts[-1] != cpus:
        counts.append(cpus)
    return counts


def thread_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2,4, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts >= 1 like 1,2,4, got {text!r}")
    return counts


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def measure(numel: int, threads: int, rounds: int, warmup: int, bitsandbytes: bool = False) -> dict:
    """Both optimizers' median step times on ``threads`` threads (rounds interleaved), their ratio
    with the quartiles of the per-round ratios, and the bandwidth each achieves; with ``bitsandbytes``,
    also its ``Adam8bit`` and bnb8's speed-up over it."""
    import bnb8

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        param = torch.nn.Parameter(torch.randn(numel, generator=gen) * 0.02)
        param.grad = torch.randn(numel, generator=gen) * 1e-3
        steps = {
            "bnb8": bnb8.optim.Adam8bit([param], lr=1e-3).step,
            "torch": torch.optim.Adam([param], lr=1e-3, fused=True).step,
        }
        if bitsandbytes:
            import bitsandbytes as bnb

            steps["bitsandbytes"] = bnb.optim.Adam8bit([param], lr=1e-3).step
        times: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(warmup + rounds):
            order = list(steps) if r % 2 == 0 else list(reversed(steps))
            for name in order:
                start = time.perf_counter()
                steps[name]()
                elapsed = time.perf_counter() - start
                if r >= warmup:
                    times[name].append(elapsed)
    finally:
        torch.set_num_threads(before)
    bnb8_s, torch_s = statistics.median(times["bnb8"]), statistics.median(times["torch"])
    q1, q3 = round_quartiles(times["bnb8"], times["torch"])
    row = {
        "threads": threads,
        "bnb8_ms": 1e3 * bnb8_s,
        "torch_ms": 1e3 * torch_s,
        "ratio": bnb8_s / torch_s,
        "round_ratio_q1": q1,
        "round_ratio_q3": q3,
        "bnb8_GB_per_s": BYTES_8BIT * numel / bnb8_s / 1e9,
        "torch_GB_per_s": BYTES_32BIT * numel / torch_s / 1e9,
    }
    if bitsandbytes:
        bnb_s = statistics.median(times["bitsandbytes"])
        q1, q3 = round_quartiles(times["bitsandbytes"], times["bnb8"])
        row |= {
            "bitsandbytes_ms": 1e3 * bnb_s,
            "speedup": bnb_s / bnb8_s,
            "round_speedup_q1": q1,
            "round_speedup_q3": q3,
        }
    return row


def round_quartiles(numerators: list[float], denominators: list[float]) -> tuple[float, float]:
    """The first and third quartiles of the per-round ratios."""
    per_round = sorted(a / b for a, b in zip(numerators, denominators))
    quartiles = statistics.quantiles(per_round, n=4) if len(per_round) >= 2 else per_round * 3
    return quartiles[0], quartiles[-1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=positive, default=16 * 2**20, help="parameters (default 16M)")
    parser.add_argument(
        "--threads", type=thread_list, default=None,
        help="comma-separated thread counts (default: 1, 2, 4, ... up to the usable CPUs)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=positive, default=15, help="timed rounds per thread count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--out", type=Path, default=Path("reports/cpu-scaling"))
    parser.add_argument(
        "--bitsandbytes", action="store_true",
        help="also time bitsandbytes' CPU Adam8bit (pip install bitsandbytes; ~30x slower than bnb8)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup: expected a whole number >= 0, got {args.warmup}")
    import bnb8
    from bnb8._native import C

    bitsandbytes_version = None
    if args.bitsandbytes:
        try:
            import bitsandbytes
        except ImportError as err:
            parser.error(f"--bitsandbytes: bitsandbytes is not importable ({err}); pip install bitsandbytes")
        bitsandbytes_version = bitsandbytes.__version__
    counts = args.threads or default_threads()
    began = time.time()
    rows = []
    for i, threads in enumerate(counts, 1):
        print(f"[{i}/{len(counts)}] {threads} thread(s) ...", file=sys.stderr, flush=True)
        rows.append(measure(args.params, threads, args.rounds, args.warmup, args.bitsandbytes))
    env = {
        "cpu": cpu_name(),
        "usable_cpus": usable_cpus(),
        "isa": str(C.cpu_isa()),
        "torch": torch.__version__,
        "bnb8": bnb8.__version__,
        "python": platform.python_version(),
        "params": args.params,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "seconds": round(time.time() - began, 1),
    }
    if bitsandbytes_version:
        env["bitsandbytes"] = bitsandbytes_version
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_scaling.json").write_text(
        json.dumps({"environment": env, "results": rows}, indent=2) + "\n"
    )
    lines = [
        f"# Adam step on the CPU by thread count, {args.params / 2**20:g}M fp32 parameters — {env['cpu']}",
        "",
        f"{env['usable_cpus']} usable CPUs, bnb8 {env['bnb8']} ({env['isa']} kernels), torch {env['torch']}. "
        f"Wall-clock medians of {args.rounds} interleaved rounds after {args.warmup} warm-up; ratio = bnb8 "
        "median / torch median (below 1: bnb8 is faster), with the quartiles of the per-round ratios. "
        "GB/s counts the bytes each step must move: 16.06 B/param for 8-bit Adam, 28 for torch's 32-bit Adam. "
        + (
            f"bitsandbytes {env['bitsandbytes']}'s CPU `Adam8bit` ran in the same rounds; speed-up = its median "
            "/ bnb8's, with the quartiles of the per-round speed-ups. "
            if args.bitsandbytes
            else ""
        )
        + f"`python tests/benchmarks/cpu_scaling.py{' --bitsandbytes' if args.bitsandbytes else ''}`",
        "",
        "| threads | torch `Adam(fused=True)` ms | bnb8 `Adam8bit` ms | ratio (quartiles) | torch GB/s | bnb8 GB/s |"
        + (" bitsandbytes `Adam8bit` ms | bnb8 speed-up (quartiles) |" if args.bitsandbytes else ""),
        "|---:|---:|---:|---|---:|---:|" + ("---:|---|" if args.bitsandbytes else ""),
    ]
    for r in rows:
        line = (
            f"| {r['threads']} | {r['torch_ms']:.2f} | {r['bnb8_ms']:.2f} | {r['ratio']:.2f}x "
            f"({r['round_ratio_q1']:.2f}-{r['round_ratio_q3']:.2f}) | {r['torch_GB_per_s']:.1f} "
            f"| {r['bnb8_GB_per_s']:.1f} |"
        )
        if args.bitsandbytes:
            line += (
                f" {r['bitsandbytes_ms']:.1f} | {r['speedup']:.1f}x "
                f"({r['round_speedup_q1']:.1f}-{r['round_speedup_q3']:.1f}) |"
            )
        lines.append(line)
    lines.append("")
    (args.out / "cpu_scaling.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
