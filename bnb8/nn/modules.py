"""Embedding layers whose weights keep 32-bit optimizer state.

Embedding rows see rare, spiky gradients; 8-bit state loses them. Both layers register their weight
with :class:`~bnb8.optim.GlobalOptimManager` for ``optim_bits=32``, so an 8-bit optimizer over the
whole model still keeps full-precision state for them.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnb8.optim.manager import GlobalOptimManager


class Embedding(nn.Embedding):
    """``torch.nn.Embedding`` whose weight always gets 32-bit optimizer state, initialised Xavier-uniform
    (the padding row zero) as bitsandbytes' ``Embedding``, not N(0, 1) as torch's.

    Args: as ``torch.nn.Embedding`` (``num_embeddings, embedding_dim, padding_idx, max_norm, norm_type,
    scale_grad_by_freq, sparse, _weight, _freeze, device, dtype``).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight,
            _freeze,
            device=device,
            dtype=dtype,
        )
        GlobalOptimManager.get_instance().register_module_override(self, "weight", {"optim_bits": 32})

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy and unpickling rebuild the module without __init__: register the copy too.
        super().__setstate__(state)
        GlobalOptimManager.get_instance().register_module_override(self, "weight", {"optim_bits": 32})


class StableEmbedding(Embedding):
    """The stable embedding of Dettmers et al. (2022): Xavier-uniform initialisation, LayerNorm after
    the lookup (computed in the default dtype), and 32-bit optimizer state for the weight — what keeps
    8-bit optimizers stable on NLP models.

    Args: as ``torch.nn.Embedding`` (``num_embeddings, embedding_dim, padding_idx, max_norm, norm_type,
    scale_grad_by_freq, sparse, _weight, _freeze, device, dtype``).
    """

    def __init__(self, *args, **kwargs) -> None:  # Embedding's arguments (its signature, set below)
        super().__init__(*args, **kwargs)
        self.norm = nn.LayerNorm(self.embedding_dim, device=self.weight.device)

    def forward(self, input: Tensor) -> Tensor:
        emb = F.embedding(
            input,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        # LayerNorm in the default dtype (float32), then back to the weight's dtype; its own weight and
        # bias follow the module (model.half()) and are cast too.
        dtype = torch.get_default_dtype()
        norm = self.norm
        weight = None if norm.weight is None else norm.weight.to(dtype)
        bias = None if norm.bias is None else norm.bias.to(dtype)
        return F.layer_norm(emb.to(dtype), norm.normalized_shape, weight, bias, norm.eps).to(
            self.weight.dtype
        )


# What inspect shows for StableEmbedding(...): Embedding's arguments, not (*args, **kwargs).
StableEmbedding.__init__.__signature__ = inspect.signature(Embedding.__init__)
