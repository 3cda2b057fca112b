"""RMSprop with 8-bit or 32-bit state."""

from __future__ import annotations

from typing import Any

from bnb8.optim.adam import _COMMON_ARGS_DOC, fixed_variant
from bnb8.optim.optimizer import (
    Optimizer8bit,
    check_eps,
    check_lr,
    check_real,
    check_weight_decay,
    common_args,
)


class RMSprop(Optimizer8bit):
    optimizer_name = "rmsprop"  # bitsandbytes' name of the algorithm
    __doc__ = """RMSprop (Hinton, 2012) with 8-bit (``optim_bits=8``) or 32-bit state.

    As ``torch.optim.RMSprop``: with ``g = grad + weight_decay * p``, ``v = alpha * v + (1 - alpha) * g^2``;
    ``centered`` also tracks ``m = alpha * m + (1 - alpha) * g`` and divides by ``sqrt(v - m^2) + eps``
    (clamped at 0) instead of ``sqrt(v) + eps``; with ``momentum > 0`` a buffer
    ``b = momentum * b + g / denominator`` is the update, otherwise ``g / denominator`` is. States:
    ``state1`` = v (unsigned 8-bit map), then the momentum buffer, then m (signed maps), each only when
    used. Unlike bitsandbytes, ``momentum`` and ``centered`` work.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-2).
        alpha (float, optional): smoothing constant (default: 0.99).
        eps (float, optional): added to the denominator for numerical stability (default: 1e-8).
        weight_decay (float, optional): L2 penalty (default: 0).
        momentum (float, optional): momentum factor (default: 0).
        centered (bool, optional): normalise by the estimated variance of the gradient
            (default: False).""" + _COMMON_ARGS_DOC.format(bits=32)
    torch_state_keys = {"square_avg": "state1", "momentum_buffer": "state2", "grad_avg": "state3"}
    bnb_group_aliases = {"alpha": ("betas", 0), "momentum": ("betas", 1)}  # bitsandbytes: (alpha, momentum)

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
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
        capturable: bool = False,
        differentiable: bool = False,
        is_paged: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered
        )
        super().__init__(params, defaults, **common_args(locals()))

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_eps(group["eps"])
        check_weight_decay(group["weight_decay"])
        check_real("momentum", group["momentum"])
        check_real("alpha", group["alpha"])
        if not group["momentum"] >= 0.0:
            raise ValueError(f"Invalid momentum value: momentum={group['momentum']!r} (expected >= 0)")
        if not group["alpha"] >= 0.0:
            raise ValueError(f"Invalid alpha value: alpha={group['alpha']!r} (expected >= 0)")

    def _state_kinds(self, cfg):
        # One slot per meaning, whichever options are on (as torch's named states): switching momentum
        # or centered between steps never hands one buffer to another's role.
        kinds = [("state1", False)]  # running mean of g^2
        if cfg["momentum"] > 0:
            kinds.append(("state2", True))  # momentum buffer
        if cfg["centered"]:
            kinds.append(("state3", True))  # running mean of g
        return kinds

    def _may_start_late(self, key):
        return key != "state1"  # buffers of options switched on later start at zero, as in torch

    def _rule(self, cfg, step, quantized, new_state=False):
        rule = (
            "rmsprop"
            + ("_centered" if cfg["centered"] else "")
            + ("_momentum" if cfg["momentum"] > 0 else "")
        )
        hyper = dict(
            step_size=cfg["lr"],
            lr=cfg["lr"],
            alpha=cfg["alpha"],
            eps=cfg["eps"],
            weight_decay=cfg["weight_decay"],
            momentum=cfg["momentum"],
            centered=int(bool(cfg["centered"])),
        )
        return rule, hyper


RMSprop8bit = fixed_variant(RMSprop, "RMSprop8bit", bits=8)
RMSprop32bit = fixed_variant(RMSprop, "RMSprop32bit", bits=32)
