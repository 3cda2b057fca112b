"""``python -m profiler run SUITE --nproc N [--strategy ddp|fsdp2]``: each row trained by N processes.

For every row the parent starts a fresh process group through torch's own launcher,
``python -m torch.distributed.run --nproc-per-node N -m profiler.distributed ...`` (gloo on the CPU,
NCCL on CUDA with one GPU per rank; rendezvous on 127.0.0.1), the distributed counterpart of
:func:`profiler.runner.run_isolated`. Every rank builds the same model from the same seed and trains
on its own batches (rank r of step i draws the zoo's batch ``i * N + r``: a global batch of
``N * batch_size``):

* ``ddp``: ``torch.distributed._composable.replicate`` (DDP as module hooks, so the zoo's loss
  functions, which call the model directly, synchronise gradients);
* ``fsdp2``: ``fully_shard`` on every child module that holds parameters, then on the root;
  optimizer state is then sharded too (bnb8 keeps the 8-bit decision per full parameter).

The row has the single-process columns. Memory is per rank: ``state_bytes`` and
``peak_memory_bytes`` are the largest rank's (what one device must hold); step times are the
slowest rank's median (a synchronous step is as slow as its slowest rank); ``samples_per_s`` counts
the global batch; ``final_loss`` averages the ranks' losses; ``notes`` lists every rank's numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from profiler import memory, runner, suite, zoo

STRATEGIES = ("ddp", "fsdp2")
_STEP_LINE = re.compile(r"@@profiler-step (\d+) (\S+)")
_REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(
    spec: suite.RunSpec,
    nproc: int,
    strategy: str = "ddp",
    progress: Callable[[int, float], None] = lambda i, loss: None,
    timeout_s: float | None = None,
    threads: int | None = None,
) -> tuple[dict, list[float]]:
    """Train ``spec`` on ``nproc`` ranks; returns ``(row, losses)`` like ``runner.run_isolated``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if spec.device == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) on this machine")
    threads = threads or max(1, torch.get_num_threads() // nproc)
    with tempfile.TemporaryDirectory(prefix="profiler-dist-") as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec.to_dict()))
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
            "-m", "profiler.distributed", tmp, strategy, str(threads),
        ]  # fmt: skip
        env = {**os.environ, **runner.worker_env(), "OMP_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            command,
            cwd=_REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a timeout kills launcher and ranks
        )
        lines: queue.Queue = queue.Queue()

        def read() -> None:
            with proc.stdout:
                for line in proc.stdout:
                    lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        tail: list[str] = []
        failure = None
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    _stop(proc, Path(tmp), nproc)
                    failure = f"error: timed out after {timeout_s:g} s (--timeout)"
                    break
                if line is None:
                    break
                step = _STEP_LINE.search(line)
                if step:
                    progress(int(step.group(1)), float(step.group(2)))
                else:
                    tail = (tail + [line.rstrip()])[-40:]
        except BaseException:  # Ctrl-C: the ranks are in sessions of their own and would run on
            _stop(proc, Path(tmp), nproc)
            raise
        proc.wait()
        reader.join(timeout=10)
        ranks = [_read_json(Path(tmp) / f"rank{r}.json") for r in range(nproc)]
    return _aggregate(spec, nproc, strategy, ranks, failure, proc.returncode, tail)


