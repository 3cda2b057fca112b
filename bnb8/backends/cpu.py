"""Registers the C++ kernels (``bnb8._C.cpu_*``) for CPU tensors on the ops of ``bnb8._ops``.

Native code trusts the addresses it is given: every call first runs the checks of ``bnb8._native``
(dtypes, sizes, contiguity, one device), shared with the CUDA backend.
"""

from __future__ import annotations

import torch

from bnb8 import _native, _ops
from bnb8._native import C, address


@_ops.quantize_blockwise_.register_kernel("cpu")
def _(A, thresholds, bucket_table, blocksize, codes, absmax):
    _native.check_quantize(A, thresholds, bucket_table, blocksize, codes, absmax)
    C.cpu_quantize_blockwise(
        _native.dtype_code(A, "A"), A.data_ptr(), codes.data_ptr(), absmax.data_ptr(), A.numel(), blocksize,
        0, thresholds.data_ptr(), address(bucket_table), _native.num_threads(), 0,
    )  # fmt: skip


@_ops.dequantize_blockwise_.register_kernel("cpu")
def _(codes, absmax, code, blocksize, out):
    _native.check_dequantize(codes, absmax, code, blocksize, out)
    C.cpu_dequantize_blockwise(
        _native.dtype_code(out, "out"), out.data_ptr(), codes.data_ptr(), absmax.data_ptr(), codes.numel(),
        blocksize, code.data_ptr(), 0, 0, _native.num_threads(), 0,
    )  # fmt: skip


def _update_call(fn, rule, params, grads, states, absmaxes, qmaps, thresholds, bucket_table, hyper, scales,
                 nonfinite, norms, trusted):  # fmt: skip
    if not params:
        return
    states = [s for s in states if s]
    absmaxes = [a for a in absmaxes if a]
    if trusted:
        quantized = states[0][0].dtype == torch.uint8
    else:
        norms_pass = fn is C.cpu_optimizer_norms  # decodes only: no search tables
        quantized = _native.check_update(
            rule, params, grads, states, absmaxes, qmaps, None if norms_pass else thresholds, bucket_table, scales,
            nonfinite,
        )  # fmt: skip
    fn(
        _native.rule_index(rule),
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
        _native.num_threads(),
        0,
    )


# The ops' CPU kernels check every argument. `trusted=True` skips the per-tensor checks for bnb8's own
# optimizers, whose buffers were made (or validated by load_state_dict) to fit: on 200 small tensors the
# checks cost more than the step itself (2.1 -> 3.2 ms).
@_ops.optimizer_update_.register_kernel("cpu")
def optimizer_update_(rule, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmaps, thresholds,
                      bucket_table, hyper, scales, nonfinite, trusted=False):  # fmt: skip
    _update_call(
        C.cpu_optimizer_update, rule, params, grads, [state1, state2, state3], [absmax1, absmax2, absmax3],
        qmaps, thresholds, bucket_table, hyper, scales, nonfinite, None, trusted,
    )  # fmt: skip


@_ops.optimizer_norms.register_kernel("cpu")
def optimizer_norms(rule, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmaps, hyper, scales,
                    trusted=False):  # fmt: skip
    norms = torch.zeros((len(params), 2), dtype=torch.float32)
    _update_call(
        C.cpu_optimizer_norms, rule, params, grads, [state1, state2, state3], [absmax1, absmax2, absmax3],
        qmaps, [], [], hyper, scales, None, norms, trusted,
    )  # fmt: skip
    return norms
