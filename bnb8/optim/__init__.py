"""bnb8 optimizers: drop-in for ``torch.optim`` and for ``bitsandbytes.optim``.

Every family exists as ``X`` (``optim_bits`` chooses 8 or 32, default 32 like torch), ``X8bit`` and
``X32bit``; Adam-like families also as ``PagedX*``.
"""

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
from bnb8.optim.manager import GlobalOptimManager
from bnb8.optim.optimizer import Optimizer8bit

__all__ = [
    "Adam",
    "Adam8bit",
    "Adam32bit",
    "AdamW",
    "AdamW8bit",
    "AdamW32bit",
    "GlobalOptimManager",
    "Optimizer8bit",
    "PagedAdam",
    "PagedAdam8bit",
    "PagedAdam32bit",
    "PagedAdamW",
    "PagedAdamW8bit",
    "PagedAdamW32bit",
]
