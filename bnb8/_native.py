"""The checked seam to the native module ``bnb8._C``.

Native code receives raw addresses, so everything that could make it read or write out of bounds is
checked here first: device, dtype, contiguity and sizes. Errors name the argument, what was expected
and what was given.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence

import torch

from bnb8 import _C as C

FLOAT_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # quantization block sizes every kernel supports

# Fields of the C++ struct bnb8::Hyper (ext/include/bnb8/optim.h), in the order ops pass them.
HYPER_FIELDS = (
    "step_size",
    "decay",
    "weight_decay",
    "beta1",
    "beta2",
    "beta3",
    "eps",
    "bias_correction2_sqrt",
    "alpha",
    "momentum",
    "dampening",
    "lr",
    "step",
    "nesterov",
    "centered",
    "skip_zeros",
)
_INT_FIELDS = {"step", "nesterov", "centered", "skip_zeros"}
HYPER_DEFAULTS = {f: 0.0 for f in HYPER_FIELDS} | {"decay": 1.0, "bias_correction2_sqrt": 1.0, "step": 1}

# Rule name -> (index in the native rule list, number of states).
RULES = {name: (index, states) for index, (name, states) in enumerate(C.rules())}


def hyper_list(**values: float) -> list[float]:
    """Hyper-parameters as the flat list the ops take; unknown names are an error."""
    unknown = set(values) - set(HYPER_FIELDS)
    if unknown:
        raise KeyError(f"unknown hyper-parameter(s) {sorted(unknown)}; known: {HYPER_FIELDS}")
    merged = HYPER_DEFAULTS | values
    return [float(merged[f]) for f in HYPER_FIELDS]


def hyper_struct(values: Sequence[float]) -> C.Hyper:
    h = C.Hyper()
    for field, value in zip(HYPER_FIELDS, values):
        setattr(h, field, int(value) if field in _INT_FIELDS else float(value))
    return h


def rule_index(rule: str) -> int:
    try:
        return RULES[rule][0]
    except KeyError:
        raise ValueError(f"rule: unknown update rule {rule!r}; native rules: {sorted(RULES)}") from None


class DTypeError(TypeError, ValueError):
    """A tensor of a dtype bnb8 does not handle. Both a TypeError and a ValueError: bitsandbytes raises
    ValueError here, and code written for either catches it."""


def dtype_code(t: torch.Tensor, name: str) -> int:
    try:
        return FLOAT_DTYPES[t.dtype]
    except KeyError:
        raise DTypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}") from None


def check_float_tensor(t: object, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    dtype_code(t, name)
    check_has_data(t, name)


def check_has_data(t: torch.Tensor, name: str) -> None:
    if t.is_meta:
        raise ValueError(
            f"{name}: is on the meta device (a shape without data); pass a tensor on the CPU or a GPU"
        )


def check_same_device(ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    check_same_device_as(ref.device, **others)


def check_same_device_as(device: torch.device, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (like the input), got one on {t.device}")


def output_buffer(
    buf: torch.Tensor | None,
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    any_float: bool = False,
) -> torch.Tensor:
    """A fresh tensor, or the caller's buffer after checking it fits exactly.

    ``any_float=True`` accepts a buffer of any dtype the kernels write (float32, float16, bfloat16)
    instead of exactly ``dtype``.
    """
    if buf is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if not isinstance(buf, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(buf).__name__}")
    if any_float:
        dtype_code(buf, name)
    elif buf.dtype != dtype:
        raise TypeError(f"{name}: expected a {dtype} buffer, got {buf.dtype}")
    numel = 1
    for s in shape:
        numel *= s
    if buf.numel() != numel or buf.device != torch.device(device) or not buf.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous buffer of {numel} elements on {device}, got "
            f"{buf.numel()} elements on {buf.device}" + ("" if buf.is_contiguous() else " (not contiguous)")
        )
    return buf.view(shape)


def address(t: torch.Tensor | None) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def state_addresses(tensors: Sequence[torch.Tensor | None]) -> list[int]:
    """One address per state (qmaps, thresholds, bucket tables), padded with 0 to C.MAX_STATES."""
    return [address(t) for t in tensors] + [0] * (C.MAX_STATES - len(tensors))


def slot_table(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[Sequence[torch.Tensor]],
    absmaxes: Sequence[Sequence[torch.Tensor]],
) -> list[int]:
    """The flat per-tensor address table of bnb8::TensorSlot (ext/include/bnb8/api.h)."""

    def addresses(tensors: Sequence[Sequence[torch.Tensor]]) -> list:
        # one column per slot; an absent state is address 0 (built column by column: this runs for
        # every parameter at every step)
        return [
            [t.data_ptr() for t in tensors[k]] if k < len(tensors) and tensors[k] else itertools.repeat(0)
            for k in range(C.MAX_STATES)
        ]

    columns = [
        [p.data_ptr() for p in params],
        [g.data_ptr() for g in grads],
        *addresses(states),
        *addresses(absmaxes),
        [p.numel() for p in params],
    ]
    return [address for row in zip(*columns) for address in row]


def num_threads() -> int:
    """The CPU kernels use as many threads as torch does (torch.set_num_threads applies to both)."""
    return torch.get_num_threads()


# ---------------------------------------------------------------------------- raw op arguments
# The ops of bnb8._ops are reachable as torch.ops.bnb8.*; their native kernels (bnb8.backends.cpu,
# bnb8.backends.cuda) run these checks first, so a wrong buffer is an error, never a stray write.


def check_on(device: torch.device, name: str, t: torch.Tensor | None) -> None:
    """``t`` (if given) lies on ``device`` and is contiguous: kernels read raw memory."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(
            f"{name}: expected a tensor on {device} (like the other arguments), got one on {t.device}"
        )
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (the kernels read raw memory)")


