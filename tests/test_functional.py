"""bnb8.functional: quantization maps and block-wise quantization.

The central claim is *exact nearest code*: every element is stored as the index of the code that
minimises |code - fl32(x / absmax)|, ties to the lower index. Every kernel is checked against an
independent brute force (argmin over all 256 codes in float64) on heavy-tailed data built to hit the
hard cases: values spanning 1e-7..1 of absmax, exact zeros, negative zero, denormals and exact
float32 midpoints between neighbouring codes.
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

import bnb8
import bnb8.functional as F
from bnb8 import _native
from bnb8.backends import reference
from tests.conftest import FLOAT_DTYPES, run_under_isa

BLOCKSIZES = list(F.BLOCKSIZES)
DTYPE_IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


# ----------------------------------------------------------------------------------------------------
# code tables


def linear_map() -> torch.Tensor:
    """256 evenly spaced codes in (-1, 1] that include 0 and 1."""
    return torch.linspace(-1.0, 1.0, 257, dtype=torch.float64)[1:].float()


def clustered_map(seed: int = 7) -> torch.Tensor:
    """A non-uniform table with codes closer than one search bucket: forces the bisection path."""
    g = torch.Generator().manual_seed(seed)
    body = torch.rand(200, generator=g, dtype=torch.float64) * 2 - 1
    cluster = 0.5 + torch.arange(50, dtype=torch.float64) * 1e-5  # 50 codes within 5e-4
    values = torch.cat([body, cluster, torch.tensor([-1.0, 0.0, 1.0, 0.25, -0.25, 1e-6])])
    return torch.sort(values.float()).values


MAPS = {
    "dyn_signed": lambda: F.create_dynamic_map(signed=True),
    "dyn_unsigned": lambda: F.create_dynamic_map(signed=False),
    "linear": linear_map,
    "clustered": clustered_map,
}


def test_thresholds_exact_for_codes_of_very_different_magnitude():
    """A denormal code next to a normal one: their midpoint is not a double sum of two float32, and
    a threshold rounded from it put -2**-9 on the wrong side (found by audit)."""
    from fractions import Fraction

    code = torch.linspace(-1, 1, 256)
    code[127], code[126] = -1e-40, -(2**-9)
    code = torch.sort(code).values
    thresholds, _ = F.code_search_tables(code)
    for i in range(255):
        exact = (Fraction(code[i].item()) + Fraction(code[i + 1].item())) / 2
        t = thresholds[i : i + 1]
        # the largest float32 at or below the exact midpoint: `thr < y` then decides exactly
        assert Fraction(t.item()) <= exact < Fraction(torch.nextafter(t, torch.tensor([1.0])).item()), i


def test_clustered_map_takes_the_bisection_path():
    _, bucket_table = F.code_search_tables(clustered_map())
    assert bucket_table is None


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_dynamic_maps_take_the_bucketed_path(signed):
    _, bucket_table = F.code_search_tables(F.create_dynamic_map(signed=signed))
    assert bucket_table is not None and bucket_table.dtype == torch.int32


def bucketed_search(y: torch.Tensor, bucket_table: torch.Tensor) -> torch.Tensor:
    """nearest_code_bucketed of quantize.h, written again with torch integer ops (int64: no sign
    surprises): the bucket from y's top 16 bits, lo from bits 16-23 of its entry, plus one when y's
    place in the bucket (low 16 bits, flipped for negatives) is above the entry's place."""
    C = _native.C
    bits = y.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    magnitude, negative = bits & 0x7FFFFFFF, bits >> 31
    bucket = (magnitude >> C.BUCKET_SHIFT) + negative * C.HALF_BUCKETS
    entry = bucket_table.to(torch.int64)[bucket]
    place = (bits ^ (negative * 0xFFFF)) & 0xFFFF
    return (entry >> 16) + (place > (entry & 0xFFFF)).long()


SEARCH_MAPS = {
    **{name: MAPS[name] for name in ("dyn_signed", "dyn_unsigned", "linear")},
    # bitsandbytes' linear map: codes 0 and 3.7e-9 (a linspace rounding), so a threshold at 1.9e-9
    "bnb_linear": lambda: F.create_linear_map(signed=True),
    # a threshold at exactly 0
    "symmetric": lambda: torch.linspace(-1.0, 1.0, 256),
}


