"""Train one (model, optimizer configuration, seed) per fresh worker process and measure it.

Why a process per row: the CPU peak RSS is process-wide, a CUDA OOM can leave the allocator
fragmented, and a crash in native code must not end the suite. Workers are forked from a
``forkserver`` that has already imported torch, so a fresh process costs milliseconds, not an import.
A row whose worker dies (signal, OOM killer) is recorded as ``error: ...`` and the suite goes on.

Per step the worker times the whole training step (forward, backward, optimizer step) and the
optimizer step alone, with ``torch.cuda.synchronize`` around both on CUDA; the first ``warmup``
steps are excluded from the timing statistics (they include lazy state initialisation).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

import torch

from profiler import memory, suite, zoo

STATUS_OK = "ok"
STATUS_OOM = "oom"

RESULT_COLUMNS = [
    "key", "model", "model_name", "width", "depth", "batch_size", "model_options",
    "optimizer", "config", "class", "kwargs", "min_8bit_size", "baseline", "seed", "steps", "warmup",
    "device", "device_name", "threads", "status", "params", "state_bytes", "state_bytes_per_param",
    "peak_memory_bytes", "peak_memory_source", "rss_start_bytes", "rss_peak_bytes",
    "cuda_max_allocated_bytes", "nvml_peak_bytes", "step_ms_median", "step_ms_p90",
    "optim_step_ms_median", "optim_step_ms_p90", "samples_per_s", "final_loss", "eval_loss",
    "wall_s", "load_avg_1m", "notes", "finished_at",
]  # fmt: skip


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch.cuda.is_available() is False on this machine")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu, cuda or auto, got {device!r}")
    return device


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def final_loss(losses: list[float]) -> float:
    """Mean of the last 10 % of the steps (at least one): less noisy than the last step alone."""
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def _base_row(spec: suite.RunSpec) -> dict:
    cls_defaults = {}
    with contextlib.suppress(suite.SuiteError):
        cls_defaults = suite.constructor_defaults(suite.import_class(spec.optimizer.cls))
    min_8bit = spec.optimizer.kwargs.get("min_8bit_size", cls_defaults.get("min_8bit_size"))
    return {
        "key": spec.key,
        "model": spec.model.label,
        "model_name": spec.model.name,
        "width": spec.model.width,
        "depth": spec.model.depth,
        "batch_size": spec.model.batch_size,
        "model_options": json.dumps(spec.model.options, sort_keys=True),
        "optimizer": spec.optimizer.label,
        "config": spec.optimizer.config,
        "class": spec.optimizer.cls,
        "kwargs": json.dumps(spec.optimizer.kwargs, sort_keys=True),
        "min_8bit_size": min_8bit,
        "baseline": spec.optimizer.baseline,
        "seed": spec.seed,
        "steps": spec.steps,
        "warmup": spec.warmup,
        "device": spec.device,
        "threads": torch.get_num_threads(),
    }


def train_and_measure(
    spec: suite.RunSpec, progress: Callable[[int, float], None] = lambda i, loss: None
) -> tuple[dict, list[float]]:
    """Train ``spec`` in this process; returns ``(row, losses)``. Never raises for a failed run."""
    started = time.perf_counter()
    row = _base_row(spec)
    row["device_name"] = device_name(spec.device)
    losses: list[float] = []
    cuda = spec.device == "cuda"
    nvml = memory.NvmlProcessMemory(torch.cuda.current_device()) if cuda else None
    try:
        torch.manual_seed(spec.seed)
        work = zoo.build(
            spec.model.name,
            width=spec.model.width,
            depth=spec.model.depth,
            batch_size=spec.model.batch_size,
            seed=spec.seed,
            device=spec.device,
            **spec.model.options,
        )
        optimizer = suite.import_class(spec.optimizer.cls)(work.model.parameters(), **spec.optimizer.kwargs)
        row["params"] = memory.parameter_count(work.model)
        row["notes"] = work.notes
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        row["rss_start_bytes"] = memory.rss_bytes()
        peak_reset = memory.reset_rss_peak()
        step_ms, optim_ms = [], []
        for i in range(spec.steps):
            batch = work.train_batch(i)  # generated outside the timed region
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = work.loss(batch)
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            losses.append(value)
            if nvml is not None:
                nvml.sample()
            if i >= spec.warmup:
                step_ms.append((t2 - t0) * 1e3)
                optim_ms.append((t2 - t1) * 1e3)
            progress(i, value)
            if not math.isfinite(value):
                row["status"] = f"diverged: non-finite loss at step {i}"
                break
        row["state_bytes"] = memory.optimizer_state_bytes(optimizer)
        row["state_bytes_per_param"] = row["state_bytes"] / row["params"]
        if cuda:
            row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            row["nvml_peak_bytes"] = nvml.peak
            row["peak_memory_bytes"] = row["cuda_max_allocated_bytes"]
            row["peak_memory_source"] = "cuda max_memory_allocated"
            if nvml.error:
                row["notes"] = "; ".join(filter(None, [row["notes"], nvml.error]))
        else:
            row["rss_peak_bytes"] = memory.rss_peak_bytes()
            row["peak_memory_bytes"] = row["rss_peak_bytes"] - row["rss_start_bytes"]
            row["peak_memory_source"] = (
                "cpu VmHWM - RSS at start" if peak_reset else "cpu VmHWM (not reset) - RSS at start"
            )
        if step_ms:
            row["step_ms_median"] = statistics.median(step_ms)
            row["step_ms_p90"] = _percentile(step_ms, 0.9)
            row["optim_step_ms_median"] = statistics.median(optim_ms)
            row["optim_step_ms_p90"] = _percentile(optim_ms, 0.9)
            row["samples_per_s"] = spec.model.batch_size / (row["step_ms_median"] / 1e3)
        if losses and "status" not in row:
            row["final_loss"] = final_loss(losses)
            row["eval_loss"] = work.eval_loss()
            row["status"] = STATUS_OK
    except Exception as error:  # one failed configuration must not end the suite
        if _is_oom(error):
            row["status"] = STATUS_OOM
        else:
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            row["status"] = f"error: {message}"
            row["notes"] = traceback.format_exc(limit=-3).strip().replace("\n", " | ")[-1000:]
    row["wall_s"] = time.perf_counter() - started
    row["load_avg_1m"] = os.getloadavg()[0]  # other processes on the machine make step times noisy
    row["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return row, losses


def _worker(spec: suite.RunSpec, threads: int, conn) -> None:
    torch.set_num_threads(threads)
    row, losses = train_and_measure(spec, lambda i, loss: conn.send(("step", i, loss)))
    conn.send(("done", row, losses))
    conn.close()


_context = None

# Environment of the worker processes (unless the user set these variables). libgomp's default
# spin-waiting makes a 2-thread step 5-20x slower as soon as another process competes for the cores;
# passive waiting keeps step times usable on a busy machine.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def worker_env() -> dict[str, str]:
    """The variables of :data:`WORKER_ENV` as the workers see them."""
    return {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}


def _process_context():
    global _context
    if _context is None:
        from multiprocessing import forkserver

        _context = multiprocessing.get_context("forkserver")
        # torch.optim.Optimizer.__init__ imports torch._dynamo (~1.5 s) and the glyph data needs
        # matplotlib's FreeType wrapper: import both once in the server, not in every worker.
        _context.set_forkserver_preload(["profiler.runner", "torch._dynamo", "matplotlib.ft2font"])
        saved = dict(os.environ)
        os.environ.update(worker_env())  # inherited by the server (and its workers) only
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return _context


def run_isolated(
    spec: suite.RunSpec,
    progress: Callable[[int, float], None] = lambda i, loss: None,
    timeout_s: float | None = None,
    threads: int | None = None,
) -> tuple[dict, list[float]]:
    """Run :func:`train_and_measure` in a fresh worker process.

    A worker that dies becomes an ``error: worker ...`` row; one that runs longer than
    ``timeout_s`` is killed and becomes ``error: timed out ...``. ``threads`` sets the worker's
    ``torch.set_num_threads`` (default: this process's setting).
    """
    ctx = _process_context()
    receiver, sender = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_worker, args=(spec, threads or torch.get_num_threads(), sender), daemon=True)
    worker.start()
    sender.close()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    row, losses, failure = None, [], None
    try:
        while True:
            if deadline is not None and not receiver.poll(max(0.0, deadline - time.monotonic())):
                worker.kill()
                failure = f"error: timed out after {timeout_s:g} s (--timeout)"
                break
            try:
                message = receiver.recv()
            except EOFError:
                break
            if message[0] == "step":
                losses.append(message[2])
                progress(message[1], message[2])
            else:
                row, losses = message[1], message[2]
                break
    finally:
        receiver.close()
        worker.join()
    if row is None:
        if failure is None:
            code = worker.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            failure = f"error: worker {how}" + (" (out of memory?)" if code == -9 else "")
        row = _base_row(spec)
        row.update(status=failure, device_name=device_name(spec.device))
        row["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return row, losses
