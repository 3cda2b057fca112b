"""One Adam/AdamW step, 8-bit and 32-bit state, against ``torch.optim.Adam[W](fused=True)``.

Each test times the bnb8 step and the torch step in the same process, rounds interleaved, and
records the ratio of their medians (see ``_bench.py``); the gate compares that ratio with
``baseline.json``. Run with ``make bench``.
"""

from __future__ import annotations

import pytest
import torch
from _bench import paired, pinned_threads, size_label

import bnb8

pytestmark = pytest.mark.benchmark

SIZES = [2**20, 2**24]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# name in the gate key: (bnb8 class, torch class)
FAMILIES = {
    "adam8bit": (bnb8.optim.Adam8bit, torch.optim.Adam),
    "adam32bit": (bnb8.optim.Adam32bit, torch.optim.Adam),
    "adamw8bit": (bnb8.optim.AdamW8bit, torch.optim.AdamW),
    "adamw32bit": (bnb8.optim.AdamW32bit, torch.optim.AdamW),
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
BLOCK = 256


def rounds_for(numel: int) -> int:
    """Rounds of each of kernel and reference: more for the small size, whose steps take a
    millisecond, so that one disturbed round weighs less (CPU-time medians vary by ~1-5 % at these
    counts on a loaded 2-core machine)."""
    return 31 if numel <= 2**20 else 11


def bytes_per_step(numel: int, dtype: torch.dtype, quantized: bool) -> int:
    """Bytes one step reads and writes: param (read + write) and grad (read) in ``dtype``, two states
    (read + write) as uint8 codes plus float32 absmax per block of 256, or as float32."""
    item = torch.empty((), dtype=dtype).element_size()
    if quantized:
        blocks = -(-numel // BLOCK)
        states = 2 * 2 * (numel + 4 * blocks)
    else:
        states = 2 * 2 * 4 * numel
    return 3 * item * numel + states


@pytest.fixture(autouse=True)
def _threads():
    with pinned_threads() as threads:
        yield threads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("numel", SIZES, ids=size_label)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_adam_step(benchmark, family, numel, dtype_name, device):
    bnb8_cls, torch_cls = FAMILIES[family]
    dtype = DTYPES[dtype_name]
    gen = torch.Generator(device=device).manual_seed(0)
    # One parameter shared by both optimizers: each keeps its own state; both update it in turn.
    param = torch.nn.Parameter(torch.randn(numel, generator=gen, device=device, dtype=dtype))
    param.grad = torch.randn(numel, generator=gen, device=device, dtype=dtype)
    kernel = bnb8_cls([param])
    reference = torch_cls([param], fused=True)
    kernel.step()  # the first step allocates state: not what is measured
    reference.step()
    quantized = family.endswith("8bit")

    gate_key = f"{family}-{size_label(numel)}-{dtype_name}-{device}"
    paired(
        benchmark,
        kernel.step,
        reference.step,
        gate_key=gate_key,
        reference_name=f"torch.optim.{torch_cls.__name__}(fused=True)",
        bytes_moved=bytes_per_step(numel, dtype, quantized),
        device=device,
        rounds=rounds_for(numel),
        numel=numel,
        dtype=dtype_name,
        kernel_name=f"bnb8.optim.{bnb8_cls.__name__}",
    )
    assert not torch.isnan(param).any(), f"{gate_key}: the step produced NaN"