@pytest.mark.parametrize("name", list(SEARCH_MAPS))
def test_bucket_table_counts_thresholds_below_y(name):
    """The bucket table's one lookup gives torch.searchsorted(thresholds, y) — the count of thresholds
    below y — for every threshold and its float neighbours, both ends of every bucket, zeros,
    denormals and random values of [-1, 1]."""
    thresholds, bucket_table = F.code_search_tables(SEARCH_MAPS[name]())
    assert bucket_table is not None
    C = _native.C
    starts = torch.arange(C.HALF_BUCKETS, dtype=torch.int64) << C.BUCKET_SHIFT
    ends = starts + (1 << C.BUCKET_SHIFT) - 1
    magnitudes = torch.cat([starts, ends]).to(torch.int32).view(torch.float32)
    finite = thresholds[:-1]
    up, down = torch.full_like(finite, 2.0), torch.full_like(finite, -2.0)
    g = torch.Generator().manual_seed(3)
    y = torch.cat(
        [
            finite,
            torch.nextafter(finite, up),
            torch.nextafter(finite, down),
            magnitudes,
            -magnitudes,
            torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-40, -1e-40, 2.0**-25, -(2.0**-25)]),
            torch.rand(100_000, generator=g) * 2 - 1,
            (torch.rand(100_000, generator=g) * 2 - 1) * 10.0 ** -(7 * torch.rand(100_000, generator=g)),
        ]
    )
    y = y[y.abs() <= 1]
    assert torch.equal(bucketed_search(y, bucket_table), torch.searchsorted(thresholds, y))


# ----------------------------------------------------------------------------------------------------
# create_dynamic_map


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_dynamic_map_hard_facts(signed):
    m = F.create_dynamic_map(signed=signed)
    assert m.dtype == torch.float32 and m.shape == (256,)
    assert bool((m[1:] > m[:-1]).all()), "256 distinct values in ascending order"
    assert m.max().item() == 1.0
    assert (m == 0).sum().item() == 1 and (m == 1).sum().item() == 1
    if signed:
        # The largest negative code is the largest mid-point of the 0.1..1 decade with 64 steps.
        assert m.min().item() == pytest.approx(-(0.1 + 0.9 * 127 / 128), abs=1e-6)
        assert (m < 0).sum().item() == 127
        # Mirror symmetry: every code except 1.0 has its negative in the map (0 is its own mirror).
        body = m[m != 1.0]
        assert torch.equal(torch.sort(-body).values, body)
    else:
        assert m[0].item() == 0.0 and (m[1:] > 0).all()  # one zero code, every other one positive
        # The smallest positive code is the first mid-point of the decade 1e-7..1e-6 with 2 steps.
        assert m[1].item() == pytest.approx(1e-6 * (0.1 + 0.9 / 4), rel=1e-6)


@pytest.mark.parametrize(
    "signed,max_exponent_bits,total_bits",
    [(True, 7, 8), (False, 7, 8), (True, 6, 8), (True, 5, 8), (True, 4, 8), (True, 3, 4), (False, 3, 4)],
)
def test_dynamic_map_equals_bitsandbytes(signed, max_exponent_bits, total_bits):
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    expected = bnb_f.create_dynamic_map(signed, max_exponent_bits, total_bits).float().cpu()
    got = F.create_dynamic_map(signed, max_exponent_bits, total_bits)
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------------------------------------
# data and the brute-force oracle


