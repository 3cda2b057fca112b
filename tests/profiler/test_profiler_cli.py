"""Command line: run, resume after a kill, bad suite files, list, help, compare."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from profiler import suite
from profiler.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_run_writes_one_ok_row_per_configuration(tiny_run):
    results = pd.read_csv(tiny_run / "results.csv")
    assert sorted(results["key"]) == sorted(
        f"{m}/{o}/seed0" for m in ("mlp", "gpt") for o in ("adamw", "adamw-again", "sgd")
    )
    assert set(results["status"]) == {"ok"}
    curves = pd.read_csv(tiny_run / "curves.csv")
    assert curves.groupby("key").size().to_dict() == dict.fromkeys(results["key"], 6)


def test_identical_configuration_shows_zero_divergence(tiny_run):
    from profiler import report

    summary = report.load_summary(tiny_run).set_index(["model", "optimizer"])
    for model in ("mlp", "gpt"):
        again = summary.loc[(model, "adamw-again")]
        assert again["loss_gap_max"] == 0 and again["final_loss_ratio"] == 1 and again["state_saved"] == 0
        assert summary.loc[(model, "sgd"), "state_saved"] == pytest.approx(
            0.5, abs=1e-3
        )  # momentum vs 2 moments


GPT_BLOCK = 'name = "gpt"\nwidth = 0.25\nbatch_size = 4\nseq_len = 16\n'
MLP2_BLOCK = 'name = "mlp"\nlabel = "mlp2"\nwidth = 0.25\nbatch_size = 4\n'


def _run_cli(*args: str, cwd: Path = REPO, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "profiler", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, **kw,
    )  # fmt: skip


def test_resume_after_kill(tmp_path, tiny_suite_text):
    assert GPT_BLOCK in tiny_suite_text
    suite_path = tmp_path / "tiny.toml"
    slow = tiny_suite_text.replace(GPT_BLOCK, MLP2_BLOCK).replace(
        "torch.optim.SGD", "profiler_fake_optimizers.SlowSGD"
    )
    suite_path.write_text(
        slow.replace('class = "torch.optim.AdamW"', 'class = "profiler_fake_optimizers.SlowSGD"')
    )
    out = tmp_path / "reports"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    proc = _run_cli("run", str(suite_path), "--device", "cpu", "--out", str(out), env=env)
    deadline = time.monotonic() + 60
    results = None
    while time.monotonic() < deadline:  # kill as soon as a row is on disk
        found = list(out.glob("tiny/*/results.csv"))
        if found and len(pd.read_csv(found[0])) >= 1:
            results = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert results is not None, "no rows were written within 60 s"
    before = pd.read_csv(results)
    assert 1 <= len(before) < 6, "the run finished before it could be killed"

    assert main(["run", "--resume", str(results.parent)]) == 0
    after = pd.read_csv(results)
    assert len(after) == 6 and after["key"].is_unique
    kept = after.set_index("key").loc[before["key"], "finished_at"]
    assert list(kept) == list(before["finished_at"])  # finished rows were not run again
    curves = pd.read_csv(results.parent / "curves.csv")
    assert len(curves) == 6 * 6 and not curves.duplicated(["key", "step"]).any()
    assert (results.parent / "summary.md").is_file()


def test_resume_rejects_other_settings(tiny_run, capsys):
    assert main(["run", "--resume", str(tiny_run), "--steps", "3"]) == 2
    assert "--steps" in capsys.readouterr().err


BAD_SUITES = {
    "invalid-toml": ("steps = = 3", "not valid TOML"),
    "unknown-top-key": ('stepz = 3\n', "stepz: unknown key"),
    "steps-type": ('steps = "ten"', "steps: expected int, got str 'ten'"),
    "warmup-too-long": ("warmup = 6", "warmup: expected fewer warm-up steps than steps = 6 (one timed step at least), got 6"),
    "unknown-model": ('[[models]]\nname = "resnet"\n', "models[2].name: unknown model 'resnet'; available: gpt, bert"),
    "model-option": ('[[models]]\nname = "mlp"\nseq_len = 3\n', "models[2].seq_len: unknown key"),
    "width": ('[[models]]\nname = "mlp"\nwidth = "wide"\n', "models[2].width: expected int or float, got str 'wide'"),
    "unknown-class": (
        '[[optimizers]]\nname = "x"\nclass = "torch.optim.Adamm"\n',
        "optimizers[3].class: torch.optim has no class 'Adamm'; available: ",
    ),
    "unknown-module": (
        '[[optimizers]]\nname = "x"\nclass = "nosuchpkg.Adam"\n',
        "optimizers[3].class: cannot import module 'nosuchpkg'",
    ),
    "kwarg-not-accepted": (
        '[[optimizers]]\nname = "x"\nclass = "torch.optim.AdamW"\nkwargs = { min_8bit_size = 4096 }\n',
        "optimizers[3].kwargs.min_8bit_size: torch.optim.AdamW does not accept 'min_8bit_size'; it accepts: lr,",
    ),
    "sweep-not-accepted": (
        '[[optimizers]]\nname = "x"\nclass = "torch.optim.AdamW"\nsweep = { min_8bit_size = [0, 4096] }\n',
        "optimizers[3].sweep.min_8bit_size: torch.optim.AdamW does not accept 'min_8bit_size'",
    ),
    "sweep-not-list": (
        '[[optimizers]]\nname = "x"\nclass = "torch.optim.Adam"\nsweep = { lr = 0.1 }\n',
        "optimizers[3].sweep.lr: expected a non-empty list of values, got float 0.1",
    ),
    "bad-baseline": ('[[optimizers]]\nname = "x"\nclass = "torch.optim.Adam"\nbaseline = "nope"\n', "optimizers[3].baseline: expected the name"),
    "duplicate-name": ('[[optimizers]]\nname = "sgd"\nclass = "torch.optim.Adam"\n', "optimizers[3].name: duplicate optimizer name 'sgd'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_bad_suite_file_names_the_key(case, tmp_path, tiny_suite_text, capsys):
    extra, message = BAD_SUITES[case]
    if extra.startswith("["):  # one more table
        text = tiny_suite_text + "\n" + extra
    elif extra.split()[0] in ("steps", "warmup"):  # a changed value
        text = tiny_suite_text.replace(
            {"steps": "steps = 6", "warmup": "warmup = 1"}[extra.split()[0]], extra
        )
    else:  # one more top-level line
        text = extra + "\n" + tiny_suite_text
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["run", str(path), "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert not (tmp_path / "bad").exists()  # failed before creating a run directory


def test_missing_sections_are_reported_together(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('description = "x"\n')
    with pytest.raises(suite.SuiteError) as error:
        suite.load(str(path))
    text = str(error.value)
    assert "steps: missing (required)" in text and "models: expected at least one" in text
    assert "optimizers: expected at least one" in text


def test_unknown_suite_lists_the_valid_names(capsys):
    assert main(["run", "no-such-suite"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'no-such-suite'; available:" in err and "smoke" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_run, capsys):
    assert main(["run", str(tiny_run / "suite.toml"), "--device", "cuda", "--out", str(tiny_run / "x")]) == 2
    assert "--device cuda: torch.cuda.is_available() is False" in capsys.readouterr().err


def test_filter_selects_runs(tmp_path, tiny_suite_text):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_suite_text)
    runs = suite.load(str(path)).runs("cpu", "mlp/adamw")
    assert [r.key for r in runs] == ["mlp/adamw/seed0", "mlp/adamw-again/seed0"]
    for pattern in ("nothing-matches", "gpt/("):  # no match; not a regular expression
        assert main(["run", str(path), "--filter", pattern, "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert not (tmp_path / "tiny").exists()  # rejected before a run directory was made
    # A filter keeps the baseline each selected row is compared with (adamw for gpt/sgd).
    assert [r.key for r in suite.load(str(path)).runs("cpu", "gpt/sgd")] == [
        "gpt/adamw/seed0",
        "gpt/sgd/seed0",
    ]


def test_bad_command_line_values_name_the_option(tmp_path, tiny_suite_text, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_suite_text)
    for argv, message in (
        (
            ["--steps", "1"],
            "argument --steps: expected a number >= 2 (one warm-up step and one timed step), got 1",
        ),
        (["--steps", "0"], "argument --steps: expected a number >= 2"),
        (["--stpes", "5"], "unrecognized arguments: --stpes 5; did you mean --steps?"),
    ):
        with pytest.raises(SystemExit) as done:
            main(["run", str(path), "--out", str(tmp_path), *argv])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert "usage: python -m profiler run" in err and message in err, err
    (tmp_path / "a-file").write_text("")
    assert main(["run", str(path), "--out", str(tmp_path / "a-file"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a-file" in err and "Not a directory" in err
    assert "Traceback" not in err


def test_optimizer_settings_are_checked_when_the_suite_loads(tmp_path, tiny_suite_text):
    """A value the class rejects fails the load with every other problem, before a worker starts."""
    path = tmp_path / "bad.toml"
    path.write_text(
        tiny_suite_text.replace("kwargs = { lr = 0.05, momentum = 0.9 }", 'kwargs = { lr = "fast" }')
    )
    with pytest.raises(
        suite.SuiteError, match=r"optimizers\[2\]\.kwargs: torch\.optim\.sgd\.SGD\(lr='fast'\) fails"
    ):
        suite.load(str(path))
    path.write_text(
        tiny_suite_text + '\n[[optimizers]]\nname = "s"\nclass = "bnb8.optim.Adam8bit"\n'
        "sweep = { min_8bit_size = [0, -1, -2] }\n"
    )
    with pytest.raises(suite.SuiteError) as error:
        suite.load(str(path))
    assert str(error.value).count(" fails: ") == 1  # one message for the config, not one per point
    assert "optimizers[3].sweep: bnb8.optim.adam.Adam8bit(min_8bit_size=-1) fails: ValueError" in str(
        error.value
    )
    path.write_text(
        tiny_suite_text.replace("kwargs = { lr = 0.05, momentum = 0.9 }", "kwargs = { lr = 0.1, lrr = 2 }")
    )
    with pytest.raises(suite.SuiteError) as error:
        suite.load(str(path))
    assert "does not accept 'lrr'" in str(error.value) and " fails: " not in str(error.value)


def test_sweep_expands_into_labelled_configurations(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        'description = "s"\nsteps = 4\nseeds = 2\n[[models]]\nname = "mlp"\n'
        '[[optimizers]]\nname = "base"\nclass = "torch.optim.Adam"\n'
        '[[optimizers]]\nname = "t"\nclass = "profiler_fake_optimizers.ThresholdAdam"\n'
        "sweep = { min_8bit_size = [0, 4096] }\n"
    )
    loaded = suite.load(str(path))
    assert [o.label for o in loaded.optimizers] == ["base", "t[min_8bit_size=0]", "t[min_8bit_size=4096]"]
    assert {o.baseline for o in loaded.optimizers} == {"base"}
    assert len(loaded.runs("cpu")) == 6


@pytest.mark.parametrize("command", [[], ["run"], ["list"], ["report"], ["compare"]])
def test_help_answers(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: python -m profiler" in capsys.readouterr().out


def test_list_shows_suites_and_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("smoke", "min8bit", "gpt", "bert", "lstm", "mlp", "cnn", "recsys"):
        assert name in out


def test_compare_a_run_with_itself(tiny_run, capsys, tmp_path):
    assert main(["compare", str(tiny_run), str(tiny_run), "--out", str(tmp_path / "cmp.md")]) == 0
    out = capsys.readouterr().out
    assert out.count("1.000x") == 6 * 4  # four metrics per configuration, all equal
    assert (tmp_path / "cmp.md").read_text().strip() == out.strip()
    assert "warning" not in out


def test_compare_warns_about_different_settings(tiny_run, capsys, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    settings = json.loads((other / "run.json").read_text())
    settings["steps"], settings["seeds"] = 120, 3
    (other / "run.json").write_text(json.dumps(settings))
    assert main(["compare", str(tiny_run), str(other)]) == 0
    out = capsys.readouterr().out
    assert "warning: steps differs (A: 6, B: 120)" in out and "warning: seeds differs (A: 1, B: 3)" in out


def test_module_entry_point_help():
    done = subprocess.run(
        [sys.executable, "-m", "profiler", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0 and "{run,list,report,compare,bench-report}" in done.stdout
