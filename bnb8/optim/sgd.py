"""SGD with momentum (8-bit or 32-bit momentum buffer), and LARS."""

from __future__ import annotations

from typing import Any

from bnb8.optim.adam import _COMMON_ARGS_DOC, fixed_variant
from bnb8.optim.optimizer import Optimizer8bit, check_lr, check_real, check_weight_decay, common_args


def check_momentum(group: dict[str, Any]) -> None:
    check_real("momentum", group["momentum"])
    check_real("dampening", group["dampening"])
    if not group["momentum"] >= 0.0:
        raise ValueError(f"Invalid momentum value: momentum={group['momentum']!r} (expected >= 0)")
    if not group["dampening"] >= 0.0:
        raise ValueError(f"Invalid dampening value: dampening={group['dampening']!r} (expected >= 0)")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(
            "Nesterov momentum requires a momentum and zero dampening: got nesterov=True with "
            f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
        )


class SGD(Optimizer8bit):
    optimizer_name = "momentum"  # bitsandbytes' name of the algorithm
    max_states = 1
    __doc__ = """Stochastic gradient descent with momentum, 8-bit (``optim_bits=8``) or 32-bit buffer.

    As ``torch.optim.SGD``: with ``g = grad + weight_decay * p``, the buffer is ``b = g`` on the first
    step and ``b = momentum * b + (1 - dampening) * g`` after; the update is ``p -= lr * b`` (or
    ``lr * (g + momentum * b)`` with ``nesterov``). With ``momentum=0`` there is no state at all (and
    nothing to quantize: ``optim_bits`` changes nothing); that step runs in plain torch.
    Unlike bitsandbytes, ``momentum=0`` and ``dampening`` work.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-3).
        momentum (float, optional): momentum factor (default: 0).
        dampening (float, optional): dampening for momentum (default: 0).
        weight_decay (float, optional): L2 penalty (default: 0).
        nesterov (bool, optional): Nesterov momentum; needs momentum > 0 and dampening = 0
            (default: False).""" + _COMMON_ARGS_DOC.format(bits=32)
    torch_state_keys = {"momentum_buffer": "state1"}
    # bitsandbytes: SGD's group holds betas = (momentum, dampening) and eps
    bnb_group_aliases = {"momentum": ("betas", 0), "dampening": ("betas", 1)}
    bnb_group_extras = {"eps": 0.0}

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
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
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
        )
        super().__init__(params, defaults, **common_args(locals()))

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_weight_decay(group["weight_decay"])
        check_momentum(group)

    def _state_kinds(self, cfg):
        return [("state1", True)] if cfg["momentum"] != 0 else []

    def _rule(self, cfg, step, quantized, new_state=False):
        if cfg["momentum"] == 0:
            return "sgd_plain", dict(step_size=cfg["lr"], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        hyper = dict(
            step_size=cfg["lr"],
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            momentum=cfg["momentum"],
            # torch starts the buffer at the gradient itself: from the zero state, no dampening on the
            # buffer's first update (step 1, or the step after momentum was switched on).
            dampening=0.0 if new_state else cfg["dampening"],
            nesterov=int(bool(cfg["nesterov"])),
        )
        return "sgd", hyper

    def _may_start_late(self, key):
        return True  # the momentum buffer: momentum switched on later starts it, as in torch


class LARS(SGD):
    optimizer_name = "lars"  # bitsandbytes' name of the algorithm
    __doc__ = """LARS as in bitsandbytes: SGD with momentum whose update is scaled per tensor so that
    ``||u|| <= max_unorm * ||p||`` (a layer-wise trust ratio; You et al., 2017), 8-bit or 32-bit buffer.

    Arguments and defaults as ``bitsandbytes.optim.LARS`` (``max_unorm=0.02``); momentum, dampening,
    weight_decay and nesterov as :class:`SGD`. Unlike bitsandbytes, the trust ratio also applies
    to 8-bit state, and ``momentum=0`` works.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float): learning rate.
        momentum (float, optional): (default: 0).
        dampening (float, optional): (default: 0).
        weight_decay (float, optional): L2 penalty (default: 0).
        nesterov (bool, optional): (default: False).
        optim_bits, args, min_8bit_size, percentile_clipping: as :class:`SGD`.
        max_unorm (float, optional): the trust ratio bound; 0 turns LARS into plain SGD (default: 0.02).
        block_wise, skip_zeros, maximize: as :class:`SGD` (keyword-only here)."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        max_unorm: float = 0.02,
        *,
        block_wise: bool = True,
        skip_zeros: bool = False,
        maximize: bool = False,
        is_paged: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            optim_bits,
            args,
            min_8bit_size,
            percentile_clipping,
            block_wise,
            max_unorm,
            skip_zeros,
            maximize=maximize,
            is_paged=is_paged,
        )


class PytorchLARS(LARS):
    """bitsandbytes' ``PytorchLARS`` (its pure-torch reference LARS): :class:`LARS` with float32 state and
    that class's arguments and defaults (``lr=0.01``; ``max_unorm`` right after ``nesterov``)."""

    def __init__(
        self,
        params,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        max_unorm: float = 0.02,
    ) -> None:
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, max_unorm=max_unorm)


SGD8bit = fixed_variant(SGD, "SGD8bit", bits=8)
SGD32bit = fixed_variant(SGD, "SGD32bit", bits=32)
LARS8bit = fixed_variant(LARS, "LARS8bit", bits=8)
LARS32bit = fixed_variant(LARS, "LARS32bit", bits=32)
