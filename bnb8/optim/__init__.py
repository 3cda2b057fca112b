"""bnb8 optimizers: drop-in for ``torch.optim`` and for ``bitsandbytes.optim``.

Every family exists as ``X`` (``optim_bits`` chooses 8 or 32, default 32 like torch), ``X8bit`` and
``X32bit``; Adam-like families also as ``PagedX*``.
"""

from bnb8.optim import adamw, lars  # noqa: F401  (bitsandbytes' module paths)
from bnb8.optim._distributed import carry_overrides
from bnb8.optim.adagrad import Adagrad, Adagrad8bit, Adagrad32bit
from bnb8.optim.adam import (
    Adam,
    Adam8bit,
    Adam32bit,
    AdamW,
    AdamW8bit,
    AdamW32bit,
    PagedAdam,
    PagedAdam8bit,
    PagedAdam32bit,
    PagedAdamW,
    PagedAdamW8bit,
    PagedAdamW32bit,
)
from bnb8.optim.ademamix import (
    AdEMAMix,
    AdEMAMix8bit,
    AdEMAMix32bit,
    PagedAdEMAMix,
    PagedAdEMAMix8bit,
    PagedAdEMAMix32bit,
)
from bnb8.optim.lamb import LAMB, LAMB8bit, LAMB32bit
from bnb8.optim.lion import Lion, Lion8bit, Lion32bit, PagedLion, PagedLion8bit, PagedLion32bit
from bnb8.optim.manager import GlobalOptimManager
from bnb8.optim.optimizer import Optimizer8bit
from bnb8.optim.rmsprop import RMSprop, RMSprop8bit, RMSprop32bit
from bnb8.optim.sgd import LARS, SGD, LARS8bit, LARS32bit, PytorchLARS, SGD8bit, SGD32bit

__all__ = [
    "Adagrad",
    "Adagrad32bit",
    "Adagrad8bit",
    "Adam",
    "Adam32bit",
    "Adam8bit",
    "AdamW",
    "AdamW32bit",
    "AdamW8bit",
    "AdEMAMix",
    "AdEMAMix32bit",
    "AdEMAMix8bit",
    "GlobalOptimManager",
    "LAMB",
    "LAMB32bit",
    "LAMB8bit",
    "LARS",
    "LARS32bit",
    "LARS8bit",
    "Lion",
    "Lion32bit",
    "Lion8bit",
    "Optimizer8bit",
    "PagedAdam",
    "PagedAdam32bit",
    "PagedAdam8bit",
    "PagedAdamW",
    "PagedAdamW32bit",
    "PagedAdamW8bit",
    "PagedAdEMAMix",
    "PagedAdEMAMix32bit",
    "PagedAdEMAMix8bit",
    "PagedLion",
    "PagedLion32bit",
    "PagedLion8bit",
    "PytorchLARS",
    "RMSprop",
    "RMSprop32bit",
    "RMSprop8bit",
    "SGD",
    "SGD32bit",
    "SGD8bit",
    "carry_overrides",
]
