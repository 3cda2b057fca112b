"""Registers the CUDA kernels (``bnb8._C.cuda_*``) for CUDA tensors on the ops of ``bnb8._ops``.

Each call is enqueued on the current torch stream of the tensors' device
(``torch.cuda.current_stream(device)``) and never synchronises the host: the count of skipped
non-finite gradient elements is added to the ``nonfinite`` tensor on the device, and norms are
returned as a device tensor. The native side takes the device from the tensors' addresses.

Native code trusts the addresses it is given, so everything that could make a kernel read or write
out of bounds is checked here first: one CUDA device for every tensor of a call, contiguity, and the
element counts of codes, states and absmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bnb8 import _native, _ops
from bnb8._native import C, address

_BLOCK = C.OPTIM_BLOCK


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _check(device: torch.device, name: str, t: Tensor | None) -> None:
    if t is None:
        return
    if t.device != device:
        raise ValueError(
            f"{name}: expected a tensor on {device} (like the other arguments), got one on {t.device}"
        )
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (the CUDA kernels read raw memory)")


def _check_list(device: torch.device, name: str, tensors: Sequence[Tensor]) -> None:
    for i, t in enumerate(tensors):
        _check(device, f"{name}[{i}]", t)


def _device_of(t: Tensor, name: str) -> torch.device:
    if t.device.type != "cuda":
        raise ValueError(f"{name}: expected a CUDA tensor, got one on {t.device}")
    return t.device


def _addresses(tensors: Sequence[Tensor]) -> list[int]:
    return [address(t) for t in tensors] + [0] * (C.MAX_STATES - len(tensors))


@_ops.quantize_blockwise_.register_kernel("cuda")
def _(A, thresholds, bucket_lo, blocksize, codes, absmax):
    device = _device_of(A, "A")
    for name, t in (("A", A), ("thresholds", thresholds), ("bucket_lo", bucket_lo), ("codes", codes),
                    ("absmax", absmax)):  # fmt: skip
        _check(device, name, t)
    if codes.numel() != A.numel() or absmax.numel() != (A.numel() + blocksize - 1) // blocksize:
        raise ValueError("codes/absmax: expected A.numel() codes and one absmax per block")
    C.cuda_quantize_blockwise(
        _native.dtype_code(A, "A"), A.data_ptr(), codes.data_ptr(), absmax.data_ptr(), A.numel(), blocksize,
        0, thresholds.data_ptr(), address(bucket_lo), 1, _stream(device),
    )  # fmt: skip


@_ops.dequantize_blockwise_.register_kernel("cuda")
def _(codes, absmax, code, blocksize, out):
    device = _device_of(out, "out")
    for name, t in (("codes", codes), ("absmax", absmax), ("code", code), ("out", out)):
        _check(device, name, t)
    if out.numel() != codes.numel() or absmax.numel() != (codes.numel() + blocksize - 1) // blocksize:
        raise ValueError("out/absmax: expected codes.numel() outputs and one absmax per block")
    C.cuda_dequantize_blockwise(
        _native.dtype_code(out, "out"), out.data_ptr(), codes.data_ptr(), absmax.data_ptr(), codes.numel(),
        blocksize, code.data_ptr(), 0, 0, 1, _stream(device),
    )  # fmt: skip


def _check_update(device, params, grads, states, absmaxes, quantized: bool) -> None:
    dtype = params[0].dtype
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        _check(device, f"params[{i}]", p)
        _check(device, f"grads[{i}]", g)
        if p.dtype != dtype or g.dtype != dtype:
            raise TypeError(
                f"params[{i}]/grads[{i}]: expected {dtype} like params[0], got {p.dtype}/{g.dtype}"
            )
        if g.numel() != p.numel():
            raise ValueError(f"grads[{i}]: expected {p.numel()} elements like params[{i}], got {g.numel()}")
        nblocks = (p.numel() + _BLOCK - 1) // _BLOCK
        for k, state in enumerate(states):
            s = state[i]
            _check(device, f"state{k + 1}[{i}]", s)
            want = torch.uint8 if quantized else torch.float32
            if s.dtype != want or s.numel() != p.numel():
                raise ValueError(
                    f"state{k + 1}[{i}]: expected {p.numel()} elements of {want}, got {s.numel()} of {s.dtype}"
                )
            if quantized:
                a = absmaxes[k][i]
                _check(device, f"absmax{k + 1}[{i}]", a)
                if a.dtype != torch.float32 or a.numel() != nblocks:
                    raise ValueError(
                        f"absmax{k + 1}[{i}]: expected {nblocks} float32 values, got {a.numel()}"
                    )


def _update_call(fn, rule, params, grads, states, absmaxes, qmaps, thresholds, bucket_lo, hyper, scales,
                 nonfinite, norms):  # fmt: skip
    device = _device_of(params[0], "params[0]")
    rule_index = _native.rule_index(rule)
    n_states = _native.RULES[rule][1]
    states = [s for s in states if s]
    absmaxes = [a for a in absmaxes if a]
    quantized = bool(states) and states[0][0].dtype == torch.uint8
    if len(states) != n_states:
        raise ValueError(f"rule {rule!r} needs {n_states} state lists, got {len(states)}")
    _check_update(device, params, grads, states, absmaxes, quantized)
    for name, tensors in (("qmaps", qmaps), ("thresholds", thresholds), ("bucket_lo", bucket_lo)):
        _check_list(device, name, tensors)
    if quantized and (
        len(qmaps) < n_states or (fn is C.cuda_optimizer_update and len(thresholds) < n_states)
    ):
        raise ValueError(f"rule {rule!r} with 8-bit states needs {n_states} qmaps and thresholds")
    _check(device, "scales", scales)
    if scales is not None and (scales.dtype != torch.float32 or scales.numel() != 2 * len(params)):
        raise ValueError(
            f"scales: expected float32 [{len(params)}, 2], got {tuple(scales.shape)} {scales.dtype}"
        )
    _check(device, "nonfinite", nonfinite)
    if nonfinite is not None and (nonfinite.dtype != torch.int64 or nonfinite.numel() != 1):
        raise ValueError(
            f"nonfinite: expected one int64 element, got {nonfinite.numel()} of {nonfinite.dtype}"
        )
    fn(
        rule_index,
        _native.dtype_code(params[0], "params"),
        quantized,
        _native.slot_table(params, grads, states, absmaxes),
        _native.hyper_struct(hyper),
        _addresses(qmaps),
        _addresses(thresholds),
        _addresses(bucket_lo),
        address(scales),
        address(nonfinite),
        address(norms),
        1,
        _stream(device),
    )


@_ops.optimizer_update_.register_kernel("cuda")
def _(rule, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmaps, thresholds, bucket_lo,
      hyper, scales, nonfinite):  # fmt: skip
    if not params:
        return
    _update_call(
        C.cuda_optimizer_update, rule, params, grads, [state1, state2, state3], [absmax1, absmax2, absmax3],
        qmaps, thresholds, bucket_lo, hyper, scales, nonfinite, None,
    )  # fmt: skip


@_ops.optimizer_norms.register_kernel("cuda")
def _(rule, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmaps, hyper, scales):
    if not params:
        return torch.zeros((0, 2), dtype=torch.float32)
    norms = torch.zeros((len(params), 2), dtype=torch.float32, device=params[0].device)
    _update_call(
        C.cuda_optimizer_norms, rule, params, grads, [state1, state2, state3], [absmax1, absmax2, absmax3],
        qmaps, [], [], hyper, scales, None, norms,
    )  # fmt: skip
    return norms
