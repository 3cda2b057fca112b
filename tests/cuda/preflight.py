"""Checks before `make gpu-check` builds anything: a GPU that torch sees, and a CUDA compiler the
driver can run (a toolkit newer than the driver builds fine, then fails every call with
cudaErrorInsufficientDriver). Prints what it found; exits non-zero with the fix when something is off.

    python tests/cuda/preflight.py [NVCC]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys


def _version(text: str, pattern: str) -> tuple[int, int] | None:
    m = re.search(pattern, text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def toolkit_problem(toolkit: tuple[int, int] | None, driver: tuple[int, int] | None, nvcc: str) -> str | None:
    """Why this toolkit cannot build kernels this driver runs, or None."""
    if toolkit is None:
        return f"no CUDA compiler at {nvcc}; set CUDACXX=/path/to/nvcc"
    if driver is not None and toolkit > driver:
        return (
            f"nvcc {toolkit[0]}.{toolkit[1]} is newer than the driver's CUDA {driver[0]}.{driver[1]}: the "
            "kernels would build but not run. Set CUDACXX to a toolkit no newer than the driver."
        )
    return None


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: torch {torch.__version__} ({sys.executable}) sees no CUDA GPU; "
              "run with a CUDA build of torch: make gpu-check PY=/path/to/python")  # fmt: skip
        return 1
    nvcc = sys.argv[1] if len(sys.argv) > 1 else (shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    toolkit = _version(_run(nvcc, "--version"), r"release (\d+)\.(\d+)")
    driver = _version(_run("nvidia-smi"), r"CUDA Version:\s*(\d+)\.(\d+)")
    print(
        f"gpu-check: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc {nvcc} "
        f"({'.'.join(map(str, toolkit)) if toolkit else 'not found'}), driver supports CUDA "
        f"{'.'.join(map(str, driver)) if driver else 'unknown'}"
    )
    problem = toolkit_problem(toolkit, driver, nvcc)
    if problem:
        print(f"gpu-check: {problem} (torch was built with CUDA {torch.version.cuda})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