def check_no_overlap(**tensors: torch.Tensor) -> None:
    """No two of these (contiguous) tensors share memory: a kernel writing one would corrupt another."""
    spans = [
        (name, t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
        for name, t in tensors.items()
        if t.numel() and t.device.type != "meta"
    ]
    for i, (a, a0, a1) in enumerate(spans):
        for b, b0, b1 in spans[i + 1 :]:
            if a0 < b1 and b0 < a1:
                raise ValueError(f"{a} and {b}: share memory; pass separate buffers (outputs are written)")


def check_buffer(device: torch.device, name: str, t: torch.Tensor, dtype: torch.dtype, numel: int) -> None:
    """``t`` is a contiguous ``numel``-element ``dtype`` tensor on ``device``."""
    check_on(device, name, t)
    if t.dtype != dtype or t.numel() != numel:
        raise ValueError(f"{name}: expected {numel} elements of {dtype}, got {t.numel()} of {t.dtype}")


def check_search_tables(
    device: torch.device, name: str, thresholds: torch.Tensor, bucket_table: torch.Tensor | None
) -> None:
    """The tables of ``bnb8.functional.code_search_tables``: 256 float32 thresholds (the last one +inf)
    and NUM_BUCKETS int32 bucket entries (lo << 16 | place: quantize.h), or none (an empty tensor / None:
    bisection)."""
    check_buffer(device, f"{name} thresholds", thresholds, torch.float32, 256)
    if bucket_table is not None and bucket_table.numel() != 0:
        check_buffer(device, f"{name} bucket_table", bucket_table, torch.int32, C.NUM_BUCKETS)


def check_blocksize(blocksize: int) -> int:
    """``blocksize`` as a Python int (numpy integers too), or ValueError."""
    if (
        isinstance(blocksize, bool)
        or not isinstance(blocksize, numbers.Integral)
        or blocksize not in BLOCKSIZES
    ):
        raise ValueError(f"blocksize: expected one of {BLOCKSIZES}, got {blocksize!r}")
    return int(blocksize)


def check_quantize(A: torch.Tensor, thresholds: torch.Tensor, bucket_table: torch.Tensor | None, blocksize: int,
                   codes: torch.Tensor, absmax: torch.Tensor) -> None:  # fmt: skip
    check_blocksize(blocksize)
    check_on(A.device, "A", A)
    dtype_code(A, "A")
    check_search_tables(A.device, "code", thresholds, bucket_table)
    check_buffer(A.device, "codes", codes, torch.uint8, A.numel())
    check_buffer(A.device, "absmax", absmax, torch.float32, (A.numel() + blocksize - 1) // blocksize)


def check_dequantize(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                     out: torch.Tensor) -> None:  # fmt: skip
    check_blocksize(blocksize)
    check_on(out.device, "out", out)
    dtype_code(out, "out")
    check_buffer(out.device, "codes", codes, torch.uint8, out.numel())
    check_buffer(out.device, "absmax", absmax, torch.float32, (out.numel() + blocksize - 1) // blocksize)
    check_buffer(out.device, "code", code, torch.float32, 256)


def check_update(rule: str, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                 states: Sequence[Sequence[torch.Tensor]], absmaxes: Sequence[Sequence[torch.Tensor]],
                 qmaps: Sequence[torch.Tensor], thresholds: Sequence[torch.Tensor] | None,
                 bucket_table: Sequence[torch.Tensor], scales: torch.Tensor | None,
                 nonfinite: torch.Tensor | None) -> bool:  # fmt: skip
    """Checks a multi-tensor update (``thresholds=None``: the norms pass, which only decodes) and
    returns whether its states are 8-bit. ``states``/``absmaxes`` hold the non-empty lists only."""
    device = params[0].device
    rule_index(rule)  # a clear error for an unknown rule
    n_states = RULES[rule][1]
    if len(grads) != len(params):
        raise ValueError(f"grads: expected one gradient per parameter ({len(params)}), got {len(grads)}")
    if len(states) != n_states:
        raise ValueError(f"rule {rule!r} needs {n_states} state lists, got {len(states)}")
    quantized = states[0][0].dtype == torch.uint8
    if quantized:
        if len(absmaxes) != n_states:
            raise ValueError(
                f"rule {rule!r} with 8-bit states needs {n_states} absmax lists, got {len(absmaxes)}"
            )
        if len(qmaps) < n_states or (thresholds is not None and len(thresholds) < n_states):
            raise ValueError(f"rule {rule!r} with 8-bit states needs {n_states} qmaps and thresholds")
        for k in range(n_states):
            check_buffer(device, f"qmaps[{k}]", qmaps[k], torch.float32, 256)
            if thresholds is not None:
                check_search_tables(
                    device,
                    f"state {k + 1}",
                    thresholds[k],
                    bucket_table[k] if k < len(bucket_table) else None,
                )
    dtype = params[0].dtype
    dtype_code(params[0], "params[0]")
    want = torch.uint8 if quantized else torch.float32
    for i, (p, g) in enumerate(zip(params, grads)):
        check_on(device, f"params[{i}]", p)
        check_on(device, f"grads[{i}]", g)
        if p.dtype != dtype or g.dtype != dtype:
            raise TypeError(
                f"params[{i}]/grads[{i}]: expected {dtype} like params[0], got {p.dtype}/{g.dtype}"
            )
        n = p.numel()
        if g.numel() != n:
            raise ValueError(f"grads[{i}]: expected {n} elements like params[{i}], got {g.numel()}")
        for k in range(n_states):
            if len(states[k]) != len(params):
                raise ValueError(
                    f"state{k + 1}: expected one tensor per parameter ({len(params)}), got {len(states[k])}"
                )
            check_buffer(device, f"state{k + 1}[{i}]", states[k][i], want, n)
            if quantized:
                if len(absmaxes[k]) != len(params):
                    raise ValueError(
                        f"absmax{k + 1}: expected one tensor per parameter ({len(params)}), got {len(absmaxes[k])}"
                    )
                check_buffer(
                    device,
                    f"absmax{k + 1}[{i}]",
                    absmaxes[k][i],
                    torch.float32,
                    (n + C.OPTIM_BLOCK - 1) // C.OPTIM_BLOCK,
                )
    if scales is not None:
        check_buffer(device, "scales", scales, torch.float32, 2 * len(params))
    if nonfinite is not None:
        check_buffer(device, "nonfinite", nonfinite, torch.int64, 1)
    return quantized
