"""The checked seam to the native module ``bnb8._C``.

Native code receives raw addresses, so everything that could make it read or write out of bounds is
checked here first: device, dtype, contiguity and sizes. Errors name the argument, what was expected
and what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bnb8 import _C as C

FLOAT_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

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


def dtype_code(t: torch.Tensor, name: str) -> int:
    try:
        return FLOAT_DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}") from None


def check_float_tensor(t: object, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    dtype_code(t, name)


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


def slot_table(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    states: Sequence[Sequence[torch.Tensor]],
    absmaxes: Sequence[Sequence[torch.Tensor]],
) -> list[int]:
    """The flat per-tensor address table of bnb8::TensorSlot (ext/include/bnb8/api.h)."""
    table: list[int] = []
    n_states = C.MAX_STATES
    for i, (p, g) in enumerate(zip(params, grads)):
        table += [p.data_ptr(), g.data_ptr()]
        table += [states[k][i].data_ptr() if k < len(states) and states[k] else 0 for k in range(n_states)]
        table += [
            absmaxes[k][i].data_ptr() if k < len(absmaxes) and absmaxes[k] else 0 for k in range(n_states)
        ]
        table.append(p.numel())
    return table


def num_threads() -> int:
    """The CPU kernels use as many threads as torch does (torch.set_num_threads applies to both)."""
    return torch.get_num_threads()
