"""Paged (CUDA managed memory) tensors: allocation, accounting, prefetch, and the kernels on them."""

from __future__ import annotations

import pytest
import torch

import bnb8.functional as F
import bnb8.paged as paged

pytestmark = pytest.mark.cuda


def test_empty_is_managed_and_counted():
    t = paged.empty((1000, 1001), dtype=torch.float32, device="cuda")
    assert t.is_cuda and t.shape == (1000, 1001) and t.dtype == torch.float32
    assert paged.is_paged(t)
    assert not paged.is_paged(torch.empty(10, device="cuda"))
    assert paged.managed_bytes() >= t.numel() * 4  # the pool may hold more (rounded segments)
    t.copy_(torch.arange(t.numel(), dtype=torch.float32, device="cuda").view_as(t))
    assert float(t[999, 1000]) == t.numel() - 1


def test_zeros_are_zero():
    t = paged.zeros(4097, dtype=torch.uint8, device=torch.cuda.current_device())
    assert paged.is_paged(t) and int(t.sum()) == 0


def test_prefetch_to_host_and_back_keeps_values():
    t = paged.empty(1 << 20, dtype=torch.float32)
    t.normal_()
    expected = t.cpu()
    paged.prefetch([t], device="cpu")
    torch.cuda.synchronize()
    paged.prefetch([t, torch.ones(3, device="cuda")])  # a tensor that is not paged is skipped
    stream = torch.cuda.Stream()
    paged.prefetch([t], device="cuda", stream=stream)
    stream.synchronize()
    assert torch.equal(t.cpu(), expected)


def test_too_large_request_raises_memory_error():
    with pytest.raises(MemoryError, match="requested"):
        paged.empty((2**50,), dtype=torch.uint8)


def test_kernels_on_paged_memory_match_ordinary_memory():
    x = torch.randn(1000, 1001, device="cuda")
    px = paged.empty(x.shape)
    px.copy_(x)
    codes, state = F.quantize_blockwise(x, blocksize=256)
    out = paged.empty(x.shape, dtype=torch.uint8)
    absmax = paged.empty(state.absmax.shape)
    pcodes, pstate = F.quantize_blockwise(px, blocksize=256, out=out, absmax=absmax)
    assert torch.equal(pcodes, codes) and torch.equal(pstate.absmax, state.absmax)


def test_paged_optimizer_matches_unpaged():
    optim = pytest.importorskip("bnb8.optim")
    if not hasattr(optim, "PagedAdam8bit"):
        pytest.skip("bnb8.optim has no PagedAdam8bit yet")
    torch.manual_seed(0)
    a = torch.nn.Linear(300, 200).cuda()
    b = torch.nn.Linear(300, 200).cuda()
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = optim.Adam8bit(a.parameters(), lr=1e-3), optim.PagedAdam8bit(b.parameters(), lr=1e-3)
    x = torch.randn(16, 300, device="cuda")
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert paged.is_paged(opt_b.state[b.weight]["state1"])
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
