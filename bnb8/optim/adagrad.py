"""Adagrad with 8-bit or 32-bit state."""

from __future__ import annotations

from typing import Any

import torch

from bnb8.optim.adam import _COMMON_ARGS_DOC, fixed_variant
from bnb8.optim.optimizer import (
    Optimizer8bit,
    check_eps,
    check_lr,
    check_real,
    check_weight_decay,
    common_args,
)


class Adagrad(Optimizer8bit):
    optimizer_name = "adagrad"  # bitsandbytes' name of the algorithm
    max_states = 1
    __doc__ = """Adagrad (Duchi et al., 2011) with 8-bit (``optim_bits=8``) or 32-bit state.

    As ``torch.optim.Adagrad``: with ``g = grad + weight_decay * p``, the sum ``s += g^2`` (starting at
    ``initial_accumulator_value``) and ``p -= lr / (1 + (step - 1) * lr_decay) * g / (sqrt(s) + eps)``.
    ``state1`` = s (unsigned 8-bit map). Unlike bitsandbytes, ``lr_decay`` and
    ``initial_accumulator_value`` work.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-2).
        lr_decay (float, optional): learning rate decay (default: 0).
        weight_decay (float, optional): L2 penalty (default: 0).
        initial_accumulator_value (float, optional): starting value of the sum of squares (default: 0).
        eps (float, optional): added to the denominator for numerical stability
            (default: 1e-10).""" + _COMMON_ARGS_DOC.format(bits=32)
    torch_state_keys = {"sum": "state1"}
    bnb_group_extras = {"betas": (0.0, 0.0)}  # read (and unused) by bitsandbytes' Adagrad
    bits_positional = True  # bitsandbytes' Adagrad8bit(..., eps, optim_bits, args, ...)

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
        is_paged: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
        )
        super().__init__(params, defaults, **common_args(locals()))

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_eps(group["eps"])
        check_weight_decay(group["weight_decay"])
        check_real("lr_decay", group["lr_decay"])
        check_real("initial_accumulator_value", group["initial_accumulator_value"])
        if not group["lr_decay"] >= 0.0:
            raise ValueError(f"Invalid lr_decay value: lr_decay={group['lr_decay']!r} (expected >= 0)")
        if not group["initial_accumulator_value"] >= 0.0:
            raise ValueError(
                "Invalid initial_accumulator_value value: "
                f"initial_accumulator_value={group['initial_accumulator_value']!r} (expected >= 0)"
            )

    def _state_kinds(self, cfg):
        return [("state1", False)]  # sum of squared gradients

    @torch.no_grad()
    def _init_state(self, p: torch.Tensor, cfg: dict[str, Any]) -> None:
        fresh = "state1" not in self.state[p]
        super()._init_state(p, cfg)
        value = float(cfg["initial_accumulator_value"])
        if not fresh or value == 0.0:
            return
        state = self.state[p]
        if state["state1"].dtype == torch.uint8:  # every element = value exactly: code of 1.0 x absmax
            state["absmax1"].fill_(value)
            state["state1"].fill_(int(torch.argmax(state["qmap1"])))
        else:
            state["state1"].fill_(value)

    def _rule(self, cfg, step, quantized, new_state=False):
        clr = cfg["lr"] / (1.0 + (step - 1) * cfg["lr_decay"])
        return "adagrad", dict(step_size=clr, lr=cfg["lr"], eps=cfg["eps"], weight_decay=cfg["weight_decay"])


Adagrad8bit = fixed_variant(Adagrad, "Adagrad8bit", bits=8)
Adagrad32bit = fixed_variant(Adagrad, "Adagrad32bit", bits=32)
