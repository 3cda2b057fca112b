"""bitsandbytes' generic optimizer classes, ``Optimizer2State`` and ``Optimizer1State``: the algorithm
chosen by name (``"adam"``, ``"momentum"``, ...), for code that subclasses them — GaLore's 8-bit
AdamW, for one, overrides ``step()`` and drives ``init_state``/``prefetch_state``/``update_step``
per parameter (see ``Optimizer8bit``). Importable as ``bnb8.optim.optimizer.Optimizer2State``, where
bitsandbytes has them.

The constructor turns the instance into a class made once per (class, family): the class itself (so
a subclass's methods and ``isinstance`` work) followed by the bnb8 family the name selects, whose
update rule it runs.
The constructor follows bitsandbytes <= 0.49 (with ``percentile_clipping`` and ``block_wise``), the
order GaLore passes its arguments in.
"""

from __future__ import annotations

from typing import Any

from bnb8.optim.adagrad import Adagrad
from bnb8.optim.adam import AdamW
from bnb8.optim.ademamix import AdEMAMix
from bnb8.optim.lamb import LAMB
from bnb8.optim.lion import Lion
from bnb8.optim.optimizer import Optimizer8bit
from bnb8.optim.rmsprop import RMSprop
from bnb8.optim.sgd import LARS, SGD


def _as_given(lr, b, eps, wd, x):
    return dict(lr=lr, betas=b, eps=eps, weight_decay=wd)


# name -> (family, its arguments from bitsandbytes' (lr, betas, eps, weight_decay, extra)). bitsandbytes'
# classes pass their own hyper-parameters through betas: SGD/LARS (momentum, dampening), RMSprop
# (alpha, momentum); its "adam" decays decoupled, as AdamW.
_TWO_STATES = {
    "adam": (AdamW, _as_given),
    "lamb": (LAMB, _as_given),
    "ademamix": (AdEMAMix, lambda lr, b, eps, wd, x: {**_as_given(lr, b, eps, wd, x), **x}),
}
_ONE_STATE = {
    "momentum": (SGD, lambda lr, b, eps, wd, x: dict(lr=lr, momentum=b[0], dampening=b[1], weight_decay=wd)),
    "lars": (LARS, lambda lr, b, eps, wd, x: dict(lr=lr, momentum=b[0], dampening=b[1], weight_decay=wd)),
    "rmsprop": (
        RMSprop,
        lambda lr, b, eps, wd, x: dict(lr=lr, alpha=b[0], momentum=b[1], eps=eps, weight_decay=wd),
    ),
    "adagrad": (Adagrad, lambda lr, b, eps, wd, x: dict(lr=lr, eps=eps, weight_decay=wd)),
    "lion": (Lion, lambda lr, b, eps, wd, x: dict(lr=lr, betas=b, weight_decay=wd)),
}

_COMBINED: dict[tuple[type, type], type] = {}


def _combined(cls: type, family: type) -> type:
    if (cls, family) not in _COMBINED:
        attrs = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_family": family}
        _COMBINED[(cls, family)] = type(cls.__name__, (cls, family), attrs)
    return _COMBINED[(cls, family)]


def _rebuild(cls: type, family: type) -> Optimizer8bit:
    """Unpickling: an empty instance of the combined class (its state comes from __setstate__)."""
    return object.__new__(_combined(cls, family))


class _ByName(Optimizer8bit):
    _names: dict[str, tuple[type, Any]] = {}
    _family: type | None = None  # set on the combined classes

    def _init_family(self, optimizer_name, params, lr, betas, eps, weight_decay, extra, **common) -> None:
        if optimizer_name not in self._names:
            raise ValueError(
                f"optimizer_name: expected one of {', '.join(sorted(self._names))} for {type(self).__name__}, "
                f"got {optimizer_name!r}"
            )
        if not isinstance(betas, tuple | list) or len(betas) < 2:
            raise ValueError(f"betas: expected a tuple of at least 2 numbers, got {betas!r}")
        family, arguments = self._names[optimizer_name]
        # The name is known only here (a subclass's constructor names it): become the combined class.
        self.__class__ = _combined(type(self), family)
        family.__init__(self, params, **arguments(lr, tuple(betas), eps, weight_decay, extra), **common)

    def __reduce_ex__(self, protocol):
        plain = next(k for k in type(self).__mro__ if k.__dict__.get("_family") is None)  # the user's class
        return _rebuild, (plain, type(self)._family), self.__getstate__()


class Optimizer2State(_ByName):
    """bitsandbytes' two-state optimizer by name: ``"adam"`` (decoupled weight decay, as bitsandbytes'
    Adam), ``"lamb"``, ``"ademamix"`` (with ``alpha``, ``t_alpha``, ``t_beta3``)."""

    _names = _TWO_STATES

    def __init__(
        self,
        optimizer_name: str,
        params,
        lr: float = 1e-3,
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        is_paged: bool = False,
        alpha: float = 0.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
    ) -> None:
        if optimizer_name != "ademamix" and (alpha != 0.0 or t_alpha is not None or t_beta3 is not None):
            raise ValueError(
                f"alpha, t_alpha, t_beta3: AdEMAMix settings, not used by {optimizer_name!r}; leave them out "
                f"(got {alpha!r}, {t_alpha!r}, {t_beta3!r})"
            )
        self._init_family(
            optimizer_name, params, lr, betas, eps, weight_decay,
            dict(alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3),
            optim_bits=optim_bits, args=args, min_8bit_size=min_8bit_size,
            percentile_clipping=percentile_clipping, block_wise=block_wise, max_unorm=max_unorm,
            skip_zeros=skip_zeros, is_paged=is_paged,
        )  # fmt: skip


class Optimizer1State(_ByName):
    """bitsandbytes' one-state optimizer by name: ``"momentum"`` (SGD; betas = (momentum, dampening)),
    ``"lars"`` (the same betas), ``"rmsprop"`` (betas = (alpha, momentum)), ``"adagrad"``, ``"lion"``."""

    _names = _ONE_STATE

    def __init__(
        self,
        optimizer_name: str,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.0),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        optim_bits: int = 32,
        args: Any = None,
        min_8bit_size: int = 4096,
        percentile_clipping: int = 100,
        block_wise: bool = True,
        max_unorm: float = 0.0,
        skip_zeros: bool = False,
        is_paged: bool = False,
    ) -> None:
        self._init_family(
            optimizer_name, params, lr, betas, eps, weight_decay, {},
            optim_bits=optim_bits, args=args, min_8bit_size=min_8bit_size,
            percentile_clipping=percentile_clipping, block_wise=block_wise, max_unorm=max_unorm,
            skip_zeros=skip_zeros, is_paged=is_paged,
        )  # fmt: skip
