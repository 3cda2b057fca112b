"""Layers that pair with 8-bit optimizers (bitsandbytes' ``bnb.nn`` names)."""

from bnb8.nn.modules import Embedding, StableEmbedding

__all__ = ["Embedding", "StableEmbedding"]