def representable(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float64 values that survive a round trip through float32 and ``dtype`` unchanged."""
    back = values.float().to(dtype).double()
    return values[back == values]


def heavy_tailed(n: int, dtype: torch.dtype, code: torch.Tensor, seed: int) -> torch.Tensor:
    """n values of dtype with magnitudes 1e-7..1, zeros, -0.0, denormals, and exact code midpoints.

    Every 64-element stretch gets a +-1.0 at its start (-1.0 in every third: a block whose largest
    magnitude is negative), so any block (a multiple of 64) that starts there has absmax 1 before
    scaling and the planted midpoints are exact midpoints of y = x / absmax. Each 4096-element chunk
    after the first is then scaled, so blocks see absmax other than 1: by a power of two (midpoints
    stay exact) in even chunks, by 3.7 times one in odd chunks.
    """
    g = torch.Generator().manual_seed(seed)
    mag = 10.0 ** (-7 * torch.rand(n, generator=g, dtype=torch.float64))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    x = sign * mag
    special = torch.tensor(
        [0.0, -0.0, 1e-40, -1e-40, 1.4e-45, -3e-39, 6e-8, -6e-8, 1e-30], dtype=torch.float64
    )
    c = code.double()
    mids = representable((c[1:] + c[:-1]) / 2, dtype)
    mids = mids[mids.abs() <= 1]
    pool = torch.cat([special, mids])
    # Plant specials and midpoints at random places (about 1 in 4 elements).
    plant = torch.rand(n, generator=g) < 0.25
    idx = torch.randint(0, pool.numel(), (n,), generator=g)
    x = torch.where(plant, pool[idx], x)
    x[::64] = 1.0
    x[64::192] = -1.0
    for chunk, start in enumerate(range(4096, n, 4096)):
        power = 2.0 ** int(torch.randint(-6, 7, (1,), generator=g))
        x[start : start + 4096] *= power * (3.7 if chunk % 2 == 0 else 1.0)
    return x.to(dtype)  # float64 -> dtype rounds once (the specials and midpoints are exact)


def block_absmax(x32: torch.Tensor, blocksize: int) -> torch.Tensor:
    n = x32.numel()
    nblocks = (n + blocksize - 1) // blocksize
    padded = torch.zeros(nblocks * blocksize)
    padded[:n] = x32.abs()
    return padded.view(nblocks, blocksize).amax(dim=1)


def brute_force_codes(
    x: torch.Tensor, code: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax): argmin over all 256 codes of |code - fl32(x / absmax)|, in float64."""
    x32 = x.reshape(-1).float()
    absmax = block_absmax(x32, blocksize)
    scale = absmax.repeat_interleave(blocksize)[: x32.numel()]
    y = torch.where(scale > 0, x32 / scale, torch.zeros_like(x32)).double()  # float32 quotient
    c = code.double()
    out = torch.empty(x32.numel(), dtype=torch.uint8)
    for s in range(0, y.numel(), 1 << 15):
        d = (y[s : s + (1 << 15), None] - c[None, :]).abs()
        out[s : s + (1 << 15)] = d.argmin(dim=1).to(torch.uint8)  # first minimum: the lower index
    return out, absmax


def assert_exact(
    x: torch.Tensor, code: torch.Tensor, blocksize: int, codes: torch.Tensor, absmax: torch.Tensor
):
    want, want_absmax = brute_force_codes(x, code, blocksize)
    assert torch.equal(absmax, want_absmax)
    got = codes.reshape(-1)
    wrong = (got != want).nonzero().flatten()
    if wrong.numel():
        i = wrong[0].item()
        pytest.fail(
            f"{wrong.numel()} of {got.numel()} codes are not the nearest; first at {i}: x={x.reshape(-1)[i].item()!r} "
            f"got code {got[i].item()} ({code[got[i].long()].item()!r}), want {want[i].item()} "
            f"({code[want[i].long()].item()!r})"
        )
    # The sign of a non-zero value is never flipped (every test map contains 0).
    xs = x.reshape(-1).float()
    decoded = code[got.long()]
    assert not bool(((xs > 0) & (decoded < 0)).any() or ((xs < 0) & (decoded > 0)).any())


# ----------------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("map_name", list(MAPS))
def test_quantize_is_exact_nearest(map_name, blocksize, dtype):
    code = MAPS[map_name]()
    x = heavy_tailed(3 * 4096 + 77, dtype, code, seed=blocksize)
    codes, state = F.quantize_blockwise(x, code=code, blocksize=blocksize)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert state.blocksize == blocksize and state.dtype == dtype and state.shape == x.shape
    assert_exact(x, code, blocksize, codes, state.absmax)


def _odd_size_cases():
    # The 1M-element brute force takes seconds: one map and dtype by default, all of them in the slow run.
    for map_name in MAPS:
        for dtype in FLOAT_DTYPES:
            for shape in [(1,), (255,), (257,), (4097,), (1000, 1001)]:
                fast = shape != (1000, 1001) or (map_name == "dyn_signed" and dtype == torch.float32)
                marks = () if fast else (pytest.mark.slow,)
                yield pytest.param(
                    map_name, dtype, shape, marks=marks, id=f"{map_name}-{DTYPE_IDS[dtype]}-{shape}"
                )


@pytest.mark.parametrize("map_name,dtype,shape", list(_odd_size_cases()))
def test_quantize_is_exact_nearest_odd_sizes(map_name, dtype, shape):
    code = MAPS[map_name]()
    n = math.prod(shape)
    x = heavy_tailed(n, dtype, code, seed=n).view(shape)
    for blocksize in (64, 4096) if n > 10_000 else (64, 256, 4096):
        codes, state = F.quantize_blockwise(x, code=code, blocksize=blocksize)
        assert codes.shape == shape
        assert_exact(x, code, blocksize, codes, state.absmax)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
def test_quantize_exact_on_gaussian_and_scaled_data(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64 * 1024 + 3, generator=g) * torch.rand(64 * 1024 + 3, generator=g) ** 8 * 1e3).to(
        dtype
    )
    for signed in (True, False):
        code = F.create_dynamic_map(signed=signed)
        codes, state = F.quantize_blockwise(x.abs() if not signed else x, code=code, blocksize=256)
        assert_exact(x.abs() if not signed else x, code, 256, codes, state.absmax)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
