# bnb8 — every command a user or CI needs. Each target creates what it needs from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch by default. A GPU user: `make install TORCH_SPEC=torch TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu128`
# or install torch into $(VENV) first (any torch >= 2.4 is kept as it is).
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# Benchmarks: pytest-benchmark JSON per run in .benchmarks/; GATE_ARGS e.g. --margin 0.4 or --allow-missing 'x-*'.
BENCH_STAMP := $(shell date -u +%Y%m%d-%H%M%S)
BENCH_JSON  ?= .benchmarks/bench-$(BENCH_STAMP).json
BENCH_ARGS  ?=
GATE_ARGS   ?=
BENCH_BASELINE_RUNS ?= 5
BENCH_PYTEST = $(PY) -m pytest -m benchmark tests/benchmarks --benchmark-only -p no:randomly -p no:cacheprovider -q $(BENCH_ARGS)

.PHONY: help venv install ext test test-slow lint format bench bench-baseline wheel run gpu-check gpu-bench cpu-scaling clean
.DEFAULT_GOAL := help

# List the targets with the first line of the comment above each (this list).
help:
	@awk '/^# /{if(!c)c=substr($$0,3);next} /^[a-z-]+:/{if(c){split($$0,t,":");printf "  make %-15s %s\n",t[1],c}} {c=""}' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# A virtual environment in .venv with torch (the CPU build by default: TORCH_SPEC, TORCH_INDEX).
venv: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"

# Editable install: Python files load from this tree, the native module is built into build/.
install: venv
	$(PY) -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"

# Rebuild only the native module after editing ext/ (seconds, incremental).
# BNB8_CUDA=AUTO|ON|OFF (environment) chooses whether the CUDA kernels are built.
ext:
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

# The test suite (the README's test command; slow and benchmark tests excluded). PYTEST_ARGS adds options.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The slow tests: accuracy and training runs.
test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# ruff: lint and format check.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# ruff: format and fix in place.
format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (tests/benchmarks/) and the regression gate against tests/benchmarks/baseline.json.
# The gate fails when a kernel/reference ratio regressed beyond the margin against the committed tests/benchmarks/baseline.json. Never rewrites the baseline.
bench: install
	@mkdir -p .benchmarks
	$(BENCH_PYTEST) --benchmark-json=$(BENCH_JSON)
	$(PY) -m tests.benchmarks.gate $(BENCH_JSON) --rerun 2 $(GATE_ARGS)

# Deliberately refresh the baseline: each benchmark's slowest ratio over BENCH_BASELINE_RUNS (5) runs.
bench-baseline: install
	@mkdir -p .benchmarks
	for i in $$(seq $(BENCH_BASELINE_RUNS)); do \
		$(BENCH_PYTEST) --benchmark-json=.benchmarks/baseline-$(BENCH_STAMP)-$$i.json || exit 1; done
	$(PY) -m tests.benchmarks.gate --write-baseline .benchmarks/baseline-$(BENCH_STAMP)-*.json $(GATE_ARGS)

# The smoke profiler suite into reports/smoke/<run-id>/ (< 3 min on 2 CPU cores).
run: install
	$(PY) -m profiler run smoke

# A wheel built in an isolated environment: proves the build needs no torch.
wheel: venv
	$(PY) -m pip wheel -q --no-deps -w dist .

GPU_ARCH ?= native
# GPU build (warnings are errors), GPU tests, and the step benchmark table into reports/gpu/.
# Needs a CUDA GPU and a CUDA build of torch in $(VENV). Builds the kernels for this GPU only,
# runs tests/cuda (every CUDA op against the CPU kernel, paged memory, torch.compile), then the
# step benchmark, then the CPU thread-scaling table of the host (tests/benchmarks/cpu_scaling.py).
# About 5 minutes on one H200.
gpu-check:
	$(PY) tests/cuda/preflight.py $${CUDACXX:-$$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
	CUDACXX=$${CUDACXX:-$$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)} BNB8_CUDA=ON $(PY) -m pip install -q \
		--no-build-isolation --no-deps -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=$(GPU_ARCH) \
		-Ccmake.define.BNB8_CUDA_WERROR=ON -e .
	$(PY) -m pytest tests/cuda -m cuda -q $(PYTEST_ARGS)
	$(PY) tests/cuda/gpu_bench.py --out reports/gpu
	$(PY) tests/benchmarks/cpu_scaling.py --out reports/gpu

# The step benchmark alone (after gpu-check has built the kernels).
gpu-bench:
	$(PY) tests/cuda/gpu_bench.py --out reports/gpu

# The Adam step on the CPU at 1, 2, 4, ... threads against torch's fused Adam (reports/cpu-scaling/).
cpu-scaling: install
	$(PY) tests/benchmarks/cpu_scaling.py --out reports/cpu-scaling

# Remove build outputs, wheels and benchmark results (keeps .venv).
clean:
	rm -rf build dist .pytest_cache .benchmarks
