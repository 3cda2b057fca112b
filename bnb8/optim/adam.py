"""Adam and AdamW with 8-bit or 32-bit state (and their paged variants)."""

from __future__ import annotations

import inspect
import math
from typing import Any

from bnb8.optim.optimizer import (
    Optimizer8bit,
    as_tuple,
    check_betas,
    check_eps,
    check_lr,
    check_weight_decay,
    common_args,
)

_COMMON_ARGS_DOC = """
        optim_bits (int, optional): 8 for block-wise 8-bit state, 32 for float32 state (default: {bits}).
        args (object, optional): a bitsandbytes-style config object whose ``optim_bits``,
            ``min_8bit_size``, ``percentile_clipping``, ``max_unorm``, ``skip_zeros``, ``is_paged``
            attributes replace the arguments of the same name (default: None).
        min_8bit_size (int, optional): parameters with fewer elements keep float32 state (default: 4096).
        percentile_clipping (int, optional): clip the gradient norm to this percentile of the last 100
            norms of the parameter; 100 disables (default: 100).
        block_wise (bool, optional): must be True; bnb8 always quantizes in blocks of 256 (default: True).
        max_unorm (float, optional): scale the update so that ||delta p|| / lr <= max_unorm * ||p||
            (for Adam: the bias-corrected m_hat / (sqrt(v_hat) + eps)); 0 disables (default: 0.0).
        skip_zeros (bool, optional): leave elements whose gradient is exactly 0 untouched (default: False).
        is_paged (bool, optional): keep large states in CUDA unified memory that can spill to host RAM;
            a no-op on the CPU (default: False).
        maximize (bool, optional): maximize the objective instead of minimizing (default: False).
        foreach, fused (bool, optional): accepted for drop-in compatibility with ``torch.optim``;
            bnb8 always runs its fused multi-tensor kernel (default: None).
        capturable, differentiable (bool, optional): must be False (default: False)."""


class _AdamBase(Optimizer8bit):
    optimizer_name = "adam"  # bitsandbytes' name of the algorithm
    bits_positional = True  # bitsandbytes' Adam8bit(..., amsgrad, optim_bits, ...)
    torch_state_keys = {"exp_avg": "state1", "exp_avg_sq": "state2", "max_exp_avg_sq": "state3"}

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        is_paged: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        # decoupled_weight_decay: as torch.optim.Adam's, a group setting (AdamW's groups hold True).
        defaults = dict(
            lr=lr,
            betas=as_tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults, **common_args(locals()))

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_eps(group["eps"])
        check_weight_decay(group["weight_decay"])
        check_betas(group["betas"])
        if group.get("amsgrad") and group["optim_bits"] == 8:
            raise ValueError(
                "amsgrad=True is implemented with 32-bit state only: pass optim_bits=32 (or use Adam32bit)"
            )

    def _state_kinds(self, cfg):
        kinds = [("state1", True), ("state2", False)]
        if cfg["amsgrad"]:
            kinds.append(("state3", None))  # running max of the second moment, always float32
        return kinds

    def _rule(self, cfg, step, quantized, new_state=False):
        beta1, beta2 = cfg["betas"]
        lr, wd, decoupled = cfg["lr"], cfg["weight_decay"], cfg["decoupled_weight_decay"]
        hyper = dict(
            beta1=beta1,
            beta2=beta2,
            eps=cfg["eps"],
            lr=lr,
            step=step,
            step_size=lr / (1.0 - beta1**step),
            bias_correction2_sqrt=math.sqrt(1.0 - beta2**step),
            decay=1.0 - lr * wd if decoupled else 1.0,
            weight_decay=0.0 if decoupled else wd,
        )
        return ("adam_amsgrad" if cfg["amsgrad"] else "adam"), hyper


class Adam(_AdamBase):
    __doc__ = """Adam (Kingma & Ba, 2015) with 8-bit (``optim_bits=8``) or 32-bit optimizer state.

    Arguments and defaults as ``torch.optim.Adam``: ``weight_decay`` is coupled L2 regularisation
    (added to the gradient) unless ``decoupled_weight_decay=True`` (then it is :class:`AdamW`).
    bitsandbytes' ``Adam`` decays decoupled: pass ``decoupled_weight_decay=True`` to match it.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float], optional): coefficients of the running averages of the gradient
            and its square (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator for numerical stability (default: 1e-8).
        weight_decay (float, optional): L2 penalty (default: 0).
        amsgrad (bool, optional): the AMSGrad variant (Reddi et al., 2018); 32-bit state only
            (default: False).
        decoupled_weight_decay (bool, optional): keyword-only; apply ``weight_decay`` to the parameter
            as AdamW does (default: False).""" + _COMMON_ARGS_DOC.format(bits=32)


