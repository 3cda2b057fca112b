"""`make gpu-check`'s preflight (tests/cuda/preflight.py): the parts that need no GPU."""

from __future__ import annotations

from tests.cuda.preflight import toolkit_problem


def test_gpu_check_preflight_refuses_a_toolkit_newer_than_the_driver():
    assert toolkit_problem((13, 0), (13, 0), "nvcc") is None
    assert toolkit_problem((12, 4), (13, 0), "nvcc") is None
    assert toolkit_problem((12, 4), None, "nvcc") is None  # no nvidia-smi: nothing to compare with
    assert "newer than the driver's CUDA 12.8" in toolkit_problem((13, 0), (12, 8), "nvcc")
    assert "no CUDA compiler at /x/nvcc" in toolkit_problem(None, (13, 0), "/x/nvcc")
