"""GPU benchmark of one optimizer step: bnb8 8-bit and 32-bit Adam against copy bandwidth and torch.

    python tests/cuda/gpu_bench.py [--params 268435456] [--out reports/gpu]   (run by `make gpu-check`)

An optimizer step is memory-bound, so each implementation is reported as achieved bandwidth for the
bytes it must move (8-bit Adam: 16 B/param + absmax; 32-bit: 28 B/param) and as a fraction of a
device-to-device copy of the same number of bytes measured in the same run. Times are CUDA-event
medians over repeats after warm-up; each repeat times several back-to-back steps, so host overhead
overlaps the device work as in training. Writes bench.md and bench.json to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

BLOCK = 256
# Bytes each step must move per parameter (fp32 params and grads), see DESIGN.md.
BYTES_8BIT = 16 + 2 * 2 * 4 / BLOCK  # + two absmax per block, read and written
BYTES_32BIT = 28


def timed(fn, repeats: int, warmup: int, inner: int) -> float:
    """Median milliseconds per call of fn, measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def copy_ms(total_bytes: float, args) -> float:
    """A device-to-device copy that reads and writes total_bytes in all."""
    n = int(total_bytes / 2)
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src), args.repeats, args.warmup, args.inner)


def make_params(args) -> list[torch.Tensor]:
    per = args.params // args.tensors
    params = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(args.tensors):
        p = torch.nn.Parameter(torch.randn(per, device="cuda", generator=gen) * 0.02)
        p.grad = torch.randn(per, device="cuda", generator=gen) * 1e-3
        params.append(p)
    return params


def candidates():
    """(name, bytes per param, factory(params) -> optimizer) for what is installed."""
    out = []
    try:
        import bnb8.optim as optim

        out.append(("bnb8 Adam8bit", BYTES_8BIT, lambda ps: optim.Adam8bit(ps, lr=1e-3)))
        out.append(("bnb8 Adam32bit", BYTES_32BIT, lambda ps: optim.Adam32bit(ps, lr=1e-3)))
    except (ImportError, AttributeError) as e:
        print(f"bnb8.optim unavailable ({e}); only torch and bitsandbytes are measured", file=sys.stderr)
    out.append(("torch Adam(fused=True)", BYTES_32BIT, lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)))
    try:
        import bitsandbytes as bnb

        out.append(("bitsandbytes Adam8bit", BYTES_8BIT, lambda ps: bnb.optim.Adam8bit(ps, lr=1e-3)))
        out.append(("bitsandbytes Adam32bit", BYTES_32BIT, lambda ps: bnb.optim.Adam32bit(ps, lr=1e-3)))
    except Exception as e:  # not installed, or installed without CUDA kernels
        print(f"bitsandbytes not measured: {e}", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=256 * 2**20, help="parameters in all (default 256M)")
    parser.add_argument("--tensors", type=int, default=16, help="parameter tensors they are split into")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--inner", type=int, default=4, help="steps per timed repeat")
    parser.add_argument("--out", type=Path, default=Path("reports/gpu"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    import bnb8

    began = time.time()
    params = make_params(args)
    n = args.params // args.tensors * args.tensors
    copies = {b: copy_ms(b * n, args) for b in (BYTES_8BIT, BYTES_32BIT)}
    rows = []
    for name, bytes_per_param, factory in candidates():
        try:
            opt = factory(params)
            ms = timed(opt.step, args.repeats, args.warmup, args.inner)
        except Exception as e:  # one failing implementation must not hide the others
            rows.append({"implementation": name, "error": f"{type(e).__name__}: {e}"})
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        finally:
            opt = None
            torch.cuda.empty_cache()
        gbps = bytes_per_param * n / ms / 1e6
        copy_gbps = bytes_per_param * n / copies[bytes_per_param] / 1e6
        rows.append({
            "implementation": name,
            "bytes_per_param": bytes_per_param,
            "ms_per_step": ms,
            "GB_per_s": gbps,
            "copy_GB_per_s": copy_gbps,
            "fraction_of_copy": gbps / copy_gbps,
        })  # fmt: skip
    fused = next(
        (r["ms_per_step"] for r in rows if r["implementation"].startswith("torch") and "ms_per_step" in r),
        None,
    )
    for r in rows:
        if fused and "ms_per_step" in r:
            r["speedup_vs_torch_fused"] = fused / r["ms_per_step"]

    env = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bnb8": bnb8.__version__,
        "python": platform.python_version(),
        "params": n,
        "tensors": args.tensors,
        "repeats": args.repeats,
        "inner": args.inner,
        "copy_ms": {f"{b:g} B/param": ms for b, ms in copies.items()},
        "seconds": time.time() - began,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    lines = [
        f"# Optimizer step, {n / 2**20:.0f}M fp32 parameters in {args.tensors} tensors — {env['device']}",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), bnb8 {env['bnb8']}; CUDA-event median of {args.repeats} "
        f"repeats x {args.inner} steps after {args.warmup} warm-up. `python tests/cuda/gpu_bench.py`",
        "",
        "| implementation | bytes/param | ms/step | GB/s | % of copy GB/s | speed-up vs torch fused |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['implementation']} | | | | | {r['error']} |")
            continue
        lines.append(
            f"| {r['implementation']} | {r['bytes_per_param']:.2f} | {r['ms_per_step']:.3f} | {r['GB_per_s']:.0f} "
            f"| {100 * r['fraction_of_copy']:.0f}% | {r.get('speedup_vs_torch_fused', float('nan')):.2f}x |"
        )
    lines += ["", "Targets: bnb8 Adam8bit >= 80% of copy bandwidth and faster than torch fused Adam.", ""]
    (args.out / "bench.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