class AdamW(_AdamBase):
    __doc__ = """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, 8-bit or 32-bit state.

    Arguments and defaults as ``torch.optim.AdamW`` (``weight_decay=1e-2``).

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float], optional): (default: (0.9, 0.999)).
        eps (float, optional): (default: 1e-8).
        weight_decay (float, optional): decoupled weight decay coefficient (default: 1e-2).
        amsgrad (bool, optional): 32-bit state only (default: False).""" + _COMMON_ARGS_DOC.format(bits=32)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *args, **kwargs):
        if "decoupled_weight_decay" in kwargs:  # as torch.optim.AdamW: always decoupled
            raise TypeError("AdamW got an unexpected keyword argument 'decoupled_weight_decay' (always True)")
        super().__init__(params, lr, betas, eps, weight_decay, *args, decoupled_weight_decay=True, **kwargs)


def _with_defaults(
    signature: inspect.Signature, drop: tuple[str, ...] = (), **defaults: Any
) -> inspect.Signature:
    """``signature`` without the parameters in ``drop`` and with new defaults: the signature a
    forwarding ``__init__`` shows to ``inspect`` (tools such as jsonargparse or litgpt keep only the
    arguments it names)."""
    kept = [
        p.replace(default=defaults.get(p.name, p.default))
        for p in signature.parameters.values()
        if p.name not in drop
    ]
    return signature.replace(parameters=kept)


AdamW.__init__.__signature__ = _with_defaults(
    inspect.signature(_AdamBase.__init__), drop=("decoupled_weight_decay",), weight_decay=1e-2
)


def fixed_variant(base: type, name: str, bits: int | None = None, paged: bool = False) -> type:
    """A subclass of ``base`` with optim_bits and/or is_paged fixed (bitsandbytes' ``Adam8bit``,
    ``PagedAdamW32bit``, ...). Passing a different value for a fixed argument is an error."""
    fixed = {"is_paged": paged} | ({} if bits is None else {"optim_bits": bits})

    # The first __init__ up the MRO that names every argument (AdamW's forwards *args to _AdamBase's).
    signature = next(
        sig
        for sig in (
            inspect.signature(k.__dict__["__init__"]) for k in base.__mro__ if "__init__" in k.__dict__
        )
        if not any(a.kind is inspect.Parameter.VAR_POSITIONAL for a in sig.parameters.values())
    )
    if bits is not None and not base.bits_positional:
        # bitsandbytes' SGD8bit, Lion8bit, ... have no optim_bits slot: the arguments after it shift left.
        kept = [a for a in signature.parameters.values() if a.name != "optim_bits"]
        cut = next((i for i, a in enumerate(kept) if a.kind is inspect.Parameter.KEYWORD_ONLY), len(kept))
        bits_arg = signature.parameters["optim_bits"].replace(kind=inspect.Parameter.KEYWORD_ONLY)
        signature = signature.replace(parameters=[*kept[:cut], bits_arg, *kept[cut:]])

    def __init__(self, params, *args, **kwargs):
        # Positional arguments by name first, so a fixed one passed by position is seen too.
        given = signature.bind_partial(self, params, *args, **kwargs).arguments
        given.pop("self")
        for key, value in fixed.items():
            if key in given and given[key] != value:
                raise ValueError(f"{name} has {key}={value}; got {key}={given[key]!r} (use {base.__name__})")
            given[key] = value
        base.__init__(self, **given)

    # What inspect shows: the fixed values as defaults.
    __init__.__signature__ = _with_defaults(signature, **fixed)
    what = "" if bits is None else f" with {bits}-bit optimizer state"
    paging = " with paged state (CUDA unified memory; a no-op on the CPU)" if paged else ""
    doc = f"{base.__name__}{what}{paging}. Arguments as :class:`{base.__name__}`."
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": base.__module__})


Adam8bit = fixed_variant(Adam, "Adam8bit", bits=8)
Adam32bit = fixed_variant(Adam, "Adam32bit", bits=32)
AdamW8bit = fixed_variant(AdamW, "AdamW8bit", bits=8)
AdamW32bit = fixed_variant(AdamW, "AdamW32bit", bits=32)
PagedAdam = fixed_variant(Adam, "PagedAdam", paged=True)
PagedAdam8bit = fixed_variant(Adam, "PagedAdam8bit", bits=8, paged=True)
PagedAdam32bit = fixed_variant(Adam, "PagedAdam32bit", bits=32, paged=True)
PagedAdamW = fixed_variant(AdamW, "PagedAdamW", paged=True)
PagedAdamW8bit = fixed_variant(AdamW, "PagedAdamW8bit", bits=8, paged=True)
PagedAdamW32bit = fixed_variant(AdamW, "PagedAdamW32bit", bits=32, paged=True)