@pytest.mark.parametrize("map_name", list(MAPS))
def test_native_kernel_equals_reference_backend(map_name, blocksize, dtype):
    code = MAPS[map_name]()
    x = heavy_tailed(2 * 4096 + 131, dtype, code, seed=3 + blocksize)
    thresholds, bucket_table = F.code_search_tables(code)
    nblocks = (x.numel() + blocksize - 1) // blocksize
    ref_codes = torch.empty(x.numel(), dtype=torch.uint8)
    ref_absmax = torch.empty(nblocks)
    reference.quantize_blockwise_(x, thresholds, bucket_table, blocksize, ref_codes, ref_absmax)
    codes, state = F.quantize_blockwise(x, code=code, blocksize=blocksize)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(state.absmax, ref_absmax)
    out = torch.empty(x.numel(), dtype=dtype)
    reference.dequantize_blockwise_(codes, state.absmax, code, blocksize, out)
    assert torch.equal(F.dequantize_blockwise(codes, state), out)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
def test_native_kernel_equals_reference_on_non_finite_blocks(dtype):
    """Below the functional API's error: a block holding NaN/Inf gets absmax NaN and all-zero codes in
    both implementations; its neighbours are untouched."""
    x = torch.randn(64 * 5 + 9).to(dtype)
    x[3], x[64 + 10], x[128 + 63], x[-1] = float("nan"), float("inf"), float("-inf"), float("nan")
    code = F.create_dynamic_map(signed=True)
    thresholds, bucket_table = F.code_search_tables(code)
    got_codes, got_absmax = torch.empty(x.numel(), dtype=torch.uint8), torch.empty(6)
    ref_codes, ref_absmax = torch.empty_like(got_codes), torch.empty_like(got_absmax)
    torch.ops.bnb8.quantize_blockwise_(x, thresholds, bucket_table, 64, got_codes, got_absmax)
    reference.quantize_blockwise_(x, thresholds, bucket_table, 64, ref_codes, ref_absmax)
    assert torch.equal(got_codes, ref_codes)
    assert torch.equal(got_absmax.isnan(), torch.tensor([True, True, True, False, False, True]))
    assert torch.equal(got_absmax[3:5], ref_absmax[3:5])
    assert bool((code[got_codes[:192].long()] == 0).all())


