"""Reports: files and columns of a run, summary tables, plots."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import pandas as pd
import pytest

from profiler import report
from profiler.cli import main
from profiler.runner import RESULT_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_run_directory_files_and_columns(tiny_run):
    assert list(pd.read_csv(tiny_run / "results.csv").columns) == RESULT_COLUMNS
    assert list(pd.read_csv(tiny_run / "curves.csv").columns) == report.CURVE_COLUMNS
    env = json.loads((tiny_run / "env.json").read_text())
    for key in ("python", "torch", "device", "device_name", "torch_threads", "git_commit"):
        assert key in env
    assert json.loads((tiny_run / "run.json").read_text())["steps"] == 6
    assert (tiny_run / "suite.toml").is_file()
    assert not list(tiny_run.glob(".*.tmp"))  # no temporary files left behind


def test_results_hold_measurements(tiny_run):
    results = pd.read_csv(tiny_run / "results.csv")
    assert (results["params"] > 0).all()
    assert (results["state_bytes"] > 0).all()
    assert (results["step_ms_median"] > 0).all()
    assert (results["peak_memory_source"].str.startswith("cpu VmHWM")).all()
    adamw = results[results["optimizer"] == "adamw"]
    assert (adamw["state_bytes_per_param"].between(8, 8.01)).all()


def test_summary_and_plots(tiny_run):
    text = (tiny_run / "summary.md").read_text()
    for heading in ("## Memory", "## Speed", "## Loss divergence", "## Plots"):
        assert heading in text
    assert "| gpt | sgd |" in text
    for name in ("memory.png", "loss_curves.png", "step_time.png"):
        assert (tiny_run / name).read_bytes()[:8] == PNG_MAGIC
    assert not (tiny_run / "memory_vs_min_8bit_size.png").exists()  # no min_8bit_size sweep in this suite


def test_summary_tables_show_the_results_columns(tiny_run):
    """Each number in summary.md's memory and speed tables is its results.csv column (one seed: the mean
    is the value), formatted: a table reading the wrong column fails here."""
    results = pd.read_csv(tiny_run / "results.csv").set_index(["model", "optimizer"])
    text = (tiny_run / "summary.md").read_text()

    def table(heading):
        lines = text.split(f"## {heading}")[1].split("\n## ")[0].strip().splitlines()
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
        return [dict(zip(rows[0], r)) for r in rows[2:]]

    mib = 2**20
    for row in table("Memory"):
        want = results.loc[(row["model"], row["optimizer"])]
        assert float(row["state MiB"].replace(",", "")) == pytest.approx(want["state_bytes"] / mib, abs=0.006)
        assert float(row["peak MiB"].replace(",", "")) == pytest.approx(
            want["peak_memory_bytes"] / mib, abs=0.006
        )
        assert int(row["params"].replace(",", "")) == want["params"]
    for row in table("Speed"):
        want = results.loc[(row["model"], row["optimizer"])]
        assert float(row["step ms (median)"].replace(",", "")) == pytest.approx(
            want["step_ms_median"], rel=0.01
        )
        assert float(row["optimizer.step ms"].replace(",", "")) == pytest.approx(
            want["optim_step_ms_median"], rel=0.01
        )


def test_report_command_rebuilds(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    for name in ("summary.md", "memory.png", "loss_curves.png", "step_time.png"):
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0

    def tables(path):
        return path.read_text().split("## Memory")[1].split("## Plots")[0]

    assert tables(copy / "summary.md") == tables(tiny_run / "summary.md")
    assert (copy / "step_time.png").is_file()


def test_a_partial_run_says_so_in_report_and_compare(tiny_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    results = pd.read_csv(copy / "results.csv")
    results[results["model"] == "mlp"].to_csv(copy / "results.csv", index=False)  # 3 of 6 rows
    assert main(["report", str(copy)]) == 0
    err = capsys.readouterr().err
    notice = "incomplete run: 3 of 6 rows finished (missing: gpt/adamw/seed0, gpt/adamw-again/seed0, gpt/sgd/seed0)"
    assert notice in err and f"--resume {copy}" in err
    assert f"**Warning: {notice}" in (copy / "summary.md").read_text()
    assert "Warning" not in (tiny_run / "summary.md").read_text()  # the whole run has no notice
    assert main(["compare", str(tiny_run), str(copy)]) == 0
    assert f"warning: B is an {notice}" in capsys.readouterr().out


def test_report_rejects_a_directory_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_min_8bit_size_sweep_plot(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        'description = "s"\nsteps = 4\nwarmup = 1\n[[models]]\nname = "mlp"\nwidth = 0.25\nbatch_size = 8\n'
        '[[optimizers]]\nname = "base"\nclass = "torch.optim.Adam"\n'
        '[[optimizers]]\nname = "t"\nclass = "profiler_fake_optimizers.ThresholdAdam"\n'
        "sweep = { min_8bit_size = [0, 4096, 1_000_000_000] }\n"
    )
    assert main(["run", str(path), "--device", "cpu", "--out", str(tmp_path)]) == 0
    (run_dir,) = (tmp_path / "sweep").iterdir()
    assert (run_dir / "memory_vs_min_8bit_size.png").read_bytes()[:8] == PNG_MAGIC
    results = pd.read_csv(run_dir / "results.csv")
    assert sorted(results["min_8bit_size"].dropna()) == [0, 4096, 1_000_000_000]
    written = list(csv.DictReader(io.StringIO((run_dir / "results.csv").read_text())))
    column = sorted(row["min_8bit_size"] for row in written)
    assert column == ["", "0", "1000000000", "4096"]  # whole numbers, the baseline's gap empty


def test_markdown_table():
    table = pd.DataFrame({"model": ["a|b", "c"], "MiB": ["1.50", "12.00"], "ratio": ["0.5x", ""]})
    assert report.markdown(table).splitlines() == [
        "| model | MiB | ratio |",
        "|---|---:|---:|",
        "| a\\|b | 1.50 | 0.5x |",
        "| c | 12.00 |  |",
    ]


def test_atomic_append_replaces_a_rerun_row(tmp_path):
    row = {c: None for c in RESULT_COLUMNS} | {"key": "m/o/seed0", "model": "m", "optimizer": "o", "seed": 0}
    report.append_result(tmp_path, row | {"status": "error: x"}, [1.0, 2.0])
    report.append_result(tmp_path, row | {"status": "ok"}, [3.0, 2.0, 1.0])
    results, curves = report.read_results(tmp_path), report.read_curves(tmp_path)
    assert list(results["status"]) == ["ok"]
    assert list(curves["loss"]) == [3.0, 2.0, 1.0]


def test_threads_setting_reaches_the_workers(tiny_run):
    assert set(pd.read_csv(tiny_run / "results.csv")["threads"]) == {1}
    assert json.loads((tiny_run / "env.json").read_text())["torch_threads"] == 1


def test_failed_configuration_is_recorded_and_the_suite_goes_on(tmp_path, capsys):
    path = tmp_path / "failing.toml"
    path.write_text(
        'description = "f"\nsteps = 3\nwarmup = 1\n[[models]]\nname = "mlp"\nwidth = 0.25\nbatch_size = 8\n'
        '[[optimizers]]\nname = "good"\nclass = "torch.optim.SGD"\nkwargs = { lr = 0.1 }\n'
        '[[optimizers]]\nname = "bad"\nclass = "profiler_fake_optimizers.RejectsOnStep"\nkwargs = { lr = 0.1 }\n'
        '[[optimizers]]\nname = "after"\nclass = "torch.optim.Adam"\n'
    )
    assert main(["run", str(path), "--device", "cpu", "--out", str(tmp_path)]) == 1  # a row failed
    assert "error: 1 of 3 rows failed (mlp/bad/seed0)" in capsys.readouterr().err
    (run_dir,) = (tmp_path / "failing").iterdir()
    status = pd.read_csv(run_dir / "results.csv").set_index("optimizer")["status"]
    assert status["good"] == "ok" and status["after"] == "ok"
    assert status["bad"].startswith("error: ValueError: Invalid learning rate")
    summary = (run_dir / "summary.md").read_text()
    assert "## Failed configurations" in summary and "| mlp | bad | error: ValueError" in summary


def test_a_diverged_row_is_a_result_not_a_failure(tmp_path):
    path = tmp_path / "diverge.toml"
    path.write_text(
        'description = "d"\nsteps = 3\nwarmup = 1\n[[models]]\nname = "mlp"\nwidth = 0.25\nbatch_size = 8\n'
        '[[optimizers]]\nname = "good"\nclass = "torch.optim.SGD"\nkwargs = { lr = 0.1 }\n'
        '[[optimizers]]\nname = "diverging"\nclass = "profiler_fake_optimizers.DivergesOnStep"\nkwargs = { lr = 0.1 }\n'
    )
    assert main(["run", str(path), "--device", "cpu", "--out", str(tmp_path)]) == 0
    (run_dir,) = (tmp_path / "diverge").iterdir()
    status = pd.read_csv(run_dir / "results.csv").set_index("optimizer")["status"]
    assert status["good"] == "ok" and status["diverging"].startswith("diverged: non-finite loss")


def test_incomplete_note_survives_a_hand_edited_run_json(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    for edit in ({"steps": "x"}, {"filter": 5}, {"device": None}):
        settings = json.loads((tiny_run / "run.json").read_text())
        (copy / "run.json").write_text(json.dumps({**settings, **edit}))
        assert report.incomplete_note(copy) is None  # nothing can be said; the report still builds
        assert main(["report", str(copy)]) == 0


def test_a_model_without_curves_and_odd_labels_still_get_a_report(tmp_path):
    """A model whose every run fails before its first step has no loss curve: the summary and the
    other plots are still written. An optimizer labelled "nan" stays a label (not a missing value)."""
    path = tmp_path / "odd.toml"
    path.write_text(
        'description = "odd"\nsteps = 3\nwarmup = 1\nbaseline = "nan"\n'
        '[[models]]\nname = "mlp"\nwidth = 0.25\nbatch_size = 8\n'
        '[[models]]\nname = "cnn"\nimage_size = 1\nbatch_size = 8\n'
        '[[optimizers]]\nname = "nan"\nclass = "torch.optim.SGD"\nkwargs = { lr = 0.1 }\n'
    )
    assert main(["run", str(path), "--device", "cpu", "--out", str(tmp_path)]) == 1  # cnn failed
    (run_dir,) = (tmp_path / "odd").iterdir()
    results = report.read_results(run_dir)
    assert list(results["optimizer"]) == ["nan", "nan"]
    status = results.set_index("model")["status"]
    assert status["mlp"] == "ok" and status["cnn"].startswith("error")
    summary = (run_dir / "summary.md").read_text()
    assert "| cnn | nan | error" in summary and (run_dir / "loss_curves.png").is_file()
    mask = os.umask(0)
    os.umask(mask)
    for name in ("results.csv", "curves.csv", "summary.md", "run.json", "env.json"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_resume_keeps_the_recorded_warmup(tmp_path, tiny_suite_text):
    from profiler import cli

    path = tmp_path / "tiny.toml"
    path.write_text(tiny_suite_text.replace("warmup = 1", "warmup = 3"))
    assert main(["run", str(path), "--device", "cpu", "--out", str(tmp_path), "--filter", "mlp/adamw/"]) == 0
    (run_dir,) = (tmp_path / "tiny").iterdir()
    settings = json.loads((run_dir / "run.json").read_text())
    settings["steps"] = 4  # as if recorded with --steps 4 (3 warm-up steps still fit)
    (run_dir / "run.json").write_text(json.dumps(settings))
    args = cli.build_parser().parse_args(["run", "--resume", str(run_dir)])
    suite, _, _ = cli._resumed_run(args)
    assert (suite.steps, suite.warmup) == (4, 3)
    assert main(["run", "--resume", str(run_dir), "--threads", "1"]) == 2  # settings come from run.json


def test_numbers_in_report_tables_keep_their_significant_zeros():
    """A step-time column reads alike: 23.0 beside 22.9 (not 23), 0.890 beside 0.909."""
    _fmt_num = report._fmt_num
    assert [_fmt_num(v) for v in (23.0, 22.94, 0.89, 0.909, 123.0, 99.96)] == [
        "23.0",
        "22.9",
        "0.890",
        "0.909",
        "123",
        "100",
    ]
    assert [_fmt_num(v) for v in (999.4, 999.5, 1234.6, -2.5)] == ["999", "1,000", "1,235", "-2.50"]
    assert _fmt_num(1.1504, 4) == "1.150" and _fmt_num(float("nan")) == ""
