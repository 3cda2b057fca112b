"""Bad input to quantize_blockwise / dequantize_blockwise: a clear ValueError or TypeError that names
the argument and what was expected — never a crash, never silently wrong output."""

from __future__ import annotations

import pytest
import torch

import bnb8.functional as F


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(1000)


@pytest.fixture
def quantized(x):
    return F.quantize_blockwise(x, blocksize=256)


# ---------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8, torch.bool])
def test_quantize_rejects_input_dtype(dtype):
    with pytest.raises(TypeError, match=r"A: expected float32, float16 or bfloat16, got torch\.\w+"):
        F.quantize_blockwise(torch.ones(100, dtype=dtype))


def test_quantize_rejects_non_tensor():
    with pytest.raises(TypeError, match="A: expected a torch.Tensor, got list"):
        F.quantize_blockwise([1.0, 2.0])


@pytest.mark.parametrize("blocksize", [32, 100, 8192, 0, -256, 256.0, True])
def test_quantize_rejects_blocksize(x, blocksize):
    with pytest.raises(
        ValueError, match=r"blocksize: expected one of \(64, 128, 256, 512, 1024, 2048, 4096\)"
    ):
        F.quantize_blockwise(x, blocksize=blocksize)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_rejects_non_finite_input(x, bad, dtype):
    x = x.to(dtype)
    x[517] = bad
    with pytest.raises(ValueError, match="A: holds NaN or Inf"):
        F.quantize_blockwise(x, blocksize=64)


def test_nested_quantization_of_values_near_the_float32_maximum():
    """The float32 mean of absmax overflows there; the nested offset is taken in float64."""
    x = torch.full((128,), 3e38)
    codes, state = F.quantize_blockwise(x, blocksize=64, nested=True)
    torch.testing.assert_close(F.dequantize_blockwise(codes, state), x, rtol=1e-2, atol=0)


def test_quantize_rejects_out_of_wrong_size(x):
    with pytest.raises(
        ValueError, match="out: expected a contiguous buffer of 1000 elements on cpu, got 999"
    ):
        F.quantize_blockwise(x, out=torch.empty(999, dtype=torch.uint8), blocksize=256)


def test_quantize_rejects_out_of_wrong_dtype(x):
    with pytest.raises(TypeError, match=r"out: expected a torch\.uint8 buffer, got torch\.int8"):
        F.quantize_blockwise(x, out=torch.empty(1000, dtype=torch.int8), blocksize=256)


def test_quantize_rejects_non_contiguous_out(x):
    out = torch.empty(2000, dtype=torch.uint8)[::2]
    with pytest.raises(ValueError, match=r"out: expected a contiguous buffer .*\(not contiguous\)"):
        F.quantize_blockwise(x, out=out, blocksize=256)


@pytest.mark.parametrize("n", [3, 5])
def test_quantize_rejects_absmax_of_wrong_size(x, n):
    with pytest.raises(
        ValueError, match=f"absmax: expected a contiguous buffer of 4 elements on cpu, got {n}"
    ):
        F.quantize_blockwise(x, absmax=torch.empty(n), blocksize=256)


def test_quantize_rejects_absmax_of_wrong_dtype(x):
    with pytest.raises(TypeError, match=r"absmax: expected a torch\.float32 buffer, got torch\.float64"):
        F.quantize_blockwise(x, absmax=torch.empty(4, dtype=torch.float64), blocksize=256)


def test_quantize_rejects_buffers_on_another_device(x):
    with pytest.raises(
        ValueError,
        match="out: expected a contiguous buffer of 1000 elements on cpu, got 1000 elements on meta",
    ):
        F.quantize_blockwise(x, out=torch.empty(1000, dtype=torch.uint8, device="meta"), blocksize=256)
    with pytest.raises(
        ValueError, match=r"code: expected a tensor on cpu \(like the input\), got one on meta"
    ):
        F.quantize_blockwise(x, code=torch.empty(256, device="meta"), blocksize=256)