_ISA_SCRIPT = textwrap.dedent(
    """
    import sys, torch, bnb8, bnb8.functional as F
    data = torch.load(sys.argv[1])
    out = {"isa": bnb8._C.cpu_isa()}
    for name, (x, code, bs) in data.items():
        out[name] = F.quantize_blockwise(x, code=code, blocksize=bs)[0]
    torch.save(out, sys.argv[2])
    """
)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_cpu_variant_gives_the_same_codes(isa, tmp_path):
    """Each compiled instruction-set variant (picked by BNB8_CPU_ISA) is bit-exact with the default."""
    data = {}
    for map_name, make in {**MAPS, **SEARCH_MAPS}.items():
        code = make()
        for dtype in FLOAT_DTYPES:
            data[f"{map_name}-{DTYPE_IDS[dtype]}"] = (heavy_tailed(4096 + 65, dtype, code, seed=11), code, 64)
            gaussian = torch.randn(3 * 256 + 5, generator=torch.Generator().manual_seed(12)) * 0.37
            data[f"{map_name}-{DTYPE_IDS[dtype]}-gaussian"] = (gaussian.to(dtype), code, 256)
    other = run_under_isa(isa, _ISA_SCRIPT, data, tmp_path)
    for name, (x, code, bs) in data.items():
        assert torch.equal(other[name], F.quantize_blockwise(x, code=code, blocksize=bs)[0]), name


# ----------------------------------------------------------------------------------------------------
# the AVX-512 run search (ext/cpu/simd_search.h): round(y * inv_step - offset) within runs of equally
# spaced thresholds, with the register tree for lanes near a threshold and for tables without such runs

needs_run_search = pytest.mark.skipif(
    not bnb8._C.cpu_isa().startswith("avx512"),
    reason="the run search belongs to the AVX-512 variant; this CPU runs another",
)


def search_runs(code: torch.Tensor) -> int:
    thresholds, _ = F.code_search_tables(code)
    return bnb8._C.cpu_search_runs(thresholds.data_ptr())


@needs_run_search
def test_run_search_covers_the_dynamic_and_linear_maps():
    # One run per decade of each sign, plus the codes 0 and 1 — so the tests below exercise it.
    assert search_runs(F.create_dynamic_map(signed=True)) == 14
    assert search_runs(F.create_dynamic_map(signed=False)) == 8
    assert search_runs(linear_map()) == 1
    assert search_runs(clustered_map()) == 0  # more runs than two registers hold: the tree alone


def float32_sweep(stride: int, offset: int = 0, stop: int = 0x3F800001) -> torch.Tensor:
    """Every stride-th float32 in [-1, 1] by bit pattern (both signs, zeros, denormals), magnitude bit
    patterns from offset up to stop (1.0 is 0x3F800000), in blocks of 4096 that each start with 1.0,
    so absmax is 1 and y = x exactly."""
    mags = torch.arange(offset, min(stop, 0x3F800001), stride, dtype=torch.int64)
    bits = torch.cat([mags, mags | (1 << 31)])
    x = (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)
    rows = (x.numel() + 4094) // 4095
    values = torch.ones(rows * 4095)  # the last row padded with 1.0
    values[: x.numel()] = x
    out = torch.ones(rows, 4096)
    out[:, 1:] = values.view(rows, 4095)
    return out.reshape(-1)


def assert_counts_thresholds(x: torch.Tensor, code: torch.Tensor) -> None:
    """Against the definition the kernels implement: the number of thresholds below y."""
    thresholds, _ = F.code_search_tables(code)
    codes, state = F.quantize_blockwise(x, code=code, blocksize=4096)
    assert bool((state.absmax == 1).all())
    want = torch.searchsorted(thresholds, x, side="left")
    wrong = (codes.long() != want).nonzero().flatten()
    assert wrong.numel() == 0, (
        f"{wrong.numel()} wrong; first y={x[wrong[0]].item()!r}: {codes[wrong[0]]} vs {want[wrong[0]]}"
    )


