"""The torch.library custom ops: opcheck (schema, fake implementation, autograd registration) on every
op and device, and torch.compile(fullgraph=True) through quantize -> dequantize."""

from __future__ import annotations

import pytest
import torch

import bnb8
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
    thresholds, bucket_table = F.code_search_tables(code.to(device))
    assert (bucket_table is not None) == bucketed
    A = torch.randn(1000, device=device, dtype=dtype)
    codes = torch.empty(1000, dtype=torch.uint8, device=device)
    absmax = torch.empty(4, device=device)
    _opcheck(_ops.quantize_blockwise_, (A, thresholds, bucket_table, 256, codes, absmax))


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
        bucket_table = [b for _, b in tables]
        qm = [F.quantize_blockwise(t, code=qmaps[0], blocksize=256) for t in m]
        qv = [F.quantize_blockwise(t, code=qmaps[1], blocksize=256) for t in v]
        state1, absmax1 = [c for c, _ in qm], [s.absmax for _, s in qm]
        state2, absmax2 = [c for c, _ in qv], [s.absmax for _, s in qv]
    else:
        qmaps, thresholds, bucket_table = [], [], []
        state1, state2, absmax1, absmax2 = m, v, [], []
    hyper = _native.hyper_list(step_size=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, bias_correction2_sqrt=0.1)
    scales = torch.tensor([[1.0, 1.0], [0.5, 2.0]], device=device)
    return params, grads, state1, state2, absmax1, absmax2, qmaps, thresholds, bucket_table, hyper, scales


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bit", "32bit"])
def test_opcheck_optimizer_update(device, dtype, eight_bit):
    p, g, s1, s2, a1, a2, qmaps, thr, buckets, hyper, scales = _adam_args(device, dtype, eight_bit)
    nonfinite = torch.zeros(1, dtype=torch.int64, device=device)
    args = ("adam", p, g, s1, s2, [], a1, a2, [], qmaps, thr, buckets, hyper, scales, nonfinite)
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
    thresholds, bucket_table = F.code_search_tables(code)
    blocksize = 256

    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        codes = torch.empty(n, dtype=torch.uint8, device=x.device)
        absmax = torch.empty((n + blocksize - 1) // blocksize, dtype=torch.float32, device=x.device)
        torch.ops.bnb8.quantize_blockwise_(x.reshape(-1), thresholds, bucket_table, blocksize, codes, absmax)
        out = torch.empty(n, dtype=x.dtype, device=x.device)
        torch.ops.bnb8.dequantize_blockwise_(codes, absmax, code, blocksize, out)
        return out.view(x.shape) * 2

    compiled = torch.compile(roundtrip, fullgraph=True)
    x = torch.randn(33, 100, device=device, dtype=dtype)
    got = compiled(x)
    codes, state = F.quantize_blockwise(x, code=code, blocksize=blocksize)
    assert torch.equal(got, F.dequantize_blockwise(codes, state) * 2)


def test_compiled_optimizer_step_has_no_graph_breaks_and_matches_eager():
    """An 8-bit optimizer's step() traced whole (fullgraph=True) goes through the op and lands exactly
    where the eager step (which calls the kernel directly) does. tests/cuda has the same on a GPU."""
    torch._dynamo.reset()

    def trained(compiled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.GELU(), torch.nn.Linear(300, 64))
        opt = bnb8.optim.AdamW8bit(model.parameters(), lr=1e-3)
        step = torch.compile(opt.step, fullgraph=True, backend="aot_eager") if compiled else opt.step
        x = torch.randn(32, 64)
        for i in range(4):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step() if i == 0 else step()  # the first step creates the state (code tables on the host)
        assert opt.state[model[0].weight]["state1"].dtype == torch.uint8
        return [p.detach() for p in model.parameters()]

    for eager, compiled in zip(trained(False), trained(True)):
        assert torch.equal(eager, compiled)


# ------------------------------------------------------------------ raw ops: bad buffers are errors
# torch.ops.bnb8.* are reachable by anyone; their native kernels trust addresses, so every wrong buffer
# must be refused before a kernel runs (a stray write would corrupt memory, not raise).


def _quantize_args(device):
    thresholds, bucket_table = F.code_search_tables(F.dynamic_map(True, device))
    A = torch.randn(1000, device=device)
    codes = torch.zeros(1000, dtype=torch.uint8, device=device)
    absmax = torch.zeros(4, device=device)
    return {"A": A, "thresholds": thresholds, "bucket_table": bucket_table, "blocksize": 256, "codes": codes,
            "absmax": absmax}  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "change, match",
    [
        ({"absmax": torch.zeros(4, dtype=torch.float16)}, "absmax: expected 4 elements of torch.float32"),
        ({"absmax": torch.zeros(3)}, "absmax: expected 4 elements"),
        ({"codes": torch.zeros(1000, dtype=torch.int32)}, "codes: expected 1000 elements of torch.uint8"),
        ({"codes": torch.zeros(999, dtype=torch.uint8)}, "codes: expected 1000 elements"),
        ({"codes": torch.zeros(2000, dtype=torch.uint8)[::2]}, "codes: expected a contiguous tensor"),
        ({"thresholds": torch.zeros(128)}, "code thresholds: expected 256 elements of torch.float32"),
        ({"bucket_table": torch.zeros(7, dtype=torch.int32)}, "code bucket_table: expected"),
        ({"blocksize": 100}, "blocksize: expected one of"),
        ({"A": torch.zeros(1000, dtype=torch.int32)}, "A: expected float32, float16 or bfloat16"),
    ],
    ids=[
        "absmax-dtype",
        "absmax-size",
        "codes-dtype",
        "codes-size",
        "codes-strided",
        "thresholds",
        "bucket_table",
        "blocksize",
        "A-dtype",
    ],  # fmt: skip
)
def test_raw_quantize_refuses_bad_buffers(device, change, match):
    args = _quantize_args(device)
    args.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    codes_before, absmax_before = args["codes"].clone(), args["absmax"].clone()
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.bnb8.quantize_blockwise_(*args.values())
    assert torch.equal(args["codes"], codes_before) and torch.equal(args["absmax"], absmax_before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "change, match",
    [
        ({"absmax": torch.ones(4, dtype=torch.float64)}, "absmax: expected 4 elements of torch.float32"),
        ({"codes": torch.zeros(1000, dtype=torch.int8)}, "codes: expected 1000 elements of torch.uint8"),
        ({"code": torch.zeros(255)}, "code: expected 256 elements of torch.float32"),
        ({"blocksize": 0}, "blocksize: expected one of"),
    ],
    ids=["absmax", "codes", "code", "blocksize"],
)
def test_raw_dequantize_refuses_bad_buffers(device, change, match):
    args = {"codes": torch.zeros(1000, dtype=torch.uint8, device=device), "absmax": torch.ones(4, device=device),
            "code": F.dynamic_map(True, device), "blocksize": 256, "out": torch.full((1000,), 7.0, device=device)}  # fmt: skip
    args.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.bnb8.dequantize_blockwise_(*args.values())
    assert (args["out"] == 7.0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "where, match",
    [
        ("absmax-dtype", r"absmax1\[1\]: expected 4 elements of torch.float32"),
        ("absmax-size", r"absmax2\[0\]: expected 2 elements"),
        ("absmax-missing", "needs 2 absmax lists"),
        ("state-dtype", r"state2\[1\]: expected 1000 elements of torch.uint8"),
        ("state-count", "state1: expected one tensor per parameter"),
        ("qmap", r"qmaps\[1\]: expected 256 elements of torch.float32"),
        ("thresholds", "state 1 thresholds: expected 256 elements"),
        ("bucket_table", "state 2 bucket_table: expected"),
        ("grad-size", r"grads\[0\]: expected 300 elements"),
        ("scales", "scales: expected 4 elements of torch.float32"),
        ("rule", "rule: unknown update rule"),
    ],
)
def test_raw_update_refuses_bad_buffers(device, where, match):
    p, g, s1, s2, a1, a2, qmaps, thr, buckets, hyper, scales = _adam_args(device, torch.float32, True)
    rule = "adam"
    if where == "absmax-dtype":
        a1[1] = a1[1].half()
    elif where == "absmax-size":
        a2[0] = a2[0][:1]
    elif where == "absmax-missing":
        a2 = []
    elif where == "state-dtype":
        s2[1] = s2[1].to(torch.int16)
    elif where == "state-count":
        s1 = s1[:1]
    elif where == "qmap":
        qmaps[1] = qmaps[1][:256].double()
    elif where == "thresholds":
        thr[0] = thr[0][:100]
    elif where == "bucket_table":
        buckets[1] = buckets[1][:3]
    elif where == "grad-size":
        g[0] = g[0][:-1]
    elif where == "scales":
        scales = scales.double()
    elif where == "rule":
        rule = "adamm"
    before = [t.clone() for t in p + s1 + s2 + a1]
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.bnb8.optimizer_update_(
            rule, p, g, s1, s2, [], a1, a2, [], qmaps, thr, buckets, hyper, scales, None
        )
    assert all(torch.equal(a, b) for a, b in zip(p + s1 + s2 + a1, before))