def _stop(proc: subprocess.Popen, workdir: Path, nproc: int) -> None:
    """Stop the launcher and its ranks. torch.distributed.run starts every rank in a session of its
    own, so signalling the launcher's process group alone leaves them running: SIGTERM first (the
    launcher then stops its workers), then SIGKILL for whatever is left, ranks by the PIDs they wrote."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        targets = [proc.pid] + [pid for r in range(nproc) if (pid := _read_pid(workdir / f"rank{r}.pid"))]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if not any(_alive(pid) for pid in targets[1:]):
            return


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _aggregate(spec, nproc, strategy, ranks, failure, returncode, tail) -> tuple[dict, list[float]]:
    row = runner._base_row(spec)
    row["device_name"] = runner.device_name(spec.device)
    row["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    done = [r for r in ranks if r is not None]
    if failure is None:
        bad = [r["status"] for r in done if not str(r.get("status", "")).startswith(runner.STATUS_OK)]
        if bad:
            failure = bad[0]
        elif len(done) < nproc:
            last = next((x for x in reversed(tail) if x.strip()), "")
            failure = f"error: {nproc - len(done)} rank(s) exited with code {returncode} without a result"
            row["notes"] = last[-300:]
    row["load_avg_1m"] = os.getloadavg()[0]
    if done:
        row.update({k: v for k, v in done[0].items() if k in runner.RESULT_COLUMNS and k not in row})
        row["threads"] = done[0].get("threads", row["threads"])  # what each rank ran with
    losses = done[0].get("losses", []) if done else []
    if failure is not None:
        row["status"] = failure
        if done and done[0].get("notes"):
            row["notes"] = done[0]["notes"]
        return row, losses
    # Per-rank memory: what the largest rank holds; time: the slowest rank.
    for key in (
        "state_bytes",
        "peak_memory_bytes",
        "rss_peak_bytes",
        "cuda_max_allocated_bytes",
        "nvml_peak_bytes",
    ):
        values = [r.get(key) for r in done if r.get(key) is not None]
        row[key] = max(values) if values else None
    for key in ("step_ms_median", "step_ms_p90", "optim_step_ms_median", "optim_step_ms_p90", "wall_s"):
        values = [r.get(key) for r in done if r.get(key) is not None]
        row[key] = max(values) if values else None
    row["rss_start_bytes"] = done[0].get("rss_start_bytes")
    row["state_bytes_per_param"] = row["state_bytes"] / row["params"] if row.get("params") else None
    if row["step_ms_median"]:
        row["samples_per_s"] = nproc * spec.model.batch_size / (row["step_ms_median"] / 1e3)

    def mib(v):
        return "-" if v is None else f"{v / 2**20:.2f}"

    per_rank = "; ".join(
        f"rank{i}: state {mib(r.get('state_bytes'))} MiB, peak {mib(r.get('peak_memory_bytes'))} MiB, "
        f"step {r.get('step_ms_median', float('nan')):.1f} ms"
        for i, r in enumerate(done)
    )
    row["notes"] = "; ".join(
        filter(
            None,
            [
                f"{strategy} x{nproc} ranks (per-rank max memory, slowest-rank time)",
                per_rank,
                row.get("notes"),
            ],
        )
    )
    row["status"] = runner.STATUS_OK
    return row, losses


# --------------------------------------------------------------------------------------- the ranks


def _spec_from_dict(d: dict) -> suite.RunSpec:
    return suite.RunSpec(
        model=suite.ModelSpec(**d["model"]),
        optimizer=suite.OptimizerSpec(**d["optimizer"]),
        **{k: v for k, v in d.items() if k not in ("model", "optimizer")},
    )


def _wrap(model: torch.nn.Module, strategy: str, device: torch.device) -> None:
    if strategy == "ddp":
        from torch.distributed._composable.replicate import replicate

        replicate(model, device_ids=[device.index] if device.type == "cuda" else None)
        return
    from torch.distributed.fsdp import fully_shard

    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child)
    fully_shard(model)


def _local_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """This rank's optimizer-state bytes: DTensor states count their local shard."""
    from torch.distributed.tensor import DTensor

    def local(v):
        if isinstance(v, DTensor):
            return v.to_local()
        return {k: local(x) for k, x in v.items()} if isinstance(v, dict) else v

    return memory.optimizer_state_bytes(
        types.SimpleNamespace(state={k: local(v) for k, v in optimizer.state.items()})
    )


