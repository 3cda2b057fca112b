"""AdEMAMix with 8-bit or 32-bit state (both momenta quantized), and the paged variants."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from bnb8.optim.adam import _COMMON_ARGS_DOC, fixed_variant
from bnb8.optim.optimizer import (
    QUANT_STATE_KEY,
    Optimizer8bit,
    as_tuple,
    check_betas,
    check_eps,
    check_lr,
    check_real,
    check_weight_decay,
    common_args,
)


def _check_period(name: str, value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0
    ):
        raise ValueError(f"{name}: expected None or a positive number of steps (int), got {value!r}")


class AdEMAMix(Optimizer8bit):
    optimizer_name = "ademamix"  # bitsandbytes' name of the algorithm
    __doc__ = """AdEMAMix (Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster, Older"),
    8-bit or 32-bit state.

    Adam with a second, slow momentum: ``m1 = b1 m1 + (1 - b1) g``, ``m2 = b3 m2 + (1 - b3) g``,
    ``nu = b2 nu + (1 - b2) g^2`` and ``p = p (1 - lr wd) - lr (m1_hat + alpha m2) / (sqrt(nu_hat) + eps)``
    with bias-corrected ``m1_hat``, ``nu_hat``. With ``t_alpha``/``t_beta3`` the paper's warm-up
    schedulers ramp alpha linearly and beta3 from beta1 to beta3 over that many steps. States:
    ``state1`` = m1, ``state2`` = nu, ``state3`` = m2 (signed, unsigned, signed 8-bit maps).
    bitsandbytes' state dicts (both momenta stacked in ``state1``) load too.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float, float], optional): (b1, b2, b3) for m1, nu and m2
            (default: (0.9, 0.999, 0.9999)).
        alpha (float, optional): weight of the slow momentum (default: 5.0).
        t_alpha (int, optional): alpha warm-up steps; None = no warm-up (default: None).
        t_beta3 (int, optional): beta3 warm-up steps; None = no warm-up (default: None).
        eps (float, optional): (default: 1e-8).
        weight_decay (float, optional): decoupled weight decay (default: 1e-2).""" + _COMMON_ARGS_DOC.format(
        bits=32
    )

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        optim_bits: int = 32,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
        *,
        args: Any = None,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=as_tuple(betas),
            alpha=alpha,
            t_alpha=t_alpha,
            t_beta3=t_beta3,
            eps=eps,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults, **common_args(locals()))

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_eps(group["eps"])
        check_weight_decay(group["weight_decay"])
        check_betas(group["betas"], count=3)
        check_real("alpha", group["alpha"])
        if not group["alpha"] >= 0.0:
            raise ValueError(f"Invalid alpha value: alpha={group['alpha']!r} (expected >= 0)")
        _check_period("t_alpha", group["t_alpha"])
        _check_period("t_beta3", group["t_beta3"])
        if group["t_beta3"] is not None and group["betas"][0] == 0.0:
            raise ValueError(
                "t_beta3: the beta3 scheduler starts at betas[0], which must be > 0; got betas[0]=0.0"
            )

    def _state_kinds(self, cfg):
        return [("state1", True), ("state2", False), ("state3", True)]

    @staticmethod
    def schedules(cfg: dict[str, Any], step: int) -> tuple[float, float]:
        """(alpha_t, beta3_t) at ``step`` (the paper's warm-up schedulers, as in bitsandbytes)."""
        beta1, _, beta3 = cfg["betas"]
        alpha, t_alpha, t_beta3 = cfg["alpha"], cfg["t_alpha"], cfg["t_beta3"]
        alpha_t = alpha if t_alpha is None else min(step * alpha / t_alpha, alpha)
        if t_beta3 is None or beta3 == 0.0:
            return alpha_t, beta3
        ln1, ln3, s = math.log(beta1), math.log(beta3), step / t_beta3
        return alpha_t, min(math.exp(ln1 * ln3 / ((1.0 - s) * ln3 + s * ln1)), beta3)

    def _rule(self, cfg, step, quantized, new_state=False):
        beta1, beta2, _ = cfg["betas"]
        alpha_t, beta3_t = self.schedules(cfg, step)
        bc1 = 1.0 - beta1**step
        lr = cfg["lr"]
        hyper = dict(
            step_size=lr / bc1,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            beta3=beta3_t,
            alpha=alpha_t * bc1,  # (m1 / bc1 + alpha_t m2) = (m1 + alpha_t bc1 m2) / bc1
            eps=cfg["eps"],
            step=step,
            bias_correction2_sqrt=math.sqrt(1.0 - beta2**step),
            decay=1.0 - lr * cfg["weight_decay"],
        )
        return "ademamix", hyper

    def _convert_saved_state(self, saved: dict[str, Any], p):
        """bitsandbytes stacks (m1, m2) in ``state1`` (shape (2, *p.shape)) and ``absmax1`` (2, blocks);
        bnb8 keeps them as state1 and state3."""
        s1 = saved.get("state1")
        if "state3" in saved or not isinstance(s1, torch.Tensor) or s1.numel() != 2 * p.numel():
            return saved
        out = dict(saved)
        s1 = s1.reshape(2, -1)
        out["state1"], out["state3"] = s1[0].reshape(p.shape), s1[1].reshape(p.shape)
        absmax = saved.get("absmax1")
        if s1.dtype == torch.uint8 and isinstance(absmax, torch.Tensor) and absmax.numel() % 2 == 0:
            absmax = absmax.reshape(2, -1)
            out["absmax1"], out["absmax3"] = absmax[0], absmax[1]
            if "qmap1" in saved:
                out["qmap3"] = saved["qmap1"]
        return out

    def _bitsandbytes_param_state(self, param_state):
        """The way back: m1 and m2 stacked in ``state1``, their absmax in ``absmax1``."""
        quant = param_state.get(QUANT_STATE_KEY)
        if not quant or "state3" not in quant:
            return param_state
        quant = dict(quant)
        quant["state1"] = torch.stack([quant["state1"], quant.pop("state3")])
        if "absmax3" in quant:
            quant["absmax1"] = torch.stack([quant["absmax1"], quant.pop("absmax3")])
        quant.pop("qmap3", None)  # the same signed map as qmap1
        return {**param_state, QUANT_STATE_KEY: quant}


AdEMAMix8bit = fixed_variant(AdEMAMix, "AdEMAMix8bit", bits=8)
AdEMAMix32bit = fixed_variant(AdEMAMix, "AdEMAMix32bit", bits=32)
PagedAdEMAMix = fixed_variant(AdEMAMix, "PagedAdEMAMix", paged=True)
PagedAdEMAMix8bit = fixed_variant(AdEMAMix, "PagedAdEMAMix8bit", bits=8, paged=True)
PagedAdEMAMix32bit = fixed_variant(AdEMAMix, "PagedAdEMAMix32bit", bits=32, paged=True)
