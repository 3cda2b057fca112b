"""End-to-end checks that need a GPU or minutes: marked, out of the default run."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from profiler import runner
from profiler.cli import main
from profiler.suite import ModelSpec, OptimizerSpec, RunSpec


def _spec(cls: str, device: str) -> RunSpec:
    return RunSpec(
        ModelSpec("gpt", "gpt", width=0.5, depth=1, batch_size=8, options={"seq_len": 32}),
        OptimizerSpec("opt", "opt", cls, {"lr": 1e-3}, {}, "opt"),
        seed=0,
        steps=6,
        warmup=2,
        device=device,
    )


@pytest.mark.cuda
@pytest.mark.parametrize("cls", ["torch.optim.AdamW", "bnb8.optim.AdamW8bit"])
def test_cuda_row_measures_device_memory(cls):
    row, losses = runner.run_isolated(_spec(cls, "cuda"))
    assert row["status"] == "ok", row.get("notes")
    assert len(losses) == 6
    assert row["peak_memory_source"] == "cuda max_memory_allocated"
    assert row["cuda_max_allocated_bytes"] >= row["state_bytes"] > 0
    # NVML sees the whole process (context, allocator cache): at least the tensors, unless NVML cannot
    # attribute memory to this PID (containers), which the row's notes then say.
    if pd.notna(row.get("nvml_peak_bytes")):
        assert row["nvml_peak_bytes"] >= row["cuda_max_allocated_bytes"]
    else:
        assert "NVML" in row["notes"]


@pytest.mark.slow
def test_smoke_suite_finishes_in_three_minutes_with_every_row_ok(tmp_path):
    started = time.monotonic()
    assert main(["run", "smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    elapsed = time.monotonic() - started
    (run_dir,) = (tmp_path / "smoke").iterdir()
    results = pd.read_csv(run_dir / "results.csv")
    assert len(results) == 18 and set(results["status"]) == {"ok"}
    assert elapsed < 180, f"smoke took {elapsed:.0f} s (a busy machine slows it down)"