def train_rank(spec: suite.RunSpec, strategy: str) -> tuple[dict, list[float]]:
    """One rank's training of ``spec`` (the process group is initialised); never raises."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    cuda = spec.device == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    row: dict = {"threads": torch.get_num_threads()}
    losses: list[float] = []
    started = time.perf_counter()
    try:
        torch.manual_seed(spec.seed)  # the same initial model on every rank
        m = spec.model
        work = zoo.build(
            m.name, width=m.width, depth=m.depth, batch_size=m.batch_size, seed=spec.seed, device=str(device),
            **m.options,
        )  # fmt: skip
        row["params"] = memory.parameter_count(work.model)
        row["notes"] = work.notes
        _wrap(work.model, strategy, device)
        optimizer = suite.import_class(spec.optimizer.cls)(work.model.parameters(), **spec.optimizer.kwargs)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        row["rss_start_bytes"] = memory.rss_bytes()
        peak_reset = memory.reset_rss_peak()
        step_ms, optim_ms = [], []
        mean_loss = torch.zeros(1, device=device)
        for i in range(spec.steps):
            batch = work.train_batch(i * world + rank)  # this rank's part of the global batch
            dist.barrier()  # steps start together: time is the step, not the wait for a slow peer
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            loss = work.loss(batch)
            loss.backward()
            if cuda:
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            mean_loss.copy_(loss.detach())
            dist.all_reduce(mean_loss)
            value = mean_loss.item() / world
            losses.append(value)
            if i >= spec.warmup:
                step_ms.append((t2 - t0) * 1e3)
                optim_ms.append((t2 - t1) * 1e3)
            if rank == 0:
                print(f"@@profiler-step {i} {value!r}", flush=True)
            if not math.isfinite(value):
                row["status"] = f"diverged: non-finite loss at step {i}"
                break
        row["state_bytes"] = _local_state_bytes(optimizer)
        if cuda:
            row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            row["peak_memory_bytes"] = row["cuda_max_allocated_bytes"]
            row["peak_memory_source"] = "cuda max_memory_allocated (largest rank)"
        else:
            row["rss_peak_bytes"] = memory.rss_peak_bytes()
            row["peak_memory_bytes"] = row["rss_peak_bytes"] - row["rss_start_bytes"]
            row["peak_memory_source"] = "cpu VmHWM - RSS at start (largest rank)" + (
                "" if peak_reset else ", not reset"
            )
        if step_ms:
            row["step_ms_median"] = statistics.median(step_ms)
            row["step_ms_p90"] = runner._percentile(step_ms, 0.9)
            row["optim_step_ms_median"] = statistics.median(optim_ms)
            row["optim_step_ms_p90"] = runner._percentile(optim_ms, 0.9)
        if losses and "status" not in row:
            row["final_loss"] = runner.final_loss(losses)
            row["eval_loss"] = work.eval_loss()  # every rank: FSDP2's forward all-gathers
            row["status"] = runner.STATUS_OK
    except Exception as error:
        row["status"] = (
            runner.STATUS_OOM
            if runner._is_oom(error)
            else f"error: {type(error).__name__}: {error}".splitlines()[0][:300]
        )
        row["notes"] = traceback.format_exc(limit=-3).strip().replace("\n", " | ")[-1000:]
    row["wall_s"] = time.perf_counter() - started
    return row, losses


def main(argv: list[str] | None = None) -> int:
    """Entry point of each rank (started by torch.distributed.run)."""
    parser = argparse.ArgumentParser(prog="python -m profiler.distributed")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("strategy", choices=STRATEGIES)
    parser.add_argument("threads", type=int)
    args = parser.parse_args(argv)
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    # A rank is the leader of a session of its own: the parent stops it by this PID (_stop).
    (args.workdir / f"rank{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
    spec = _spec_from_dict(json.loads((args.workdir / "spec.json").read_text()))
    if spec.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if spec.device == "cuda" else "gloo")
    try:
        row, losses = train_rank(spec, args.strategy)
        row["losses"] = losses
        (args.workdir / f"rank{dist.get_rank()}.json").write_text(json.dumps(row))
    finally:
        dist.destroy_process_group()
    return 0 if row.get("status") == runner.STATUS_OK else 1


if __name__ == "__main__":
    sys.exit(main())
