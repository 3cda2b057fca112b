"""tests/benchmarks/cpu_scaling.py (run by `make cpu-scaling` and `make gpu-check`): its table and JSON
agree with each other and with what was timed, and bad options are refused by name."""

from __future__ import annotations

import json
import sys

import pytest

from tests.benchmarks import cpu_scaling


def test_cpu_scaling_writes_one_consistent_row_per_thread_count(tmp_path, capsys):
    assert (
        cpu_scaling.main(["--params", "5000", "--threads", "1,2", "--rounds", "3", "--out", str(tmp_path)])
        == 0
    )
    report = json.loads((tmp_path / "cpu_scaling.json").read_text())
    rows = report["results"]
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert r["bnb8_ms"] > 0 and r["torch_ms"] > 0
        assert r["ratio"] == pytest.approx(r["bnb8_ms"] / r["torch_ms"])
        assert r["round_ratio_q1"] <= r["round_ratio_q3"]
        assert r["bnb8_GB_per_s"] == pytest.approx(cpu_scaling.BYTES_8BIT * 5000 / r["bnb8_ms"] / 1e6)
    table = (tmp_path / "cpu_scaling.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(line.split("|")[1]) for line in body] == [1, 2]
    assert f"{rows[0]['ratio']:.2f}x" in body[0]
    assert "[2/2] 2 thread(s)" in capsys.readouterr().err


def test_cpu_scaling_with_bitsandbytes_adds_its_step_and_the_speedup(tmp_path):
    pytest.importorskip("bitsandbytes")
    argv = ["--params", "5000", "--threads", "1", "--rounds", "3", "--out", str(tmp_path), "--bitsandbytes"]
    assert cpu_scaling.main(argv) == 0
    report = json.loads((tmp_path / "cpu_scaling.json").read_text())
    (row,) = report["results"]
    assert row["bitsandbytes_ms"] > 0
    assert row["speedup"] == pytest.approx(row["bitsandbytes_ms"] / row["bnb8_ms"])
    assert row["round_speedup_q1"] <= row["round_speedup_q3"]
    assert report["environment"]["bitsandbytes"]
    table = (tmp_path / "cpu_scaling.md").read_text()
    assert "bnb8 speed-up (quartiles)" in table and f"{row['speedup']:.1f}x" in table
    assert "--bitsandbytes`" in table


def test_cpu_scaling_without_bitsandbytes_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(SystemExit) as exit_info:
        cpu_scaling.main(["--bitsandbytes", "--params", "10"])
    assert exit_info.value.code == 2
    assert "--bitsandbytes: bitsandbytes is not importable" in capsys.readouterr().err


def test_cpu_scaling_default_thread_counts_end_at_the_usable_cpus():
    counts = cpu_scaling.default_threads()
    assert counts[0] == 1 and counts == sorted(set(counts))
    assert all(b == 2 * a for a, b in zip(counts, counts[1:-1]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "--threads: expected thread counts >= 1"),
        (["--threads", "two"], "--threads: expected thread counts like 1,2,4"),
        (["--params", "-5"], "--params: expected a whole number >= 1"),
        (["--warmup", "-1"], "--warmup: expected a whole number >= 0"),
    ],
)
def test_cpu_scaling_refuses_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cpu_scaling.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
