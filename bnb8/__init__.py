"""bnb8: 8-bit optimizers for PyTorch with block-wise quantized state and fused CPU/CUDA kernels.

Drop-in for ``torch.optim`` and for bitsandbytes' optimizer API::

    import bnb8 as bnb
    opt = bnb.optim.Adam8bit(model.parameters(), lr=1e-3)
"""

from bnb8 import _native, _ops  # noqa: F401  (registers the ops)
from bnb8.backends import cpu as _cpu_backend  # noqa: F401  (registers the CPU kernels)

if _native.C.HAS_CUDA:
    from bnb8.backends import cuda as _cuda_backend  # noqa: F401

from bnb8 import functional, nn, optim

__version__ = "0.1.0"
__all__ = ["functional", "nn", "optim", "__version__"]
