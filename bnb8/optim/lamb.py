"""LAMB with 8-bit or 32-bit state: a real layer-wise trust ratio, also in 8-bit."""

from __future__ import annotations

import math
from typing import Any

import torch

from bnb8.optim.adam import _COMMON_ARGS_DOC, fixed_variant
from bnb8.optim.optimizer import (
    Optimizer8bit,
    as_tuple,
    check_betas,
    check_eps,
    check_lr,
    check_weight_decay,
    common_args,
)


class LAMB(Optimizer8bit):
    optimizer_name = "lamb"  # bitsandbytes' name of the algorithm
    max_states = 2
    __doc__ = """LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning"), 8-bit or 32-bit state.

    Per parameter tensor: Adam's direction plus weight decay, ``u = m_hat / (sqrt(v_hat) + eps) +
    weight_decay * p``, and ``p -= lr * ||p|| / ||u|| * u`` (trust ratio 1 where ``||p||`` or ``||u||`` is
    0). Both norms come from a first pass over the same (dequantized) state, so the ratio is exact in
    8-bit too; bitsandbytes' 8-bit LAMB runs as plain Adam. ``adam_w_mode=False`` adds the decay to the
    gradient (L2) instead of to ``u``. ``state1`` = m (signed 8-bit map), ``state2`` = v (unsigned).

    Arguments and defaults as ``bitsandbytes.optim.LAMB``, except ``block_wise`` (bnb8 always
    quantizes in blocks; its default is True here).

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-3).
        bias_correction (bool, optional): Adam's bias correction of m and v (default: True).
        betas (Tuple[float, float], optional): (default: (0.9, 0.999)).
        eps (float, optional): (default: 1e-8).
        weight_decay (float, optional): (default: 0).
        amsgrad (bool, optional): must be False (default: False).
        adam_w_mode (bool, optional): decoupled weight decay inside ``u`` (default: True).
        max_unorm (float, optional): caps the trust-ratio-scaled update at ``max_unorm * ||p||``; the
            default 1.0 never binds (the trust ratio makes it exactly ``||p||``); 0 disables
            (default: 1.0).""" + _COMMON_ARGS_DOC.format(bits=32)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        adam_w_mode: bool = True,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        max_unorm: float = 1.0,
        *,
        skip_zeros: bool = False,
        maximize: bool = False,
        is_paged: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            bias_correction=bias_correction,
            betas=as_tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            adam_w_mode=adam_w_mode,
        )
        super().__init__(params, defaults, **common_args(locals()))

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_eps(group["eps"])
        check_weight_decay(group["weight_decay"])
        check_betas(group["betas"])
        if group["amsgrad"]:
            raise ValueError(
                "amsgrad=True is not supported by LAMB (bitsandbytes ignores it); use amsgrad=False"
            )

    def _state_kinds(self, cfg):
        return [("state1", True), ("state2", False)]

    def _needs_norms(self, cfg: dict[str, Any]) -> bool:
        return True  # the trust ratio

    def _bias_correction1(self, cfg: dict[str, Any], step: int) -> float:
        return 1.0 - cfg["betas"][0] ** step if cfg["bias_correction"] else 1.0

    def _rule(self, cfg, step, quantized, new_state=False):
        beta1, beta2 = cfg["betas"]
        wd = cfg["weight_decay"]
        # The kernel's u is (1 - beta1^step) times the paper's (bias correction 1 folded out; the trust
        # ratio does not see the scale), so the decay inside u is scaled alike.
        hyper = dict(
            step_size=cfg["lr"],
            lr=cfg["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=cfg["eps"],
            step=step,
            bias_correction2_sqrt=math.sqrt(1.0 - beta2**step) if cfg["bias_correction"] else 1.0,
            weight_decay=0.0 if cfg["adam_w_mode"] else wd,
            alpha=wd * self._bias_correction1(cfg, step) if cfg["adam_w_mode"] else 0.0,
        )
        return "lamb", hyper

    def _update_scale(self, cfg, unorm, pnorm, hyper):
        trust = torch.where((unorm > 0) & (pnorm > 0), pnorm / unorm, torch.zeros_like(unorm))
        if cfg["max_unorm"] > 0:
            trust = trust * min(1.0, cfg["max_unorm"])
        # Where the ratio is undefined, it is 1 for the paper's u: 1 / (1 - beta1^step) for the kernel's.
        fallback = 1.0 / self._bias_correction1(cfg, int(hyper["step"]))
        return torch.where((unorm > 0) & (pnorm > 0), trust, torch.full_like(unorm, fallback))


LAMB8bit = fixed_variant(LAMB, "LAMB8bit", bits=8)
LAMB32bit = fixed_variant(LAMB, "LAMB32bit", bits=32)
