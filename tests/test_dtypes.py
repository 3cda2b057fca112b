"""The CPU kernels' float16/bfloat16 conversions (ext/include/bnb8/common.h) against torch's."""

from __future__ import annotations

import pytest
import torch

import bnb8
import bnb8.functional as F


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_16bit_value_round_trips_through_an_update(dtype):
    # lr = 0: the kernel loads every parameter, "updates" it by 0 and stores it back.
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    p = torch.nn.Parameter(bits.view(dtype).clone())
    finite = torch.isfinite(p.detach())
    opt = bnb8.optim.Adam32bit([p], lr=0.0)
    p.grad = torch.ones_like(p)
    opt.step()
    after = p.detach().view(torch.int16)
    assert torch.equal(after[finite], bits[finite])  # every finite value (and ±0) exactly
    # (±Inf parameters turn NaN through Adam's coupled weight-decay term 0 * Inf; NaN stays NaN)
    assert torch.isnan(p.detach()[torch.isnan(bits.view(dtype))]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_stores_round_like_torch(dtype):
    torch.manual_seed(0)
    # magnitudes across the whole 16-bit range, subnormals and overflow included
    x = torch.randn(1 << 20) * torch.exp2(torch.randint(-30, 20, (1 << 20,)).float())
    codes, state = F.quantize_blockwise(x, blocksize=64)
    out = torch.empty(x.shape, dtype=dtype)
    F.dequantize_blockwise(codes, state, out=out)
    expected = F.dequantize_blockwise(codes, state).to(dtype)  # float32, then torch's rounding
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_loads_every_16bit_value_like_torch(dtype):
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype)
    x = x[torch.isfinite(x)]
    codes, state = F.quantize_blockwise(x, blocksize=64)
    ref_codes, ref_state = F.quantize_blockwise(x.float(), blocksize=64)
    assert torch.equal(state.absmax, ref_state.absmax)
    assert torch.equal(codes, ref_codes)
