"""Shared benchmark helpers: thread pinning and the paired kernel/reference timing.

Every benchmark in this directory times a kernel *and* its reference in the same test, rounds
interleaved (reference, kernel, reference, kernel, ...) with the same timer, so both see the same
noise from a shared machine. The gate (``tests/benchmarks/gate.py``) compares only the ratio
kernel median / reference median, never an absolute time.

``extra_info`` keys that the gate and ``python -m profiler bench-report`` read:

- ``gate_key``   stable name of the measurement, e.g. ``adam8bit-16M-fp32-cpu``;
- ``ratio``      kernel median / reference median (lower is faster);
- ``reference``  what the kernel was compared with, e.g. ``torch.optim.Adam(fused=True)``;
- ``bytes_moved`` bytes one kernel call reads and writes; ``gbps`` = bytes_moved / kernel median
  (per CPU-second with the ``cpu`` timer);
- ``device``, ``kernel_median_s``, ``reference_median_s``, ``threads``, ``isa``: context for reports.

Environment (read here only, never by the library):

- ``BNB8_BENCH_THREADS``  torch threads for the benchmarks (default 1, see below);
- ``BNB8_BENCH_TIMER``    ``cpu`` (process CPU time) or ``wall`` (``time.perf_counter``); default ``cpu`` on
  the CPU, ``wall`` on CUDA (where the time is the GPU's, spent waiting in the synchronisation);
- ``BNB8_BENCH_SLOWDOWN`` ``PATTERN=FACTOR[,PATTERN=FACTOR...]``: a deliberate slowdown for testing the
  gate. Each timed kernel call of a benchmark whose ``gate_key`` matches the shell-style PATTERN is
  followed by a busy wait of (FACTOR - 1) x its own duration, so the kernel reads FACTOR times slower.
"""

from __future__ import annotations

import fnmatch
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

THREADS_ENV = "BNB8_BENCH_THREADS"
TIMER_ENV = "BNB8_BENCH_TIMER"
SLOWDOWN_ENV = "BNB8_BENCH_SLOWDOWN"
DEFAULT_THREADS = 1
TIMERS = {"cpu": time.process_time, "wall": time.perf_counter}

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def size_label(n: int) -> str:
    """``1M``, ``16M``, ``4097``: the size part of a gate key."""
    if n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n % 2**10 == 0:
        return f"{n // 2**10}k"
    return str(n)


def bench_threads() -> int:
    value = os.environ.get(THREADS_ENV, str(DEFAULT_THREADS))
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a whole number, got {value!r}") from None
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be >= 1, got {threads}")
    return threads


@contextmanager
def pinned_threads() -> Iterator[int]:
    """torch (and therefore bnb8's CPU kernels) run on :func:`bench_threads` threads inside the block."""
    before = torch.get_num_threads()
    threads = bench_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def bench_timer(device: torch.device | str):
    """The clock for kernel and reference alike: see ``BNB8_BENCH_TIMER`` in the module docstring."""
    default = "wall" if torch.device(device).type == "cuda" else "cpu"
    name = os.environ.get(TIMER_ENV, default).strip() or default
    if name not in TIMERS:
        raise ValueError(f"{TIMER_ENV} must be one of {sorted(TIMERS)}, got {name!r}")
    return name, TIMERS[name]


def slowdown_factor(gate_key: str) -> float:
    """The deliberate slowdown requested for ``gate_key`` by ``BNB8_BENCH_SLOWDOWN`` (1.0: none)."""
    spec = os.environ.get(SLOWDOWN_ENV, "").strip()
    if not spec:
        return 1.0
    for item in spec.split(","):
        pattern, sep, factor = item.strip().rpartition("=")
        if not sep or not pattern:
            raise ValueError(f"{SLOWDOWN_ENV}: expected PATTERN=FACTOR, got {item!r}")
        if fnmatch.fnmatchcase(gate_key, pattern):
            value = float(factor)
            if value < 1.0:
                raise ValueError(f"{SLOWDOWN_ENV}: FACTOR must be >= 1, got {value} for {pattern!r}")
            return value
    return 1.0


def cpu_isa() -> str:
    """The instruction set bnb8's CPU kernels dispatched to (``BNB8_CPU_ISA`` can force a lesser one)."""
    try:
        from bnb8._native import C

        return str(C.cpu_isa())
    except (ImportError, AttributeError):
        return "unknown"


def synchronizing(fn: Callable[[], object], device: torch.device | str) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation on CUDA, so a timer around it sees the whole kernel."""
    if torch.device(device).type != "cuda":
        return fn  # type: ignore[return-value]

    def run() -> None:
        fn()
        torch.cuda.synchronize(device)

    return run


def paired(
    benchmark,
    kernel: Callable[[], object],
    reference: Callable[[], object],
    *,
    gate_key: str,
    reference_name: str,
    bytes_moved: int,
    device: torch.device | str,
    rounds: int,
    warmup_rounds: int = 2,
    **info: object,
) -> float:
    """Time ``kernel`` with ``benchmark.pedantic`` and ``reference`` with the same timer, interleaved
    round by round; record the agreed ``extra_info`` and return the ratio of the medians.

    Both callables are wrapped with a device synchronisation on CUDA. The reference is timed in
    pedantic's ``setup`` hook (not counted in the kernel's statistics), so every kernel round is
    immediately preceded by a reference round; warm-up rounds warm up both and are discarded.
    """
    timer_name, timer = bench_timer(device)
    benchmark._timer = timer  # pedantic reads it each round; the JSON's options.timer records it
    kernel_fn = synchronizing(kernel, device)
    reference_fn = synchronizing(reference, device)
    factor = slowdown_factor(gate_key)
    if factor > 1.0:
        timed_kernel = kernel_fn

        def kernel_fn() -> None:  # sleeping costs no CPU time: burn it, so both timers see the slowdown
            start = timer()
            timed_kernel()
            end = start + factor * (timer() - start)
            while timer() < end:
                pass

    reference_times: list[float] = []

    def time_reference() -> None:
        start = timer()
        reference_fn()
        reference_times.append(timer() - start)

    benchmark.pedantic(kernel_fn, setup=time_reference, rounds=rounds, warmup_rounds=warmup_rounds)
    measured = reference_times[warmup_rounds:]
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the functions ran once as a smoke test, nothing was timed
        return float("nan")
    kernel_median = stats.stats.median
    reference_median = statistics.median(measured)
    ratio = kernel_median / reference_median
    benchmark.extra_info.update(
        gate_key=gate_key,
        ratio=ratio,
        reference=reference_name,
        bytes_moved=int(bytes_moved),
        gbps=bytes_moved / kernel_median / 1e9,
        device=torch.device(device).type,
        kernel_median_s=kernel_median,
        reference_median_s=reference_median,
        reference_min_s=min(measured),
        reference_times_s=measured,
        threads=torch.get_num_threads(),
        timer=timer_name,
        isa=cpu_isa() if torch.device(device).type == "cpu" else "cuda",
        slowdown=factor,
        **info,
    )
    return ratio
