"""Lion with 8-bit or 32-bit state (and the paged variants)."""

from __future__ import annotations

from typing import Any

from bnb8.optim.adam import _COMMON_ARGS_DOC, fixed_variant
from bnb8.optim.optimizer import (
    Optimizer8bit,
    as_tuple,
    check_betas,
    check_lr,
    check_weight_decay,
    common_args,
)


class Lion(Optimizer8bit):
    optimizer_name = "lion"  # bitsandbytes' name of the algorithm
    max_states = 1
    __doc__ = """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), 8-bit or 32-bit state.

    ``u = sign(beta1 * m + (1 - beta1) * g)``, ``p = p * (1 - lr * weight_decay) - lr * u``, then
    ``m = beta2 * m + (1 - beta2) * g``. ``state1`` = m (signed 8-bit map). Arguments and defaults as
    ``bitsandbytes.optim.Lion``; weight decay is decoupled, as in the paper.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-4).
        betas (Tuple[float, float], optional): interpolation for the update and decay of the
            momentum (default: (0.9, 0.99)).
        weight_decay (float, optional): decoupled weight decay coefficient
            (default: 0).""" + _COMMON_ARGS_DOC.format(bits=32)
    bnb_group_extras = {"eps": 0.0}  # read (and unused) by bitsandbytes' Lion

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        is_paged: bool = False,
        *,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        maximize: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=as_tuple(betas), weight_decay=weight_decay)
        super().__init__(params, defaults, **common_args(locals()))

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_weight_decay(group["weight_decay"])
        check_betas(group["betas"])

    def _state_kinds(self, cfg):
        return [("state1", True)]  # momentum

    def _rule(self, cfg, step, quantized, new_state=False):
        beta1, beta2 = cfg["betas"]
        lr = cfg["lr"]
        return "lion", dict(
            step_size=lr, lr=lr, beta1=beta1, beta2=beta2, decay=1.0 - lr * cfg["weight_decay"]
        )


Lion8bit = fixed_variant(Lion, "Lion8bit", bits=8)
Lion32bit = fixed_variant(Lion, "Lion32bit", bits=32)
PagedLion = fixed_variant(Lion, "PagedLion", paged=True)
PagedLion8bit = fixed_variant(Lion, "PagedLion8bit", bits=8, paged=True)
PagedLion32bit = fixed_variant(Lion, "PagedLion32bit", bits=32, paged=True)
