"""The torch yardsticks of the family benchmarks compute what bnb8's 32-bit classes compute: a faster
yardstick that skipped part of the update would flatter the 8-bit kernels."""

from __future__ import annotations

import pytest
import torch

import bnb8
from tests.benchmarks._torch_families import ForeachAdEMAMix, ForeachLAMB, ForeachLARS

CASES = {
    "lars": (lambda ps: bnb8.optim.LARS32bit(ps, lr=1e-3, momentum=0.9), lambda ps: ForeachLARS(ps, lr=1e-3)),
    "lamb": (bnb8.optim.LAMB32bit, ForeachLAMB),
    "ademamix": (bnb8.optim.AdEMAMix32bit, ForeachAdEMAMix),
}


@pytest.mark.parametrize("name", list(CASES))
def test_yardstick_matches_bnb8_32bit(name):
    make_bnb8, make_torch = CASES[name]
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(n, generator=gen) * 0.1 for n in (1000, 4097)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    theirs = [torch.nn.Parameter(p.clone()) for p in start]
    opt_ours, opt_theirs = make_bnb8(ours), make_torch(theirs)
    for _ in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=gen) * 0.01
            b.grad = a.grad.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b, p0 in zip(ours, theirs, start):
        assert not torch.equal(a, p0)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