def test_meta_tensors_are_rejected_before_any_work():
    with pytest.raises(ValueError, match="A: is on the meta device"):
        F.quantize_blockwise(torch.empty(1000, device="meta"), blocksize=256)
    codes = torch.empty(1000, dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match="A: is on the meta device"):
        F.dequantize_blockwise(codes, absmax=torch.ones(4, device="meta"), blocksize=256)


def _bad_codes():
    good = F.create_dynamic_map(True)
    unsorted = good.clone()
    unsorted[[10, 20]] = unsorted[[20, 10]]
    with_nan = good.clone()
    with_nan[100] = float("nan")
    with_inf = good.clone()
    with_inf[-1] = float("inf")
    return [
        pytest.param(good[:255], ValueError, "code: expected 256 float32 values, got 255 values", id="short"),
        pytest.param(
            torch.cat([good, good[:1]]), ValueError, "code: expected 256 float32 values, got 257", id="long"
        ),
        pytest.param(
            good.double(),
            ValueError,
            r"code: expected 256 float32 values, got 256 values of torch\.float64",
            id="f64",
        ),
        pytest.param(
            unsorted, ValueError, "code: the 256 code values must be sorted in ascending order", id="unsorted"
        ),
        pytest.param(with_nan, ValueError, "code: the code table holds NaN or Inf", id="nan"),
        pytest.param(with_inf, ValueError, "code: the code table holds NaN or Inf", id="inf"),
        pytest.param(
            good.tolist(),
            TypeError,
            "code: expected a torch.Tensor of 256 float32 values, got list",
            id="list",
        ),
    ]


@pytest.mark.parametrize("code,exc,match", _bad_codes())
def test_quantize_rejects_bad_code_table(x, code, exc, match):
    with pytest.raises(exc, match=match):
        F.quantize_blockwise(x, code=code, blocksize=256)


@pytest.mark.parametrize("code,exc,match", [p for p in _bad_codes() if p.id != "unsorted"])
def test_dequantize_rejects_bad_code_table(quantized, code, exc, match):
    codes, state = quantized
    with pytest.raises(exc, match=match):
        F.dequantize_blockwise(codes, absmax=state.absmax, code=code, blocksize=256)


def test_dequantize_takes_an_unsorted_code_table(quantized):
    """A lookup needs no order (bitsandbytes dequantizes with any table); quantization does."""
    codes, state = quantized
    table = torch.randn(256)
    out = F.dequantize_blockwise(codes, absmax=state.absmax, code=table, blocksize=256)
    scale = state.absmax.repeat_interleave(256)[: codes.numel()]
    torch.testing.assert_close(out, table[codes.long()].reshape(-1) * scale)


@pytest.mark.parametrize("max_exponent_bits, total_bits", [(1, 8), (3, 5)])
def test_unsigned_dynamic_map_settings_bitsandbytes_rejects(max_exponent_bits, total_bits):
    with pytest.raises(ValueError, match="an unsigned map needs total_bits - 1"):
        F.create_dynamic_map(False, max_exponent_bits, total_bits)
    with pytest.raises(TypeError, match="signed: expected True or False"):
        F.create_dynamic_map("no")


# -------------------------------------------------------------------------------------------- dequantize


@pytest.mark.parametrize("dtype", [torch.int8, torch.float32, torch.int32])
def test_dequantize_rejects_codes_dtype(quantized, dtype):
    codes, state = quantized
    with pytest.raises(TypeError, match=r"A: expected a uint8 tensor of codes, got torch\.\w+"):
        F.dequantize_blockwise(codes.to(dtype), state)


def test_dequantize_needs_a_state_or_absmax(quantized):
    with pytest.raises(ValueError, match="dequantize_blockwise: pass quant_state, or absmax"):
        F.dequantize_blockwise(quantized[0])


@pytest.mark.parametrize("n", [3, 5])
def test_dequantize_rejects_absmax_of_wrong_size(quantized, n):
    with pytest.raises(
        ValueError, match=f"absmax: expected 4 float32 values \\(one per block of 256\\), got {n}"
    ):
        F.dequantize_blockwise(quantized[0], absmax=torch.ones(n), blocksize=256)


