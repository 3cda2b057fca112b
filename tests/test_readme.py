"""The README's Python examples run as written (those that start with an import; the others are
fragments of code the reader already has)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if b.lstrip().startswith(("import ", "from "))]


def test_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("code", RUNNABLE, ids=lambda c: c.strip().splitlines()[-1][:40])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_every_results_column_is_documented(monkeypatch):
    """The README's column reference names every column a run writes, and no other."""
    monkeypatch.syspath_prepend(str(README.parent))
    from profiler.report import CURVE_COLUMNS
    from profiler.runner import RESULT_COLUMNS

    text = README.read_text()
    table = text.split("Every column of <code>results.csv</code>")[1].split("</details>")[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = [name for cell in rows for name in re.findall(r"`([a-z_0-9]+)`", cell)]
    assert documented == RESULT_COLUMNS
    assert all(f"`{c}`" in table for c in CURVE_COLUMNS)
