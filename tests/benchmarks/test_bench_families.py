"""One 8-bit step of every optimizer family beyond Adam, against torch's fastest 32-bit step of the same
family in the same process (rounds interleaved, ratio of medians; see ``_bench.py``).

Where torch has no such optimizer, two yardsticks: the same algorithm written with torch's
multi-tensor ops (``*-vs-foreach``, ``_torch_families.py``: the fastest 32-bit torch implementation
of the family), and, stricter, torch's fused optimizer with the same kind of state, which computes
less: SGD with momentum (one state) for Lion and LARS, Adam (two states) for LAMB and AdEMAMix
(no trust ratio; AdEMAMix has a third state). Run with ``make bench`` or
``pytest tests/benchmarks/test_bench_families.py --benchmark-only -m benchmark``.
"""

from __future__ import annotations

import pytest
import torch
from _bench import paired, pinned_threads, size_label
from _torch_families import ForeachAdEMAMix, ForeachLAMB, ForeachLARS

import bnb8

pytestmark = pytest.mark.benchmark

BLOCK = 256
NUMEL = 2**24
# name: (bnb8 8-bit factory, torch factory, torch description, number of 8-bit states)
FAMILIES = {
    "sgd8bit": (
        lambda ps: bnb8.optim.SGD8bit(ps, lr=1e-3, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
        "torch.optim.SGD(momentum=0.9, fused=True)",
        1,
    ),
    "rmsprop8bit": (
        lambda ps: bnb8.optim.RMSprop8bit(ps, lr=1e-3),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-3, foreach=True),
        "torch.optim.RMSprop(foreach=True)",
        1,
    ),
    "adagrad8bit": (
        lambda ps: bnb8.optim.Adagrad8bit(ps),
        lambda ps: torch.optim.Adagrad(ps, fused=True),
        "torch.optim.Adagrad(fused=True)",
        1,
    ),
    "lion8bit": (
        lambda ps: bnb8.optim.Lion8bit(ps),
        lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
        "torch.optim.SGD(momentum=0.9, fused=True) (torch has no Lion)",
        1,
    ),
    "lars8bit": (
        lambda ps: bnb8.optim.LARS8bit(ps, lr=1e-3, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
        "torch.optim.SGD(momentum=0.9, fused=True) (torch has no LARS)",
        1,
    ),
    "lamb8bit": (
        lambda ps: bnb8.optim.LAMB8bit(ps),
        lambda ps: torch.optim.Adam(ps, fused=True),
        "torch.optim.Adam(fused=True) (torch has no LAMB)",
        2,
    ),
    "ademamix8bit": (
        lambda ps: bnb8.optim.AdEMAMix8bit(ps),
        lambda ps: torch.optim.Adam(ps, fused=True),
        "torch.optim.Adam(fused=True) (torch has no AdEMAMix)",
        3,
    ),
    "lars8bit-vs-foreach": (
        lambda ps: bnb8.optim.LARS8bit(ps, lr=1e-3, momentum=0.9),
        lambda ps: ForeachLARS(ps, lr=1e-3, momentum=0.9),
        "LARS in torch._foreach ops (tests/benchmarks/_torch_families.py)",
        1,
    ),
    "lamb8bit-vs-foreach": (
        lambda ps: bnb8.optim.LAMB8bit(ps),
        lambda ps: ForeachLAMB(ps),
        "LAMB in torch._foreach ops (tests/benchmarks/_torch_families.py)",
        2,
    ),
    "ademamix8bit-vs-foreach": (
        lambda ps: bnb8.optim.AdEMAMix8bit(ps),
        lambda ps: ForeachAdEMAMix(ps),
        "AdEMAMix in torch._foreach ops (tests/benchmarks/_torch_families.py)",
        3,
    ),
}


def bytes_per_step(numel: int, states: int) -> int:
    """fp32 param (read + write) and grad (read), each 8-bit state read and written with its absmax."""
    return 3 * 4 * numel + states * 2 * (numel + 4 * -(-numel // BLOCK))


@pytest.fixture(autouse=True)
def _threads():
    with pinned_threads() as threads:
        yield threads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_step(benchmark, family):
    make_kernel, make_reference, reference_name, states = FAMILIES[family]
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(NUMEL, generator=gen) * 0.1)
    param.grad = torch.randn(NUMEL, generator=gen) * 0.01
    kernel, reference = make_kernel([param]), make_reference([param])
    kernel.step()  # the first step allocates state: not what is measured
    reference.step()
    gate_key = f"{family}-{size_label(NUMEL)}-fp32-cpu"
    paired(
        benchmark,
        kernel.step,
        reference.step,
        gate_key=gate_key,
        reference_name=reference_name,
        bytes_moved=bytes_per_step(NUMEL, states),
        device="cpu",
        rounds=7,
        numel=NUMEL,
        dtype="fp32",
        kernel_name=f"bnb8.optim.{type(kernel).__name__}",
    )
    assert torch.isfinite(param).all(), f"{gate_key}: the step produced a non-finite value"
