"""Paged optimizer state: tensors in CUDA unified (managed) memory that can spill to host RAM.

A paged tensor is an ordinary CUDA tensor whose memory comes from ``cudaMallocManaged``: when the
GPU runs short, the driver evicts its pages to host RAM and migrates them back on access, instead
of failing with an out-of-memory error. Optimizer states are touched once per step, so prefetching
them just before the update keeps the step fast while the rest of the step's memory stays free.

API (what ``bnb8.optim`` uses when an optimizer is created with ``is_paged=True`` on CUDA)::

    import bnb8.paged

    state = bnb8.paged.zeros(p.shape, dtype=torch.uint8, device=p.device)  # instead of torch.zeros
    buf = bnb8.paged.empty(p.shape, dtype=torch.float32, device=p.device)  # instead of torch.empty
    bnb8.paged.prefetch([state, ...], device=p.device)   # before the step, on the current stream
    bnb8.paged.is_paged(state)                           # True
    bnb8.paged.managed_bytes()                           # bytes of managed memory bnb8 holds

- :func:`empty` (:func:`zeros`) returns an uninitialised (zeroed) tensor allocated through a private
  ``torch.cuda.MemPool`` whose allocator is ``bnb8_managed_alloc`` / ``bnb8_managed_free`` of the
  native module (``torch.cuda.memory.CUDAPluggableAllocator``). Paged tensors work with every op, the bnb8
  kernels included; ``state_dict``/``torch.save`` see ordinary CUDA tensors.
- :func:`prefetch` enqueues ``cudaMemPrefetchAsync`` for each paged tensor on ``stream`` (default:
  the current stream of ``device``) and returns at once. Tensors that are not paged are skipped:
  their memory already lives on their device. ``device="cpu"`` moves pages to host memory.
- Neither function synchronises the host. Call :func:`prefetch` outside ``torch.compile``d regions
  (it is plain Python around a native call).

Memory and accounting:

- An allocation never asks for more than the device's free memory plus the host's available RAM
  (``cudaMemGetInfo`` + ``MemAvailable`` of ``/proc/meminfo``): :func:`empty` raises ``MemoryError``
  with both numbers beforehand, and the native allocator refuses (torch then raises its
  ``OutOfMemoryError``) when a pool segment would exceed them.
- The pool is torch's caching allocator on top of managed memory: freed paged tensors return their
  blocks to the pool for reuse by later paged tensors, and segments are rounded up like torch's
  (2 MiB for small tensors), so :func:`managed_bytes` can exceed the sum of live tensors' bytes.
- NVML (``nvidia-smi``, ``nvidia-ml-py``) does not attribute managed memory to the process, and
  ``torch.cuda.memory_allocated()`` counts it only while tensors live in the pool;
  ``cudaMemGetInfo`` sees only the pages resident on the device right now. :func:`managed_bytes`
  is the exact amount bnb8 asked the driver for; report it next to the device numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import torch

from bnb8._native import C

__all__ = ["empty", "host_available_bytes", "is_paged", "managed_bytes", "prefetch", "zeros"]

_lock = threading.Lock()
_allocator = None
_pools: dict[int, object] = {}


def _require_cuda() -> None:
    if not getattr(C, "HAS_CUDA", False):
        raise RuntimeError(
            "bnb8.paged: the bnb8 native module was built without CUDA (BNB8_CUDA=ON to build it)"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("bnb8.paged: paged tensors need a CUDA device, and torch sees none")
    if not hasattr(torch.cuda, "MemPool") or not hasattr(torch.cuda, "use_mem_pool"):
        raise RuntimeError(
            f"bnb8.paged: needs torch.cuda.MemPool (torch >= 2.8), found torch {torch.__version__}"
        )


def _device_index(device: torch.device | str | int | None) -> int:
    if device is None:
        return torch.cuda.current_device()
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device: paged tensors live on a CUDA device, got {device}")
    return device.index if device.index is not None else torch.cuda.current_device()


def _pool(index: int):
    global _allocator
    with _lock:
        if _allocator is None:
            _allocator = torch.cuda.memory.CUDAPluggableAllocator(
                C.__file__, "bnb8_managed_alloc", "bnb8_managed_free"
            )
        pool = _pools.get(index)
        if pool is None:
            with torch.cuda.device(index):
                pool = torch.cuda.MemPool(_allocator.allocator())
            _pools[index] = pool
        return pool


def host_available_bytes() -> int:
    """Host RAM available without swapping (``MemAvailable`` of ``/proc/meminfo``), in bytes."""
    return int(C.host_available_bytes()) if hasattr(C, "host_available_bytes") else 0


def managed_bytes() -> int:
    """Bytes of CUDA managed memory bnb8 currently holds (every device; see the module notes)."""
    return int(C.cuda_managed_bytes()) if getattr(C, "HAS_CUDA", False) else 0


def empty(
    shape: int | Sequence[int] | torch.Size,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | int | None = None,
) -> torch.Tensor:
    """An uninitialised paged tensor on ``device`` (a CUDA device; default: the current one).

    Raises:
        MemoryError: the tensor needs more than the device's free memory plus the host's
            available RAM.
    """
    _require_cuda()
    index = _device_index(device)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    free, _total = C.cuda_device_memory(index)
    host = host_available_bytes()
    if nbytes > free + host:
        raise MemoryError(
            f"bnb8.paged.empty: {nbytes / 2**30:.2f} GiB requested, but cuda:{index} has "
            f"{free / 2**30:.2f} GiB free and the host {host / 2**30:.2f} GiB available"
        )
    with torch.cuda.use_mem_pool(_pool(index), device=index):
        return torch.empty(shape, dtype=dtype, device=torch.device("cuda", index))


def zeros(
    shape: int | Sequence[int] | torch.Size,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | int | None = None,
) -> torch.Tensor:
    """A zero-filled paged tensor: :func:`empty` followed by ``zero_()`` on the current stream."""
    return empty(shape, dtype, device).zero_()


def is_paged(t: torch.Tensor) -> bool:
    """Whether ``t``'s memory is CUDA managed memory (allocated by :func:`empty`, or elsewhere)."""
    return bool(
        t.is_cuda and t.numel() > 0 and getattr(C, "HAS_CUDA", False) and C.cuda_is_managed(t.data_ptr())
    )


def prefetch(
    tensors: Iterable[torch.Tensor],
    device: torch.device | str | int | None = None,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Start moving the pages of every paged tensor in ``tensors`` to ``device``, on ``stream``.

    Args:
        tensors (iterable of Tensor): tensors to prefetch; those that are not paged are skipped.
        device (torch.device, str or int, optional): a CUDA device, or ``"cpu"`` to move the pages to
            host memory (default: the current CUDA device).
        stream (torch.cuda.Stream, optional): orders the migration (default: the current stream of
            the target device, or of the tensor's device when prefetching to the host).
    """
    tensors = list(tensors)
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors: expected torch.Tensor items, got {type(t).__name__}")
    if not any(is_paged(t) for t in tensors):
        return  # nothing to move (a CPU tensor, or none): no GPU needed
    _require_cuda()
    to_host = (
        device is not None and torch.device(device).type == "cpu" if not isinstance(device, int) else False
    )
    target = -1 if to_host else _device_index(device)
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors: expected torch.Tensor items, got {type(t).__name__}")
        if not is_paged(t):
            continue
        stream_device = t.device.index if to_host else target
        s = stream if stream is not None else torch.cuda.current_stream(stream_device)
        storage = t.untyped_storage()
        C.cuda_prefetch(storage.data_ptr(), storage.nbytes(), target, s.cuda_stream, s.device.index)
