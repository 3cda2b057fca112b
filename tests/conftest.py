"""Shared test setup: device parametrization and skipping of tests whose hardware is absent."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs in `make gpu-check`)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
