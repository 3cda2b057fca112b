"""Stateless public operations: quantization maps and block-wise quantization.

Names, arguments and meaning follow ``bitsandbytes.functional`` so code ports unchanged::

    import bnb8.functional as F
    codes, state = F.quantize_blockwise(x, blocksize=256)
    x_hat = F.dequantize_blockwise(codes, state)

Every element is stored as the index of the code nearest to ``x / absmax`` of its block (exactly:
ties go to the lower code index), so the error of a round trip is at most half a code gap times the
block's absmax.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from bnb8 import _native, _ops

__all__ = [
    "QuantState",
    "code_search_tables",
    "create_dynamic_map",
    "create_linear_map",
    "dequantize_blockwise",
    "quantize_blockwise",
]

BLOCKSIZES = _native.BLOCKSIZES


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The dynamic (tree) quantization map of Dettmers et al. (2022), as 2**total_bits sorted float32.

    Each decade 10**-k holds evenly spaced codes between 0.1 and 1 of it; finer decades near 1 get more
    codes. ``signed=True`` mirrors the codes for negative values (first moments); ``signed=False``
    spends every code on [0, 1] (second moments). The values equal bitsandbytes' for the same arguments.
    """
    if not isinstance(signed, bool):
        raise TypeError(f"signed: expected True or False, got {signed!r}")
    for name, value in (("total_bits", total_bits), ("max_exponent_bits", max_exponent_bits)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {value!r}")
    if total_bits < 2 or total_bits > 8:
        raise ValueError(f"total_bits: expected an integer in 2..8, got {total_bits!r}")
    if max_exponent_bits < 1 or max_exponent_bits >= total_bits:
        raise ValueError(f"max_exponent_bits: expected 1..total_bits-1, got {max_exponent_bits!r}")
    if not signed and max_exponent_bits != total_bits - 1:
        # Fewer exponent bits leave most of an unsigned table empty (repeated zeros); bitsandbytes
        # rejects these settings too.
        raise ValueError(
            f"max_exponent_bits: an unsigned map needs total_bits - 1 = {total_bits - 1}, got {max_exponent_bits}"
        )
    values: list[float] = []
    fraction_bits = total_bits - 1 - max_exponent_bits  # bits left for the linear part of the first decade

    def decade(count: int, scale: float) -> None:
        # Midpoints of `count` equal steps between 0.1 and 1, in float32 as the reference map is built.
        # The whole computation stays in float32 tensors, as the reference map is built.
        edges = torch.linspace(0.1, 1, count + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        values.extend((scale * mids).tolist())
        if signed:
            values.extend((-scale * mids).tolist())

    for exponent in range(max_exponent_bits):
        count = 2 ** (exponent + fraction_bits + (0 if signed else 1))
        decade(count, 10 ** (exponent - max_exponent_bits + 1))
    extra = 2**fraction_bits - 1
    if extra > 0:
        decade(extra, 10 ** (max_exponent_bits - 1 - max_exponent_bits + 1))
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))  # smaller maps are padded with zeros to a full 8-bit table
    return torch.tensor(sorted(values), dtype=torch.float32)


def create_linear_map(signed: bool = True, total_bits: int = 8, add_zero: bool = True) -> torch.Tensor:
    """Evenly spaced codes on [-1, 1] (``signed``) or [0, 1], as bitsandbytes' ``create_linear_map``.

    A signed map with ``add_zero`` (or under 8 bits) has an odd number of codes, so 0 is one of them;
    a map of fewer than 256 codes is padded to a full 8-bit table with zeros in its middle, as
    bitsandbytes pads it (a table for :func:`dequantize_blockwise`; sorted, it also quantizes).
    """
    if not isinstance(signed, bool) or not isinstance(add_zero, bool):
        raise TypeError(f"signed, add_zero: expected True or False, got {signed!r}, {add_zero!r}")
    if isinstance(total_bits, bool) or not isinstance(total_bits, int) or not 1 <= total_bits <= 8:
        raise ValueError(f"total_bits: expected an integer in 1..8, got {total_bits!r}")
    count = 2**total_bits - (1 if signed and (add_zero or total_bits < 8) else 0)
    values = torch.linspace(-1.0 if signed else 0.0, 1.0, count, dtype=torch.float32)
    half = count // 2
    return torch.cat([values[:half], torch.zeros(256 - count), values[half:]])


