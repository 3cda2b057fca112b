"""Measurements: exact optimizer-state bytes, divergence, timing and failure rows."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest
import torch

from profiler import memory, report, runner
from profiler.suite import ModelSpec, OptimizerSpec, RunSpec

ODD_SHAPES = [(4097,), (1000, 1001), (3, 5, 7), (1,)]


def _params(shapes) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(s)) for s in shapes]


def _step(optimizer, params) -> None:
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_adam_state_bytes_are_exact(amsgrad):
    params = _params(ODD_SHAPES)
    optimizer = torch.optim.Adam(params, lr=1e-3, amsgrad=amsgrad)
    assert memory.optimizer_state_bytes(optimizer) == 0  # state is created lazily
    _step(optimizer, params)
    moments = 3 if amsgrad else 2
    # float32 moments per element, plus torch's float32 scalar `step` tensor per parameter
    expected = sum(moments * 4 * p.numel() + 4 for p in params)
    assert memory.optimizer_state_bytes(optimizer) == expected


def test_sgd_momentum_state_bytes_are_exact():
    params = _params(ODD_SHAPES)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    _step(optimizer, params)
    assert memory.optimizer_state_bytes(optimizer) == sum(4 * p.numel() for p in params)


def test_shared_and_nested_state_counted_once():
    params = _params([(10,), (20,)])
    optimizer = torch.optim.SGD(params, lr=0.1)
    qmap = torch.zeros(256)
    buffer = torch.zeros(30, dtype=torch.uint8)
    optimizer.state[params[0]] = {"qmap": qmap, "codes": buffer[:10], "nested": {"absmax": torch.zeros(1)}}
    optimizer.state[params[1]] = {
        "qmap": qmap,
        "codes": buffer[10:],
        "list": [torch.zeros(2, dtype=torch.float64)],
    }
    assert memory.optimizer_state_bytes(optimizer) == 256 * 4 + 30 + 4 + 16


def test_divergence_of_a_curve_against_itself_is_zero():
    losses = np.random.default_rng(0).random(50) + 2
    assert report.divergence(losses, losses) == {"loss_gap_mean": 0.0, "loss_gap_max": 0.0}


def test_divergence_measures_the_gap():
    gap = report.divergence(np.array([1.0, 2.0, 4.0, 9.0]), np.array([1.0, 1.0, 1.0]))
    assert gap == {"loss_gap_mean": pytest.approx(4 / 3), "loss_gap_max": 3.0}


def test_final_loss_is_the_mean_of_the_last_tenth():
    assert runner.final_loss([9.0] * 18 + [1.0, 3.0]) == 2.0
    assert runner.final_loss([5.0, 7.0]) == 7.0


def _spec(cls: str, kwargs: dict, steps: int = 5, model: str = "mlp", **model_kw) -> RunSpec:
    return RunSpec(
        ModelSpec(model, model, width=0.25, depth=1, batch_size=8, options=model_kw),
        OptimizerSpec("opt", "opt", cls, kwargs, {}, "opt"),
        seed=0,
        steps=steps,
        warmup=1,
        device="cpu",
    )


def test_train_and_measure_in_process():
    row, losses = runner.train_and_measure(_spec("torch.optim.Adam", {"lr": 1e-3}))
    assert row["status"] == "ok"
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert row["state_bytes"] == 8 * row["params"] + 4 * 6  # mlp at depth 1 has 6 parameter tensors
    assert row["peak_memory_source"].startswith("cpu VmHWM")
    assert row["peak_memory_bytes"] >= 0 and row["rss_peak_bytes"] > 0
    assert 0 < row["optim_step_ms_median"] <= row["step_ms_median"] <= row["step_ms_p90"]
    assert row["final_loss"] == pytest.approx(losses[-1])


def test_same_configuration_twice_is_bitwise_identical():
    """The batches depend only on (seed, step): two identical runs give identical curves."""
    _, first = runner.train_and_measure(_spec("torch.optim.AdamW", {"lr": 1e-3}, model="gpt", seq_len=16))
    _, second = runner.train_and_measure(_spec("torch.optim.AdamW", {"lr": 1e-3}, model="gpt", seq_len=16))
    assert first == second


def test_constructor_error_becomes_an_error_row():
    row, losses = runner.train_and_measure(_spec("torch.optim.AdamW", {"lr": -1.0}))
    assert row["status"].startswith("error: ValueError: Invalid learning rate")
    assert losses == []


def test_crashed_worker_becomes_an_error_row():
    row, _ = runner.run_isolated(_spec("profiler_fake_optimizers.CrashOnStep", {"lr": 0.1}))
    assert row["status"] == "error: worker killed by signal 9 (out of memory?)"
    assert row["key"] == "mlp/opt/seed0"


def test_workers_wait_passively_unless_told_otherwise():
    row, _ = runner.run_isolated(_spec("profiler_fake_optimizers.EnvProbe", {"lr": 0.1}))
    expected = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    assert row["status"] == f"error: RuntimeError: OMP_WAIT_POLICY={expected}"
    assert runner.worker_env()["OMP_WAIT_POLICY"] == expected  # what env.json records


def test_hung_worker_is_killed_after_the_timeout():
    started = time.monotonic()
    row, _ = runner.run_isolated(_spec("profiler_fake_optimizers.HangOnStep", {"lr": 0.1}), timeout_s=1)
    assert row["status"] == "error: timed out after 1 s (--timeout)"
    assert time.monotonic() - started < 10


def test_isolated_run_reports_progress_and_matches_in_process():
    seen = []
    row, losses = runner.run_isolated(
        _spec("torch.optim.SGD", {"lr": 0.1}), lambda i, loss: seen.append((i, loss))
    )
    _, in_process = runner.train_and_measure(_spec("torch.optim.SGD", {"lr": 0.1}))
    assert row["status"] == "ok"
    assert [i for i, _ in seen] == list(range(5))
    assert losses == [loss for _, loss in seen] == in_process


def test_compare_to_baseline_against_itself():
    results = pd.DataFrame(
        [
            {"key": "m/a/seed0", "model": "m", "optimizer": "a", "baseline": "a", "seed": 0, "status": "ok",
             "state_bytes": 80, "peak_memory_bytes": 100, "step_ms_median": 2.0, "optim_step_ms_median": 1.0,
             "final_loss": 3.0, "eval_loss": 3.5},
            {"key": "m/b/seed0", "model": "m", "optimizer": "b", "baseline": "a", "seed": 0, "status": "ok",
             "state_bytes": 20, "peak_memory_bytes": 75, "step_ms_median": 3.0, "optim_step_ms_median": 0.5,
             "final_loss": 3.3, "eval_loss": 3.5},
        ]
    )  # fmt: skip
    curves = pd.DataFrame(
        {"key": ["m/a/seed0"] * 3 + ["m/b/seed0"] * 3, "step": [0, 1, 2] * 2, "loss": [3, 2, 1, 3, 2.5, 1]}
    )
    table = report.compare_to_baseline(results, curves).set_index("optimizer")
    base, other = table.loc["a"], table.loc["b"]
    assert base["state_saved"] == 0 and base["loss_gap_max"] == 0 and base["final_loss_ratio"] == 1
    assert other["state_saved"] == pytest.approx(0.75)
    assert other["peak_saved"] == pytest.approx(0.25)
    assert other["step_time_ratio"] == pytest.approx(1.5)
    assert other["optim_time_ratio"] == pytest.approx(0.5)
    assert other["final_loss_ratio"] == pytest.approx(1.1)
    assert other["loss_gap_mean"] == pytest.approx(0.5 / 3)
    assert other["loss_gap_max"] == pytest.approx(0.5)


def test_adamw8bit_state_bytes_match_the_documented_layout():
    """DESIGN.md: uint8 codes + float32 absmax per 256-block (+ 256-entry qmaps) for tensors of at least
    ``min_8bit_size`` elements; float32 state below it."""
    import bnb8.optim as optim

    shapes = [(4097,), (1000, 1001), (64, 64), (300,)]  # the last is below min_8bit_size=4096
    params = _params(shapes)
    optimizer = optim.AdamW8bit(params, lr=1e-3, min_8bit_size=4096)
    _step(optimizer, params)
    big = [p.numel() for p in params if p.numel() >= 4096]
    small = [p.numel() for p in params if p.numel() < 4096]
    without_qmaps = sum(2 * n + 2 * 4 * -(-n // 256) for n in big) + sum(2 * 4 * n for n in small)
    qmap_bytes = memory.optimizer_state_bytes(optimizer) - without_qmaps
    assert qmap_bytes in (2 * 256 * 4, 2 * 256 * 4 * len(big))  # two maps, shared or one pair per tensor
