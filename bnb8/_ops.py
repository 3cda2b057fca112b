"""Every bnb8 operator, declared once: a ``torch.library.custom_op`` schema plus a fake implementation.

The default implementation of each op is the pure-torch reference (``bnb8.backends.reference``);
``bnb8.backends.cpu`` and ``bnb8.backends.cuda`` register native kernels for their device. The fake
implementations check shapes with ``torch._check`` so ``torch.compile`` traces a step without graph
breaks. Public, checked entry points live in ``bnb8.functional`` and ``bnb8.optim``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnb8.backends import reference


@torch.library.custom_op("bnb8::quantize_blockwise_", mutates_args=("codes", "absmax"))
def quantize_blockwise_(
    A: Tensor, thresholds: Tensor, bucket_table: Tensor | None, blocksize: int, codes: Tensor, absmax: Tensor
) -> None:
    """codes[i] = nearest code of A[i] / absmax[block]; absmax[block] = max |A| of the block."""
    reference.quantize_blockwise_(A, thresholds, bucket_table, blocksize, codes, absmax)


@quantize_blockwise_.register_fake
def _(A, thresholds, bucket_table, blocksize, codes, absmax):
    torch._check(codes.numel() == A.numel(), lambda: "codes must have A.numel() elements")
    torch._check(absmax.numel() == (A.numel() + blocksize - 1) // blocksize, lambda: "one absmax per block")


@torch.library.custom_op("bnb8::dequantize_blockwise_", mutates_args=("out",))
def dequantize_blockwise_(codes: Tensor, absmax: Tensor, code: Tensor, blocksize: int, out: Tensor) -> None:
    """out[i] = code[codes[i]] * absmax[block]."""
    reference.dequantize_blockwise_(codes, absmax, code, blocksize, out)


@dequantize_blockwise_.register_fake
def _(codes, absmax, code, blocksize, out):
    torch._check(out.numel() == codes.numel(), lambda: "out must have codes.numel() elements")


_UPDATE_MUTATES = ("params", "state1", "state2", "state3", "absmax1", "absmax2", "absmax3", "nonfinite")


@torch.library.custom_op("bnb8::optimizer_update_", mutates_args=_UPDATE_MUTATES)
def optimizer_update_(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    state1: list[Tensor],
    state2: list[Tensor],
    state3: list[Tensor],
    absmax1: list[Tensor],
    absmax2: list[Tensor],
    absmax3: list[Tensor],
    qmaps: list[Tensor],
    thresholds: list[Tensor],
    bucket_table: list[Tensor],
    hyper: list[float],
    scales: Tensor | None,
    nonfinite: Tensor,
) -> None:
    """One fused step of update rule ``rule`` for many parameters of one dtype and device.

    States are uint8 codes with float32 absmax per 256-element block (8-bit; ``absmaxK`` non-empty)
    or float32 tensors (32-bit; ``absmaxK`` empty). ``qmaps``/``thresholds``/``bucket_table`` hold the
    code table and its search tables per state (an empty bucket_table tensor selects bisection).
    ``scales`` is float32 [len(params), 2]: gradient scale and update scale per tensor (None = 1).
    ``nonfinite`` (int64, one element) is increased by the number of skipped NaN/Inf gradient elements.
    """
    reference.optimizer_update_(
        rule, params, grads, [state1, state2, state3], [absmax1, absmax2, absmax3],
        qmaps, thresholds, bucket_table, hyper, scales, nonfinite,
    )  # fmt: skip


@optimizer_update_.register_fake
def _(rule, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmaps, thresholds, bucket_table,
      hyper, scales, nonfinite):  # fmt: skip
    torch._check(len(grads) == len(params), lambda: "one gradient per parameter")


@torch.library.custom_op("bnb8::optimizer_norms", mutates_args=())
def optimizer_norms(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    state1: list[Tensor],
    state2: list[Tensor],
    state3: list[Tensor],
    absmax1: list[Tensor],
    absmax2: list[Tensor],
    absmax3: list[Tensor],
    qmaps: list[Tensor],
    hyper: list[float],
    scales: Tensor | None,
) -> Tensor:
    """float32 [len(params), 2]: sum of u^2 (the update direction) and of p^2 per tensor, without
    changing anything — the first pass of max_unorm and of trust-ratio optimizers (LAMB, LARS)."""
    return reference.optimizer_norms(
        rule, params, grads, [state1, state2, state3], [absmax1, absmax2, absmax3], qmaps, hyper, scales
    )


@optimizer_norms.register_fake
def _(rule, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmaps, hyper, scales):
    device = params[0].device if params else torch.device("cpu")
    return torch.empty((len(params), 2), dtype=torch.float32, device=device)
