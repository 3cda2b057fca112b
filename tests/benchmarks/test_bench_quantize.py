"""Block-wise quantize / dequantize of 64M float32 elements on the CPU, against a plain torch copy that
moves the same number of bytes, timed in the same run (rounds interleaved, see ``_bench.py``).

Bytes moved per element: quantize reads 4 (float32) and writes 1 (uint8 code), dequantize the
reverse; the reference copies a uint8 buffer of 2.5 bytes per element (2.5 read + 2.5 written), so
``ratio`` = kernel time / copy time and ``share_of_copy`` = 1 / ratio is the share of the copy's
bandwidth the kernel reaches. No test asserts a time.

    BNB8_BENCH_THREADS=2 BNB8_BENCH_TIMER=wall pytest -m benchmark tests/benchmarks/test_bench_quantize.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
from _bench import paired, pinned_threads, size_label

import bnb8.functional as F

pytestmark = pytest.mark.benchmark

N = 64 * 2**20  # 64M elements: 256 MiB of float32, far beyond any cache
BLOCKSIZE = 4096
ROUNDS = 5
BYTES_MOVED = 5 * N


@pytest.fixture(autouse=True)
def _threads():
    with pinned_threads() as threads:
        yield threads


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, generator=g)
    codes, state = F.quantize_blockwise(x, blocksize=BLOCKSIZE)
    src = torch.randint(0, 256, (BYTES_MOVED // 2,), dtype=torch.uint8, generator=g)
    return x, codes, state, src, torch.empty_like(src)


def _record(benchmark, ratio: float) -> None:
    if ratio == ratio:  # NaN under --benchmark-disable: nothing was timed
        info = benchmark.extra_info
        info["copy_gbps"] = BYTES_MOVED / info["reference_median_s"] / 1e9
        info["share_of_copy"] = 1.0 / ratio


def test_quantize_blockwise(benchmark, data):
    x, _, _, src, dst = data
    out = torch.empty(N, dtype=torch.uint8)
    absmax = torch.empty(N // BLOCKSIZE)
    ratio = paired(
        benchmark,
        lambda: F.quantize_blockwise(x, out=out, absmax=absmax, blocksize=BLOCKSIZE),
        lambda: dst.copy_(src),
        gate_key=f"quantize-blockwise-{size_label(N)}-fp32-cpu",
        reference_name="torch copy of the same bytes",
        bytes_moved=BYTES_MOVED,
        device="cpu",
        rounds=ROUNDS,
        blocksize=BLOCKSIZE,
    )
    _record(benchmark, ratio)
    assert torch.equal(out, data[1])  # the timed calls produced the right codes


def test_dequantize_blockwise(benchmark, data):
    x, codes, state, src, dst = data
    out = torch.empty(N)
    ratio = paired(
        benchmark,
        lambda: F.dequantize_blockwise(codes, state, out=out),
        lambda: dst.copy_(src),
        gate_key=f"dequantize-blockwise-{size_label(N)}-fp32-cpu",
        reference_name="torch copy of the same bytes",
        bytes_moved=BYTES_MOVED,
        device="cpu",
        rounds=ROUNDS,
        blocksize=BLOCKSIZE,
    )
    _record(benchmark, ratio)
    assert torch.equal(out, F.dequantize_blockwise(codes, state))