@pytest.mark.parametrize("map_name", list(MAPS))
def test_quantize_exact_over_a_sweep_of_float32_bit_patterns(map_name):
    assert_counts_thresholds(float32_sweep(stride=4093, offset=1000), MAPS[map_name]())


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_bucket_table_searches_exact_over_a_sweep_of_float32_bit_patterns(isa, tmp_path):
    """The variants that search the bucket table (AVX2's gather, the generic loop) against the
    definition, the number of thresholds below y, on every map that has a bucket table."""
    x = float32_sweep(stride=4093, offset=1000)
    maps = {name: make() for name, make in {**MAPS, **SEARCH_MAPS}.items()}
    tables = {name: F.code_search_tables(code) for name, code in maps.items()}
    data = {
        name: (x, maps[name], 4096) for name, (_, bucket_table) in tables.items() if bucket_table is not None
    }
    assert {"dyn_signed", "dyn_unsigned", "bnb_linear", "symmetric"} <= data.keys()
    other = run_under_isa(isa, _ISA_SCRIPT, data, tmp_path)
    for name in data:
        assert torch.equal(other[name].long(), torch.searchsorted(tables[name][0], x)), name


@pytest.mark.slow
@pytest.mark.parametrize("map_name", list(MAPS))
def test_quantize_exact_over_a_dense_sweep_of_float32_bit_patterns(map_name):
    # 2 x 2 x 20M values per map. The full sweep, all 2.1e9 values: python tests/full_sweep.py
    code = MAPS[map_name]()
    for offset in (0, 26):
        assert_counts_thresholds(float32_sweep(stride=53, offset=offset), code)


def test_bitsandbytes_cpu_misses_nearest_codes_bnb8_does_not(record_property):
    """A measurement, not an assumption: the share of small values bitsandbytes' CPU path rounds to a
    code that is not the nearest one, next to bnb8's share (which must be zero)."""
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    g = torch.Generator().manual_seed(5)
    n = 1 << 18
    x = torch.randn(n, generator=g) * 10.0 ** (-6 * torch.rand(n, generator=g))
    x[::256] = 1.0  # absmax 1 per block: y == x
    code = F.create_dynamic_map(signed=True)
    want, _ = brute_force_codes(x, code, 256)
    y = x.double()
    c = code.double()
    # Ties (two codes at the same distance) count as correct either way.
    best = (y - c[want.long()]).abs()
    small = x.abs() < 1e-2

    def miss_share(codes: torch.Tensor) -> float:
        dist = (y - c[codes.reshape(-1).long()]).abs()
        return ((dist > best) & small).sum().item() / small.sum().item()

    bnb_codes, _ = bnb_f.quantize_blockwise(x, code=code, blocksize=256)
    ours, _ = F.quantize_blockwise(x, code=code, blocksize=256)
    bnb_share, our_share = miss_share(bnb_codes), miss_share(ours)
    record_property("bitsandbytes_miss_share_small", bnb_share)
    print(f"share of |x| < 1e-2 not at the nearest code: bitsandbytes {bnb_share:.4%}, bnb8 {our_share:.4%}")
    assert our_share == 0.0


# ----------------------------------------------------------------------------------------------------
# dequantize, round trips, state


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("blocksize", [64, 512, 4096])
def test_dequantize_is_code_times_absmax(blocksize, dtype):
    g = torch.Generator().manual_seed(blocksize)
    x = (torch.randn(5000, generator=g) * 3).to(dtype)
    codes, state = F.quantize_blockwise(x, blocksize=blocksize)
    got = F.dequantize_blockwise(codes, state)
    assert got.dtype == dtype and got.shape == x.shape
    scale = state.absmax.repeat_interleave(blocksize)[: x.numel()]
    want = (F.create_dynamic_map(True)[codes.long()] * scale).to(dtype)
    assert torch.equal(got, want)
    # Round-trip error: at most half the largest code gap times the block's absmax (dtype rounding aside).
    gap = F.create_dynamic_map(True).diff().max().item()
    err = (got.float() - x.float()).abs()
    tol = scale * gap / 2 + x.float().abs() * torch.finfo(dtype).eps
    assert bool((err <= tol).all())


def test_dequantize_with_absmax_and_code_and_out():
    x = torch.randn(3000)
    code = F.create_dynamic_map(signed=True)
    codes, state = F.quantize_blockwise(x, code=code, blocksize=128)
    out = torch.empty(3000, dtype=torch.bfloat16)
    got = F.dequantize_blockwise(codes, absmax=state.absmax, code=code, blocksize=128, out=out)
    assert got.data_ptr() == out.data_ptr() and got.dtype == torch.bfloat16
    assert torch.equal(got, F.dequantize_blockwise(codes, state).to(torch.bfloat16))