@functools.cache
def _dynamic_map_cpu(signed: bool) -> torch.Tensor:
    return create_dynamic_map(signed=signed)


def dynamic_map(signed: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """A fresh copy of the default 8-bit dynamic map on ``device``."""
    return _dynamic_map_cpu(signed).to(device, copy=True)


def _check_code(code: torch.Tensor, device: torch.device, name: str = "code", sorted_: bool = True) -> None:
    """A code table is 256 finite float32 values on ``device`` (the input's), sorted for quantization
    (its search needs order; a dequantization lookup does not, as in bitsandbytes)."""
    if not isinstance(code, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of 256 float32 values, got {type(code).__name__}")
    if code.dtype != torch.float32 or code.numel() != 256:
        raise ValueError(f"{name}: expected 256 float32 values, got {code.numel()} values of {code.dtype}")
    _native.check_same_device_as(device, **{name: code})
    cpu = code.detach().reshape(-1).cpu()
    if not torch.isfinite(cpu).all():
        raise ValueError(f"{name}: the code table holds NaN or Inf")
    if sorted_ and (cpu[1:] < cpu[:-1]).any():
        raise ValueError(f"{name}: the 256 code values must be sorted in ascending order")


_search_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}


def _build_search_tables(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact decision thresholds and the bucket table of ext/include/bnb8/quantize.h, built on the CPU."""
    c = code.detach().reshape(-1).cpu().double()
    mid = (c[:-1] + c[1:]) / 2  # exact unless neighbouring codes lie ~29 binades apart (fixed below)
    thr = mid.float()
    below = torch.nextafter(thr, torch.full_like(thr, -math.inf))
    thr = torch.where(thr.double() > mid, below, thr)  # round down, so `y > thr` decides exactly
    thr = _exact_round_down(thr, c)
    thr = torch.cat([thr, torch.tensor([math.inf])])
    if c[0] < -1 or c[-1] > 1:
        return thr, None  # normalized values are clamped to [-1, 1]: buckets need the code inside it
    half = _native.C.HALF_BUCKETS
    shift = _native.C.BUCKET_SHIFT
    lo_bits = torch.arange(half, dtype=torch.int64) << shift  # a bucket: the magnitudes sharing the top bits
    mag_lo = lo_bits.to(torch.int32).view(torch.float32)
    mag_hi = (lo_bits + (1 << shift) - 1).to(torch.int32).view(torch.float32)
    y_min = torch.cat([mag_lo, -mag_hi])  # smallest value of each bucket: positive half, then negative
    y_max = torch.cat([mag_hi, -mag_lo])
    lo = torch.searchsorted(thr, y_min)  # thresholds below the bucket
    inside = torch.searchsorted(thr, y_max) - lo  # thresholds a value of the bucket may cross
    if int(inside.max()) > 1:
        return thr, None
    # Each entry: lo << 16 | the place of threshold lo inside the bucket. The values of a bucket differ
    # only in their low 16 bits, which order them (reversed for negatives: flipped, as bucket_place does
    # with y). A bucket that no threshold crosses gets 0xFFFF, which no place exceeds.
    thr_bits = thr.view(torch.int32).to(torch.int64)[lo.clamp(max=254)] & 0xFFFF
    negative = torch.arange(2 * half) >= half
    place = torch.where(negative, thr_bits ^ 0xFFFF, thr_bits)
    place = torch.where(inside == 1, place, torch.full_like(place, 0xFFFF))
    return thr, ((lo << 16) | place).to(torch.int32)


def _exact_round_down(thr: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Each threshold as the largest float32 <= the exact midpoint of its two codes. The double sum
    above is exact for the dynamic maps; for codes of very different magnitude (a denormal next to a
    normal code) it rounds, so every threshold is checked in exact rational arithmetic (255 of them,
    once per table: the tables are cached).

    Only a step down can be needed: ``thr`` is the largest float32 <= the rounded double midpoint, and
    no float32 f lies above it and at or below the exact midpoint (f is a double, so rounding f <= exact
    gives f <= the rounded midpoint)."""
    out = thr.clone()
    down = torch.tensor([-math.inf])
    for i in range(out.numel()):
        exact = (Fraction(codes[i].item()) + Fraction(codes[i + 1].item())) / 2
        t = out[i : i + 1]
        while Fraction(t.item()) > exact:
            t = torch.nextafter(t, down)
        out[i] = t[0]
    return out


def code_search_tables(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(thresholds, bucket_table) for ``code`` on its device; bucket_table is None when bisection is needed.

    Cached by the code's content, so the optimizer's maps are built once per device.
    """
    key = (code.device, tuple(code.detach().reshape(-1).cpu().tolist()))
    tables = _search_cache.get(key)
    if tables is None:
        thr, bucket_table = _build_search_tables(code)
        tables = (thr.to(code.device), None if bucket_table is None else bucket_table.to(code.device))
        if len(_search_cache) > 64:
            _search_cache.clear()
        _search_cache[key] = tables
    return tables


@dataclass(eq=False)  # compared by identity, as bitsandbytes' (tensor fields have no plain ==)
class QuantState:
    """What dequantization needs besides the codes: bitsandbytes' QuantState fields, in its order
    and with its defaults, so code written for it runs unchanged.

    ``nested=True`` stores absmax itself 8-bit quantized (``state2``) around its mean (``offset``).
    ``quant_type`` names bitsandbytes' 4-bit formats; bnb8 is 8-bit block-wise only, so it must be None.
    Missing fields take the defaults of :func:`dequantize_blockwise`: the signed dynamic map, float32
    output, the codes' shape.
    """

    absmax: torch.Tensor
    shape: torch.Size | None = None
    code: torch.Tensor | None = None
    blocksize: int | None = None
    quant_type: str | None = None
    dtype: torch.dtype | None = None
    offset: torch.Tensor | None = None
    state2: QuantState | None = None

    @property
    def nested(self) -> bool:
        return self.state2 is not None

    def to(self, device: torch.device | str) -> None:
        """Move the state's tensors to ``device`` (in place, as bitsandbytes' ``QuantState.to``)."""
        self.absmax = self.absmax.to(device)
        if self.code is not None:
            self.code = self.code.to(device)
        if self.offset is not None:
            self.offset = self.offset.to(device)
        if self.state2 is not None:
            self.state2.to(device)


def quantize_blockwise(
    A: torch.Tensor,
    code: torch.Tensor | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> tuple[torch.Tensor, QuantState]:
    """Quantize ``A`` to uint8 codes, one float32 scale (absmax) per block of ``blocksize`` elements.

    Args:
        A (Tensor): float32, float16 or bfloat16 values, any shape; NaN or Inf is an error.
        code (Tensor, optional): 256 sorted float32 codes in the scale of [-1, 1]
            (default: ``create_dynamic_map(signed=True)``).
        absmax (Tensor, optional): float32 output buffer of ``ceil(A.numel() / blocksize)`` elements.
        out (Tensor, optional): uint8 output buffer with ``A.numel()`` elements.
        blocksize (int, optional): one of 64, 128, ..., 4096 (default: 4096).
        nested (bool, optional): also quantize absmax, in blocks of 256 (default: False).

    Returns:
        (codes, QuantState): codes shaped like ``A`` and what :func:`dequantize_blockwise` needs.
    """
    _native.check_float_tensor(A, "A")
    blocksize = _native.check_blocksize(blocksize)
    if not isinstance(nested, bool):
        raise TypeError(f"nested: expected True or False, got {nested!r}")
    if code is None:
        code = dynamic_map(True, A.device)
    _check_code(code, A.device)
    A = A.contiguous()
    nblocks = (A.numel() + blocksize - 1) // blocksize
    absmax = _native.output_buffer(absmax, "absmax", (nblocks,), torch.float32, A.device)
    out = _native.output_buffer(out, "out", A.shape, torch.uint8, A.device)
    _native.check_no_overlap(A=A, out=out, absmax=absmax)
    thresholds, bucket_table = code_search_tables(code)
    # NaN/Inf in A is found by the kernel itself (a NaN absmax), not by an extra pass over A: the
    # error comes after it ran, so out/absmax passed in then hold that call's codes (README).
    _ops.quantize_blockwise_(A, thresholds, bucket_table, blocksize, out.view(-1), absmax)
    if A.numel() and not torch.isfinite(absmax).all():
        raise ValueError("A: holds NaN or Inf; block-wise quantization needs finite values")
    state = QuantState(absmax=absmax, shape=A.shape, code=code, blocksize=blocksize, dtype=A.dtype)
    if nested:
        offset = absmax.mean()  # as bitsandbytes; in float64 where the float32 sum overflows (~3e38)
        if not torch.isfinite(offset):
            offset = absmax.double().mean().float()
        inner_codes, inner_state = quantize_blockwise(absmax - offset, blocksize=256)
        state = QuantState(
            absmax=inner_codes,
            shape=A.shape,
            code=code,
            blocksize=blocksize,
            dtype=A.dtype,
            offset=offset,
            state2=inner_state,
        )
    return out, state


def dequantize_blockwise(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    code: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`: ``code[A] * absmax`` of each block.

    Pass either ``quant_state`` or ``absmax`` (+ ``code``, ``blocksize``). Without a quant_state the
    output is float32 (or ``out``'s dtype).
    """
    if not isinstance(A, torch.Tensor) or A.dtype != torch.uint8:
        got = A.dtype if isinstance(A, torch.Tensor) else type(A).__name__
        raise TypeError(f"A: expected a uint8 tensor of codes, got {got}")
    _native.check_has_data(A, "A")
    if quant_state is None:
        if absmax is None:
            raise ValueError("dequantize_blockwise: pass quant_state, or absmax (with code and blocksize)")
        if nested:
            raise ValueError("nested=True needs the quant_state returned by quantize_blockwise(nested=True)")
        quant_state = QuantState(
            absmax=absmax,
            shape=A.shape,
            code=code if code is not None else dynamic_map(True, A.device),
            blocksize=blocksize,
            dtype=out.dtype if out is not None else torch.float32,
        )
    if not isinstance(quant_state, QuantState):
        raise TypeError(
            f"quant_state: expected a QuantState (from quantize_blockwise), got {type(quant_state).__name__}"
        )
    qs = quant_state
    if qs.quant_type is not None:
        raise ValueError(
            f"quant_state: quant_type={qs.quant_type!r} is a 4-bit format; bnb8 dequantizes 8-bit block-wise codes "
            "(quant_type=None)"
        )
    if qs.code is None or qs.dtype is None:  # bitsandbytes-style states may leave them out
        qs = dataclasses.replace(
            qs,
            code=qs.code if qs.code is not None else dynamic_map(True, A.device),
            dtype=qs.dtype if qs.dtype is not None else (out.dtype if out is not None else torch.float32),
        )
    scales = qs.absmax
    if qs.nested:
        scales = dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    blocksize = _native.check_blocksize(qs.blocksize)
    _check_code(qs.code, A.device, sorted_=False)
    nblocks = (A.numel() + blocksize - 1) // blocksize
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or scales.numel() != nblocks:
        raise ValueError(
            f"absmax: expected {nblocks} float32 values (one per block of {blocksize}), got "
            f"{getattr(scales, 'numel', lambda: '?')()} of {getattr(scales, 'dtype', type(scales).__name__)}"
        )
    _native.check_same_device(A, absmax=scales, code=qs.code)
    out = _native.output_buffer(out, "out", A.shape, qs.dtype, A.device, any_float=True)
    _native.check_no_overlap(A=A, absmax=scales, code=qs.code, out=out)
    _ops.dequantize_blockwise_(
        A.contiguous().view(-1),
        scales.contiguous(),
        qs.code.contiguous().view(-1),
        blocksize,
        out.view(-1),
    )
    return out
