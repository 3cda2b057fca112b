"""Registers the CUDA kernels (``bnb8._C.cuda_*``) for CUDA tensors on the ops of ``bnb8._ops``.

Each call is enqueued on the current torch stream of the tensors' device
(``torch.cuda.current_stream(device)``) and never synchronises the host: the count of skipped
non-finite gradient elements is added to the ``nonfinite`` tensor on the device, and norms are
returned as a device tensor. The native side takes the device from the tensors' addresses.

Native code trusts the addresses it is given: every call first runs the checks of ``bnb8._native``
(dtypes, sizes, contiguity, one device), shared with the CPU backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnb8 import _native, _ops
from bnb8._native import C, address


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _device_of(t: Tensor, name: str) -> torch.device:
    if t.device.type != "cuda":
        raise ValueError(f"{name}: expected a CUDA tensor, got one on {t.device}")
    return t.device


@_ops.quantize_blockwise_.register_kernel("cuda")
def _(A, thresholds, bucket_table, blocksize, codes, absmax):
    device = _device_of(A, "A")
    _native.check_quantize(A, thresholds, bucket_table, blocksize, codes, absmax)
    C.cuda_quantize_blockwise(
        _native.dtype_code(A, "A"), A.data_ptr(), codes.data_ptr(), absmax.data_ptr(), A.numel(), blocksize,
        0, thresholds.data_ptr(), address(bucket_table), 1, _stream(device),
    )  # fmt: skip


@_ops.dequantize_blockwise_.register_kernel("cuda")
def _(codes, absmax, code, blocksize, out):
    device = _device_of(out, "out")
    _native.check_dequantize(codes, absmax, code, blocksize, out)
    C.cuda_dequantize_blockwise(
        _native.dtype_code(out, "out"), out.data_ptr(), codes.data_ptr(), absmax.data_ptr(), codes.numel(),
        blocksize, code.data_ptr(), 0, 0, 1, _stream(device),
    )  # fmt: skip


def _update_call(fn, rule, params, grads, states, absmaxes, qmaps, thresholds, bucket_table, hyper, scales,
                 nonfinite, norms):  # fmt: skip
    device = _device_of(params[0], "params[0]")
    rule_index = _native.rule_index(rule)
    states = [s for s in states if s]
    absmaxes = [a for a in absmaxes if a]
    searching = fn is C.cuda_optimizer_update  # the norms pass only decodes
    quantized = _native.check_update(
        rule,
        params,
        grads,
        states,
        absmaxes,
        qmaps,
        thresholds if searching else None,
        bucket_table,
        scales,
        nonfinite,
    )
    _native.check_on(device, "norms", norms)
    fn(
        rule_index,
        _native.dtype_code(params[0], "params"),
        quantized,
        _native.slot_table(params, grads, states, absmaxes),
        _native.hyper_struct(hyper),
        _native.state_addresses(qmaps),
        _native.state_addresses(thresholds),
        _native.state_addresses(bucket_table),
        address(scales),
        address(nonfinite),
        address(norms),
        1,
        _stream(device),
    )


@_ops.optimizer_update_.register_kernel("cuda")
def _(rule, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmaps, thresholds, bucket_table,
      hyper, scales, nonfinite):  # fmt: skip
    if not params:
        return
    _update_call(
        C.cuda_optimizer_update, rule, params, grads, [state1, state2, state3], [absmax1, absmax2, absmax3],
        qmaps, thresholds, bucket_table, hyper, scales, nonfinite, None,
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
