"""The torch.library custom ops: opcheck (schema, fake implementation, autograd registration) on every
op and device, and torch.compile(fullgraph=True) through quantize -> dequantize."""

from __future__ import annotations

import pytest
import torch

import bnb8  # noqa: F401  (registers the kernels)
import bnb8.functional as F
from bnb8 import _native, _ops
from tests.conftest import DEVICES, FLOAT_DTYPES

DTYPE_IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _opcheck(op, args):
    # All of opcheck's default checks: schema (mutations declared), fake tensor, autograd registration,
    # and AOT dispatch with static and dynamic shapes.
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("bucketed", [True, False], ids=["bucketed", "bisect"])
def test_opcheck_quantize_blockwise(device, dtype, bucketed):
    code = F.create_dynamic_map(signed=True)
    if not bucketed:
        code = torch.sort(torch.cat([code[:-20], 0.5 + torch.arange(20) * 1e-5])).values
    thresholds, bucket_lo = F.code_search_tables(code.to(device))
    assert (bucket_lo is not None) == bucketed
    A = torch.randn(1000, device=device, dtype=dtype)
    codes = torch.empty(1000, dtype=torch.uint8, device=device)
    absmax = torch.empty(4, device=device)
    _opcheck(_ops.quantize_blockwise_, (A, thresholds, bucket_lo, 256, codes, absmax))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
def test_opcheck_dequantize_blockwise(device, dtype):
    code = F.dynamic_map(True, device)
    codes = torch.randint(0, 256, (1000,), dtype=torch.uint8, device=device)
    absmax = torch.rand(4, device=device) + 0.1
    out = torch.empty(1000, dtype=dtype, device=device)
    _opcheck(_ops.dequantize_blockwise_, (codes, absmax, code, 256, out))


def _adam_args(device: str, dtype: torch.dtype, eight_bit: bool, sizes=(300, 1000)):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=g).to(device, dtype) for n in sizes]
    grads = [torch.randn(n, generator=g).to(device, dtype) for n in sizes]
    m = [torch.randn(n, generator=g).to(device) * 0.1 for n in sizes]
    v = [torch.rand(n, generator=g).to(device) * 0.01 for n in sizes]
    if eight_bit:
        qmaps = [F.dynamic_map(True, device), F.dynamic_map(False, device)]
        tables = [F.code_search_tables(q) for q in qmaps]
        thresholds = [t for t, _ in tables]
        bucket_lo = [lo for _, lo in tables]
        qm = [F.quantize_blockwise(t, code=qmaps[0], blocksize=256) for t in m]
        qv = [F.quantize_blockwise(t, code=qmaps[1], blocksize=256) for t in v]
        state1, absmax1 = [c for c, _ in qm], [s.absmax for _, s in qm]
        state2, absmax2 = [c for c, _ in qv], [s.absmax for _, s in qv]
    else:
        qmaps, thresholds, bucket_lo = [], [], []
        state1, state2, absmax1, absmax2 = m, v, [], []
    hyper = _native.hyper_list(step_size=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, bias_correction2_sqrt=0.1)
    scales = torch.tensor([[1.0, 1.0], [0.5, 2.0]], device=device)
    return params, grads, state1, state2, absmax1, absmax2, qmaps, thresholds, bucket_lo, hyper, scales


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bit", "32bit"])
def test_opcheck_optimizer_update(device, dtype, eight_bit):
    p, g, s1, s2, a1, a2, qmaps, thr, lo, hyper, scales = _adam_args(device, dtype, eight_bit)
    nonfinite = torch.zeros(1, dtype=torch.int64, device=device)
    args = ("adam", p, g, s1, s2, [], a1, a2, [], qmaps, thr, lo, hyper, scales, nonfinite)
    _opcheck(_ops.optimizer_update_, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bit", "32bit"])
def test_opcheck_optimizer_norms(device, dtype, eight_bit):
    p, g, s1, s2, a1, a2, qmaps, _, _, hyper, scales = _adam_args(device, dtype, eight_bit)
    args = ("adam", p, g, s1, s2, [], a1, a2, [], qmaps, hyper, scales)
    _opcheck(_ops.optimizer_norms, args)


# Inductor itself touches torch.jit.script_method (deprecated in torch 2.13): torch's warning, not ours.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
def test_compile_quantize_dequantize_fullgraph(device, dtype):
    torch._dynamo.reset()
    code = F.dynamic_map(True, device)
    thresholds, bucket_lo = F.code_search_tables(code)
    blocksize = 256

    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        codes = torch.empty(n, dtype=torch.uint8, device=x.device)
        absmax = torch.empty((n + blocksize - 1) // blocksize, dtype=torch.float32, device=x.device)
        torch.ops.bnb8.quantize_blockwise_(x.reshape(-1), thresholds, bucket_lo, blocksize, codes, absmax)
        out = torch.empty(n, dtype=x.dtype, device=x.device)
        torch.ops.bnb8.dequantize_blockwise_(codes, absmax, code, blocksize, out)
        return out.view(x.shape) * 2

    compiled = torch.compile(roundtrip, fullgraph=True)
    x = torch.randn(33, 100, device=device, dtype=dtype)
    got = compiled(x)
    codes, state = F.quantize_blockwise(x, code=code, blocksize=blocksize)
    assert torch.equal(got, F.dequantize_blockwise(codes, state) * 2)