def test_dequantize_rejects_absmax_of_wrong_dtype(quantized):
    with pytest.raises(ValueError, match=r"absmax: expected 4 float32 values .* got 4 of torch\.float64"):
        F.dequantize_blockwise(quantized[0], absmax=torch.ones(4, dtype=torch.float64), blocksize=256)


def test_dequantize_rejects_blocksize(quantized):
    with pytest.raises(ValueError, match="blocksize: expected one of"):
        F.dequantize_blockwise(quantized[0], absmax=torch.ones(4), blocksize=300)


def test_dequantize_rejects_out(quantized):
    codes, state = quantized
    with pytest.raises(
        ValueError, match="out: expected a contiguous buffer of 1000 elements on cpu, got 1001"
    ):
        F.dequantize_blockwise(codes, state, out=torch.empty(1001))
    with pytest.raises(ValueError, match=r"\(not contiguous\)"):
        F.dequantize_blockwise(codes, state, out=torch.empty(2000)[::2])
    with pytest.raises(TypeError, match=r"out: expected float32, float16 or bfloat16, got torch\.float64"):
        F.dequantize_blockwise(codes, state, out=torch.empty(1000, dtype=torch.float64))


def test_dequantize_rejects_tensors_on_another_device(quantized):
    codes, state = quantized
    with pytest.raises(
        ValueError, match=r"absmax: expected a tensor on cpu \(like the input\), got one on meta"
    ):
        F.dequantize_blockwise(codes, absmax=torch.ones(4, device="meta"), blocksize=256)


def test_dequantize_nested_without_state(quantized):
    with pytest.raises(ValueError, match="nested=True needs the quant_state"):
        F.dequantize_blockwise(quantized[0], absmax=torch.ones(4), blocksize=256, nested=True)


def test_non_contiguous_code_table_is_read_correctly(quantized):
    codes, state = quantized
    wide = torch.stack([state.code, torch.full_like(state.code, 7.0)], dim=1)  # code = wide[:, 0], strided
    got = F.dequantize_blockwise(codes, absmax=state.absmax, code=wide[:, 0], blocksize=256)
    assert torch.equal(got, F.dequantize_blockwise(codes, state))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(total_bits=9), "total_bits: expected an integer in 2..8, got 9"),
        (dict(total_bits=1), "total_bits: expected an integer in 2..8, got 1"),
        (dict(max_exponent_bits=8), "max_exponent_bits: expected 1..total_bits-1, got 8"),
        (dict(max_exponent_bits=0), "max_exponent_bits: expected 1..total_bits-1, got 0"),
    ],
)
def test_create_dynamic_map_rejects_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.create_dynamic_map(**kwargs)


def test_numpy_blocksize_and_non_bool_nested():
    import numpy as np

    x = torch.randn(300)
    codes, state = F.quantize_blockwise(x, blocksize=np.int64(64))
    assert state.blocksize == 64 and type(state.blocksize) is int
    plain_codes, plain_state = F.quantize_blockwise(x, blocksize=64)
    assert torch.equal(codes, plain_codes) and torch.equal(state.absmax, plain_state.absmax)
    with pytest.raises(TypeError, match="nested: expected True or False, got 'no'"):
        F.quantize_blockwise(x, nested="no")


def test_buffers_that_share_memory_with_the_input_or_each_other_are_rejected():
    x = torch.randn(1000)
    before = x.clone()
    with pytest.raises(ValueError, match="A and absmax: share memory"):
        F.quantize_blockwise(x, absmax=x[:4], blocksize=256)
    with pytest.raises(ValueError, match="A and out: share memory"):
        F.quantize_blockwise(x, out=x.view(torch.uint8)[:1000], blocksize=256)
    buf = torch.zeros(1100, dtype=torch.uint8)
    with pytest.raises(ValueError, match="out and absmax: share memory"):
        F.quantize_blockwise(x, out=buf[:1000], absmax=buf[992:1008].view(torch.float32), blocksize=256)
    assert torch.equal(x, before)
    codes, state = F.quantize_blockwise(x, blocksize=256)
    shared = torch.zeros(1000)
    shared[996:] = state.absmax
    with pytest.raises(ValueError, match="absmax and out: share memory"):
        F.dequantize_blockwise(codes, absmax=shared[996:], out=shared, blocksize=256)
