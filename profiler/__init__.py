"""bnb8 optimizer profiler: ``python -m profiler run SUITE``.

Stages, one module each: cli -> suite -> zoo -> runner -> memory -> report -> plots.

Dependencies: pandas, matplotlib, tqdm, nvidia-ml-py (the ``profiler`` extra in pyproject.toml).
Optional: pyarrow (results.parquet is written when it is installed). Markdown tables are rendered
by profiler.report itself, so tabulate is not needed.
"""