def test_quantize_writes_into_out_and_absmax():
    x = torch.randn(10, 100)
    out = torch.empty(1000, dtype=torch.uint8)
    absmax = torch.empty(4)
    codes, state = F.quantize_blockwise(x, out=out, absmax=absmax, blocksize=256)
    assert codes.data_ptr() == out.data_ptr() and codes.shape == x.shape
    assert state.absmax.data_ptr() == absmax.data_ptr()
    assert_exact(x, F.create_dynamic_map(True), 256, codes, absmax)


def test_quantize_non_contiguous_input():
    x = torch.randn(300, 200).t()
    codes, state = F.quantize_blockwise(x, blocksize=64)
    want, _ = F.quantize_blockwise(x.contiguous(), blocksize=64)
    assert torch.equal(codes, want)


def test_quant_state_as_bitsandbytes_builds_it():
    """bitsandbytes' field order and defaults: a state without shape, code or dtype dequantizes with
    the defaults; a 4-bit quant_type or a non-state is a clear error; .to() moves it; == is identity."""
    x = torch.randn(1000)
    codes, state = F.quantize_blockwise(x, blocksize=256)
    positional = F.QuantState(state.absmax, state.shape, state.code, 256, None, torch.float32)
    minimal = F.QuantState(absmax=state.absmax, blocksize=256)
    for qs in (positional, minimal):
        assert torch.equal(F.dequantize_blockwise(codes, qs), F.dequantize_blockwise(codes, state))
    assert minimal == minimal and minimal != positional
    with pytest.raises(ValueError, match="quant_type='nf4' is a 4-bit format"):
        F.dequantize_blockwise(codes, F.QuantState(state.absmax, blocksize=256, quant_type="nf4"))
    with pytest.raises(TypeError, match="quant_state: expected a QuantState"):
        F.dequantize_blockwise(codes, {"absmax": state.absmax})
    state.to("cpu")
    assert state.absmax.device.type == "cpu"


def test_nested_round_trip():
    x = torch.randn(100_000) * torch.linspace(0.1, 10, 100_000)
    codes, state = F.quantize_blockwise(x, blocksize=256, nested=True)
    assert state.nested and state.state2 is not None and state.offset is not None
    # The offset is the mean of the plain absmax (bitsandbytes' choice), from an independent mean.
    plain_absmax = torch.tensor(
        [x[i : i + 256].abs().max().item() for i in range(0, x.numel(), 256)], dtype=torch.float64
    )
    assert state.offset.item() == pytest.approx(plain_absmax.mean().item(), rel=1e-6)
    plain_codes, plain = F.quantize_blockwise(x, blocksize=256)
    assert torch.equal(codes, plain_codes)
    got = F.dequantize_blockwise(codes, state)
    # absmax - offset is itself 8-bit quantized: off by at most half a code gap times its own absmax.
    scales = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    half_gap = F.create_dynamic_map(True).diff().max().item() / 2
    inner_max = state.state2.absmax.repeat_interleave(256)[: scales.numel()]
    assert bool(((scales - plain.absmax).abs() <= half_gap * inner_max + 1e-5).all())
    scale = scales.repeat_interleave(256)[: x.numel()]
    assert torch.equal(got, F.create_dynamic_map(True)[codes.long()] * scale)


def test_all_zero_block_and_empty_tensor():
    x = torch.zeros(300)
    x[256:] = torch.randn(44)
    codes, state = F.quantize_blockwise(x, blocksize=256)
    assert state.absmax[0].item() == 0.0
    assert torch.equal(F.dequantize_blockwise(codes, state)[:256], torch.zeros(256))
    empty_codes, empty_state = F.quantize_blockwise(torch.empty(0), blocksize=64)
    assert empty_codes.numel() == 0 and empty_state.absmax.numel() == 0
    assert F.dequantize_blockwise(empty_codes, empty_state).numel() == 0
