"""The benchmark regression gate (tests/benchmarks/gate.py) and ``python -m profiler bench-report``,
fed synthetic pytest-benchmark JSON: fast, in the default run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from profiler import bench_report
from profiler.cli import main as profiler_main

BENCH_DIR = Path(__file__).parent / "benchmarks"


def _load(name: str):
    """The benchmark helpers live beside the benchmarks (not a package): import them by path."""
    spec = importlib.util.spec_from_file_location(f"bnb8_bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gate = _load("gate")
bench = _load("_bench")


def bench_entry(key: str, ratio: float, device: str = "cpu", median: float = 0.01) -> dict:
    return {
        "name": f"test_step[{key}]",
        "fullname": f"tests/benchmarks/test_x.py::test_step[{key}]",
        "params": {"device": device},
        "stats": {"median": median, "min": median * 0.9, "mean": median * 1.5, "rounds": 15},
        "extra_info": {
            "gate_key": key,
            "ratio": ratio,
            "reference": "torch.optim.Adam(fused=True)",
            "bytes_moved": 16 * 2**20,
            "gbps": 16 * 2**20 / median / 1e9,
            "device": device,
            "reference_median_s": median / ratio if ratio else None,
        },
    }


def result_json(
    path: Path, ratios: dict[str, float], commit: str = "a" * 40, when: str = "2026-01-01T00:00:00"
) -> Path:
    data = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU"}},
        "commit_info": {"id": commit, "dirty": False, "time": when},
        "datetime": when,
        "benchmarks": [
            bench_entry(k, r, "cuda" if k.endswith("-cuda") else "cpu") for k, r in ratios.items()
        ],
    }
    path.write_text(json.dumps(data))
    return path


BASE = {"adam8bit-16M-fp32-cpu": 2.0, "adam32bit-16M-fp32-cpu": 1.0, "adam8bit-16M-fp32-cuda": 0.6}


@pytest.fixture
def baseline(tmp_path) -> Path:
    runs = [result_json(tmp_path / f"base{i}.json", BASE) for i in range(2)]
    path = tmp_path / "baseline.json"
    assert gate.main([*map(str, runs), "--write-baseline", "--baseline", str(path), "--margin", "0.3"]) == 0
    return path


def run_gate(capsys, result: Path, baseline: Path, *extra: str) -> tuple[int, str]:
    code = gate.main([str(result), "--baseline", str(baseline), "--devices", "cpu", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_baseline_holds_the_ratio_and_margin(baseline):
    data = json.loads(baseline.read_text())
    assert data["margin"] == 0.3
    assert data["benchmarks"]["adam8bit-16M-fp32-cpu"]["ratio"] == 2.0
    assert data["benchmarks"]["adam8bit-16M-fp32-cuda"]["device"] == "cuda"


def test_baseline_of_a_key_is_its_slowest_run(tmp_path):
    runs = [
        result_json(tmp_path / f"noisy{i}.json", {"steady-cpu": 2.0 + 0.1 * i, "bimodal-cpu": r})
        for i, r in enumerate([2.6, 2.6, 3.6, 2.6, 2.6])
    ]
    path = tmp_path / "baseline.json"
    assert gate.main([*map(str, runs), "--write-baseline", "--baseline", str(path), "--margin", "0.3"]) == 0
    data = json.loads(path.read_text())["benchmarks"]
    assert data["steady-cpu"]["ratio"] == 2.4  # the slowest run: an unchanged kernel never fails
    assert data["bimodal-cpu"]["ratio"] == 3.6
    assert (
        data["bimodal-cpu"]["runs"] == [2.6, 2.6, 3.6, 2.6, 2.6] and data["bimodal-cpu"]["spread"] == 0.3846
    )


def test_baseline_refresh_refuses_to_absorb_a_regression(tmp_path, baseline, capsys):
    before = baseline.read_text()
    slower = [
        result_json(tmp_path / f"slow{i}.json", {**BASE, "adam8bit-16M-fp32-cpu": 2.9}) for i in range(2)
    ]
    args = [*map(str, slower), "--write-baseline", "--baseline", str(baseline), "--margin", "0.3"]
    assert gate.main(args) == 2
    err = capsys.readouterr().err
    assert "adam8bit-16M-fp32-cpu: 2.000 -> 2.900 (+45%)" in err and "--accept-slower" in err
    assert baseline.read_text() == before  # nothing written
    assert gate.main([*args, "--accept-slower"]) == 0
    assert json.loads(baseline.read_text())["benchmarks"]["adam8bit-16M-fp32-cpu"]["ratio"] == 2.9


def test_unchanged_ratios_pass(tmp_path, baseline, capsys):
    result = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": 2.4, "adam32bit-16M-fp32-cpu": 0.9})
    code, out = run_gate(capsys, result, baseline)
    assert code == 0, out
    assert "adam8bit-16M-fp32-cuda: device cuda is not on this machine" in out


def test_regression_beyond_margin_fails_naming_key_ratios_and_margin(tmp_path, baseline, capsys):
    result = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": 2.7, "adam32bit-16M-fp32-cpu": 1.0})
    code, out = run_gate(capsys, result, baseline)
    assert code == 1
    assert "adam8bit-16M-fp32-cpu: ratio 2.700 vs baseline 2.000 (+35%, margin 30%" in out
    assert "adam32bit-16M-fp32-cpu: ratio" not in out


@pytest.mark.parametrize(("ratio", "code"), [(2.599, 0), (2.601, 1)])
def test_the_limit_is_baseline_times_one_plus_margin(tmp_path, baseline, capsys, ratio, code):
    """Baseline 2.0, margin 30 %: the limit is 2.6 exactly, no slack either way."""
    result = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": ratio, "adam32bit-16M-fp32-cpu": 1.0})
    assert run_gate(capsys, result, baseline)[0] == code


def test_margin_option_overrides_baseline_margin(tmp_path, baseline, capsys):
    result = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": 2.7, "adam32bit-16M-fp32-cpu": 1.0})
    code, out = run_gate(capsys, result, baseline, "--margin", "0.4")
    assert code == 0, out


def test_missing_key_fails_unless_allowed(tmp_path, baseline, capsys):
    result = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": 2.0})
    code, out = run_gate(capsys, result, baseline)
    assert code == 1
    assert "adam32bit-16M-fp32-cpu: in the baseline (ratio 1.000) but missing from the result" in out
    code, out = run_gate(capsys, result, baseline, "--allow-missing", "adam32bit-*")
    assert code == 0, out


def test_missing_cuda_key_fails_when_cuda_is_present(tmp_path, baseline, capsys):
    result = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": 2.0, "adam32bit-16M-fp32-cpu": 1.0})
    code = gate.main([str(result), "--baseline", str(baseline), "--devices", "cpu,cuda"])
    assert code == 1
    assert "adam8bit-16M-fp32-cuda: in the baseline" in capsys.readouterr().err


def test_new_key_is_reported_and_passes(tmp_path, baseline, capsys):
    ratios = {"adam8bit-16M-fp32-cpu": 2.0, "adam32bit-16M-fp32-cpu": 1.0, "lion8bit-1M-fp32-cpu": 3.0}
    code, out = run_gate(capsys, result_json(tmp_path / "r.json", ratios), baseline)
    assert code == 0, out
    assert "new: lion8bit-1M-fp32-cpu: new (ratio 3.000)" in out


def test_much_faster_passes_with_a_hint(tmp_path, baseline, capsys):
    ratios = {"adam8bit-16M-fp32-cpu": 1.0, "adam32bit-16M-fp32-cpu": 1.0}
    code, out = run_gate(capsys, result_json(tmp_path / "r.json", ratios), baseline)
    assert code == 0, out
    assert "faster than the baseline" in out and "make bench-baseline" in out


@pytest.mark.parametrize("rerun_ratio, expected", [(2.1, 0), (2.9, 1)])
def test_rerun_keeps_the_lowest_ratio(tmp_path, baseline, capsys, monkeypatch, rerun_ratio, expected):
    """A noisy spike is measured again: it passes when the rerun is within the margin, and a real
    regression (above the limit again) still fails."""
    calls = []

    def fake_rerun(nodeids, out):
        calls.append(nodeids)
        return result_json(out, {"adam8bit-16M-fp32-cpu": rerun_ratio})

    monkeypatch.setattr(gate, "rerun_benchmarks", fake_rerun)
    ratios = {"adam8bit-16M-fp32-cpu": 3.5, "adam32bit-16M-fp32-cpu": 1.0}
    code, out = run_gate(capsys, result_json(tmp_path / "r.json", ratios), baseline, "--rerun", "2")
    assert code == expected, out
    assert calls[0] == ["tests/benchmarks/test_x.py::test_step[adam8bit-16M-fp32-cpu]"]
    assert len(calls) == (1 if expected == 0 else 2)
    assert f"rerun 1: adam8bit-16M-fp32-cpu: ratio 3.500 -> {rerun_ratio:.3f}" in out


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0])
def test_non_positive_or_nan_ratio_fails(tmp_path, baseline, capsys, bad):
    ratios = {"adam8bit-16M-fp32-cpu": bad, "adam32bit-16M-fp32-cpu": 1.0}
    code, out = run_gate(capsys, result_json(tmp_path / "r.json", ratios), baseline)
    assert code == 1
    assert "is not a positive finite number" in out


def test_duplicate_key_and_bad_files_are_input_errors(tmp_path, baseline, capsys):
    path = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": 2.0})
    data = json.loads(path.read_text())
    data["benchmarks"].append(data["benchmarks"][0])
    path.write_text(json.dumps(data))
    assert run_gate(capsys, path, baseline)[0] == 2
    (tmp_path / "junk.json").write_text("{not json")
    code, out = run_gate(capsys, tmp_path / "junk.json", baseline)
    assert code == 2 and "cannot read" in out
    code, out = run_gate(capsys, result_json(tmp_path / "r2.json", {"x-cpu": 1.0}), tmp_path / "none.json")
    assert code == 2 and "make bench-baseline" in out


def test_result_without_gated_benchmarks_fails(tmp_path, baseline, capsys):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps({"benchmarks": [{"name": "test_other", "stats": {"median": 1.0}, "extra_info": {}}]})
    )
    code, out = run_gate(capsys, path, baseline, "--allow-missing", "*")
    assert code == 1
    assert "not gated (1 benchmarks" in out and "nothing was gated" in out


def test_slowdown_env_parsing(monkeypatch):
    monkeypatch.setenv(bench.SLOWDOWN_ENV, "adam8bit-16M-*=1.5, lion*=2")
    assert bench.slowdown_factor("adam8bit-16M-fp32-cpu") == 1.5
    assert bench.slowdown_factor("lion8bit-1M-bf16-cpu") == 2.0
    assert bench.slowdown_factor("adam32bit-16M-fp32-cpu") == 1.0
    monkeypatch.setenv(bench.SLOWDOWN_ENV, "nofactor")
    with pytest.raises(ValueError, match="PATTERN=FACTOR"):
        bench.slowdown_factor("x")


# ------------------------------------------------------------------------------------ bench-report


def test_bench_report_tables_and_plots_across_commits(tmp_path, baseline, capsys):
    first = result_json(
        tmp_path / "r1.json",
        {"adam8bit-16M-fp32-cpu": 2.0, "adam32bit-16M-fp32-cpu": 1.0},
        "1" * 40,
        "2026-01-01T00:00:00",
    )
    second = result_json(
        tmp_path / "r2.json",
        {"adam8bit-16M-fp32-cpu": 3.0, "adam32bit-16M-fp32-cpu": 1.1},
        "2" * 40,
        "2026-01-02T00:00:00",
    )
    frame = bench_report.load([second, first])
    assert list(frame.sort_values("order")["run"].drop_duplicates()) == ["11111111", "22222222"]
    out = tmp_path / "report"
    code = profiler_main(
        ["bench-report", str(second), str(first), "--out", str(out), "--baseline", str(baseline)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "adam8bit-16M-fp32-cpu" in printed and "+50.0%" in printed
    summary = (out / "bench_summary.md").read_text()
    assert "| adam8bit-16M-fp32-cpu | 2.000x | 2.000x | 3.000x | +50.0% |" in summary
    assert (out / "bench_ratio_trend.png").stat().st_size > 0
    assert (out / "bench_times.png").stat().st_size > 0
    assert len(frame) == 4


def test_bench_report_rejects_non_benchmark_json(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[]")
    assert profiler_main(["bench-report", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


def test_failure_names_a_changed_measurement_setup(tmp_path, capsys):
    """A regression measured differently from the baseline (another ISA, an injected slowdown) says so."""
    baseline = tmp_path / "baseline.json"
    entry = {"ratio": 2.0, "device": "cpu", "isa": "avx512", "threads": 1, "timer": "cpu", "slowdown": 1.0}
    baseline.write_text(json.dumps({"margin": 0.3, "benchmarks": {"adam8bit-16M-fp32-cpu": entry}}))
    path = result_json(tmp_path / "r.json", {"adam8bit-16M-fp32-cpu": 5.0})
    data = json.loads(path.read_text())
    data["benchmarks"][0]["extra_info"].update(isa="generic", threads=1, timer="cpu", slowdown=1.0)
    path.write_text(json.dumps(data))
    code, out = run_gate(capsys, path, baseline)
    assert code == 1
    assert "measured differently: isa generic (baseline avx512)" in out
    assert "threads 1" not in out
