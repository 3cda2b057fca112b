"""``python -m profiler run --nproc N --strategy ...``: one row trained by two gloo ranks through
torch.distributed.run, reported in the single-process columns."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
    ),
]


def _spec(cls: str, steps: int = 3):
    from profiler import suite

    model = suite.ModelSpec(label="mlp", name="mlp", width=0.25, depth=1, batch_size=8)
    opt = suite.OptimizerSpec(
        label="adamw8", config="adamw8", cls=cls, kwargs={"lr": 1e-3}, sweep={}, baseline="adamw8"
    )
    return suite.RunSpec(model=model, optimizer=opt, seed=0, steps=steps, warmup=1, device="cpu")


def test_fsdp2_row_reports_per_rank_memory():
    from profiler import distributed

    steps = []
    row, losses = distributed.run_distributed(
        _spec("bnb8.optim.AdamW8bit"), 2, "fsdp2", lambda i, loss: steps.append(i), timeout_s=120, threads=1
    )
    assert row["status"] == "ok", row.get("notes")
    assert len(losses) == 3 and steps == [0, 1, 2]
    assert "rank0:" in row["notes"] and "rank1:" in row["notes"]
    # 8-bit AdamW holds ~2.03 B/param; sharded over two ranks each rank holds about half of it.
    assert 0.8 < row["state_bytes_per_param"] < 1.5
    assert row["samples_per_s"] > 0 and row["final_loss"] > 0


def test_failed_or_missing_ranks_become_an_error_row():
    from profiler import distributed

    spec = _spec("torch.optim.AdamW")
    failed = [{"status": "error: ValueError: bad lr", "notes": "trace"}, None]
    row, _ = distributed._aggregate(spec, 2, "ddp", failed, None, 1, [])
    assert row["status"] == "error: ValueError: bad lr" and row["key"] == spec.key
    row, _ = distributed._aggregate(spec, 2, "ddp", [None, None], None, -9, ["", "Killed"])
    assert row["status"].startswith("error: 2 rank(s) exited with code -9")
    ok = {"status": "ok", "params": 100, "state_bytes": 800, "step_ms_median": 10.0, "peak_memory_bytes": 5}
    row, _ = distributed._aggregate(
        spec, 2, "fsdp2", [ok, {**ok, "state_bytes": 1000, "step_ms_median": 20.0}], None, 0, []
    )
    assert (row["status"], row["state_bytes"], row["step_ms_median"]) == ("ok", 1000, 20.0)
    assert row["samples_per_s"] == pytest.approx(2 * 8 / 0.02)


def test_cli_strategy_needs_nproc(capsys):
    from profiler import cli

    assert cli.main(["run", "--strategy", "fsdp2"]) == 2
    assert "--nproc" in capsys.readouterr().err


def test_timeout_stops_the_launcher_and_every_rank(monkeypatch):
    """torch.distributed.run puts each rank in a session of its own: a timeout must stop them too,
    not only the launcher (which left the profiler waiting on their output, the ranks running)."""
    import os

    from profiler import distributed

    sys.path.insert(0, str(REPO / "tests" / "profiler"))  # profiler_fake_optimizers, for the ranks too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "tests" / "profiler"), os.environ.get("PYTHONPATH")])
    )
    row, _ = distributed.run_distributed(
        _spec("profiler_fake_optimizers.HangOnStep"), 2, "ddp", timeout_s=20, threads=1
    )
    assert row["status"] == "error: timed out after 20 s (--timeout)"
    import subprocess

    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    survivors = [line for line in listing.splitlines() if "profiler.distributed" in line]
    assert not survivors, survivors
