"""Sharded parameters (DTensor: FSDP2's ``fully_shard``, tensor parallelism) in the optimizer base class.

The kernels only ever see plain, local tensors. For a parameter that is a ``DTensor``:

* **the decision follows the full parameter.** ``p.numel()`` of a DTensor is its global size, so
  ``min_8bit_size`` and every override apply to the parameter, never to a rank's shard: a layer
  keeps the same 8-bit/32-bit state whatever the world size or wrap policy;
* **the update runs on the local shard** (``p.to_local()``, ``p.grad.to_local()``) with the same
  fused kernels; quantization blocks of 256 are laid over the local shard, so no block straddles
  two ranks and a step needs no communication (uneven and empty shards are fine);
* **state layout** (what ``state_dict()`` returns, what ``torch.distributed.checkpoint`` saves):

  ========================  ==================================================================
  ``state1..3``             DTensor, the parameter's mesh and placements and global shape:
                            uint8 codes or float32 values of exactly the local elements
  ``absmax1..3``            DTensor of global shape ``(S * B,)``, ``Shard(0)`` over every mesh
                            dim the parameter is sharded on (``Replicate()`` elsewhere), where
                            S is the number of shards and B the block count of the largest
                            local shard: every rank holds B values, the first
                            ``ceil(local_numel / 256)`` used (an even split, so DCP saves and
                            reloads each rank's scales as its own)
  ``qmap1..3``              plain tensor, identical on every rank (DCP saves it once)
  ``gnorm_vec/unorm_vec``   plain tensor, identical on every rank (norms are all-reduced)
  ========================  ==================================================================

  A checkpoint of 8-bit state reloads on the same mesh and sharding (block boundaries follow the
  shards). float32 states are ordinary sharded DTensors and reshard like the parameters.
* **norms are global.** Percentile clipping and per-tensor update scales (``max_unorm``, the trust
  ratios of LAMB/LARS) need the norm of the whole tensor: the base class computes sums of squares
  over each local shard and :func:`all_reduce_sums` adds them up across the shards (one collective
  per bucket, on every rank in the same order, since buckets follow the parameter order).

Plain tensors (single process, DDP, ``ZeroRedundancyOptimizer``) pass through every helper unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch

BLOCK = 256

try:  # public since torch 2.5
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - torch 2.4, or torch.distributed compiled out (some macOS builds)
    try:
        from torch.distributed._tensor import DTensor, Replicate, Shard
        from torch.distributed._tensor._utils import compute_local_shape_and_global_offset
    except ImportError:
        DTensor = None  # type: ignore[assignment,misc]


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def is_dtensor(t: Any) -> bool:
    # The exact type first: isinstance against a tensor subclass costs ~0.2 us, and the step asks
    # ~10 times per parameter (1000 small parameters: 2 ms a step).
    return type(t) not in _PLAIN and DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: ``t.to_local()`` for a DTensor (an alias under ``no_grad``, so
    in-place kernels write through), ``t`` itself otherwise."""
    return t.to_local() if is_dtensor(t) else t


def mesh_key(p: torch.Tensor) -> tuple | None:
    """Part of a bucket key: tensors of one fused call share mesh and placements (their norms are
    all-reduced together)."""
    return (id(p.device_mesh), tuple(p.placements)) if is_dtensor(p) else None


def _sharded_mesh_dims(p: torch.Tensor) -> list[int]:
    return [i for i, pl in enumerate(p.placements) if pl.is_shard()]


def local_blocks(p: torch.Tensor) -> int:
    """Quantization blocks of this rank's part of ``p``."""
    return (local(p).numel() + BLOCK - 1) // BLOCK


def absmax_numel(p: torch.Tensor) -> int:
    """Length of an absmax state of ``p`` as ``state_dict()`` shows it (global for a DTensor)."""
    if not is_dtensor(p):
        return (p.numel() + BLOCK - 1) // BLOCK
    return _shards(p) * _max_local_blocks(p)


def _shards(p: torch.Tensor) -> int:
    return math.prod(p.device_mesh.size(i) for i in _sharded_mesh_dims(p))


def _max_local_blocks(p: torch.Tensor) -> int:
    # DTensor splits like torch.chunk: the first chunk, ceil(size / n), is the largest. Applying
    # that per sharded mesh dim bounds every rank's shard, with no communication, identically on all.
    shape = list(p.shape)
    for i in _sharded_mesh_dims(p):
        d = p.placements[i].dim
        shape[d] = -(-shape[d] // p.device_mesh.size(i))
    return (math.prod(shape) + BLOCK - 1) // BLOCK


def state_like(p: torch.Tensor, dtype: torch.dtype, alloc) -> torch.Tensor:
    """A zeroed state of ``p``'s shape: ``alloc(shape, dtype, device)`` for the local elements,
    wrapped as a DTensor with ``p``'s mesh and placements when ``p`` is one."""
    if not is_dtensor(p):
        return alloc(p.shape, dtype, p.device)
    t = alloc(local(p).shape, dtype, p.device)
    return DTensor.from_local(
        t, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def absmax_like(p: torch.Tensor) -> torch.Tensor:
    """Zeroed absmax storage for an 8-bit state of ``p`` (layout: module docstring)."""
    if not is_dtensor(p):
        return torch.zeros(absmax_numel(p), device=p.device)
    t = torch.zeros(_max_local_blocks(p), device=p.device)
    return DTensor.from_local(
        t, p.device_mesh, _absmax_placements(p), run_check=False, shape=(absmax_numel(p),), stride=(1,)
    )


def _absmax_placements(p: torch.Tensor) -> tuple:
    return tuple(Shard(0) if pl.is_shard() else Replicate() for pl in p.placements)


def local_absmax(absmax: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The absmax values the kernels read and write for this rank's part of ``p``."""
    if not is_dtensor(absmax):
        return absmax
    return local(absmax)[: local_blocks(p)]


def all_reduce_sums(sums: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Sums over local shards -> sums over the whole tensors (in place), for a bucket whose
    parameters share ``p``'s mesh and placements. A no-op for plain tensors and replicated dims."""
    if is_dtensor(p):
        import torch.distributed as dist

        for i in _sharded_mesh_dims(p):
            dist.all_reduce(sums, group=p.device_mesh.get_group(i))
    return sums


def check_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if type(p) in _PLAIN and type(g) in _PLAIN:  # the common case, at every step for every parameter
        return
    if is_dtensor(p) != is_dtensor(g) or (
        is_dtensor(p) and (g.device_mesh != p.device_mesh or tuple(g.placements) != tuple(p.placements))
    ):
        how = lambda t: f"DTensor {tuple(t.placements)}" if is_dtensor(t) else "a plain tensor"  # noqa: E731
        raise ValueError(
            f"grad: is {how(g)} but its parameter is {how(p)}; bnb8 updates the local shard, so the gradient "
            "must be sharded exactly like the parameter"
        )


# -- overrides ----------------------------------------------------------------------------------


def carry_overrides(model: torch.nn.Module) -> int:
    """Make the GlobalOptimManager overrides given for ``model``'s parameters survive wrapping.

    FSDP2's ``fully_shard`` replaces every parameter with a new DTensor ``Parameter``, so an override
    keyed by the original object would be lost. Call this before wrapping: each per-parameter override
    is re-registered as a module override (owner module, attribute name), which the optimizer resolves
    to whatever tensor the attribute holds at step time. Returns the number of parameters carried.
    """
    from bnb8.optim.manager import GlobalOptimManager

    mng = GlobalOptimManager.get_instance()
    carried = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        overrides = mng._overrides_of(p)
        if overrides:
            owner, _, attr = name.rpartition(".")
            mng.register_module_override(model.get_submodule(owner), attr, dict(overrides))
            carried += 1
    return carried


# -- loading --------------------------------------------------------------------------------------


def owned_copy(
    t: torch.Tensor, device: torch.device, dtype: torch.dtype, reuse: bool = False
) -> torch.Tensor:
    """A loaded tensor as the kernels need it: a copy of its own, on ``device`` in ``dtype``, and
    contiguous (a plain clone keeps a transposed tensor's strides, and the kernels read raw memory).
    With ``reuse``, ``t`` itself when it is all that already (a live state, updated in place)."""
    if reuse and t.device == device and t.dtype == dtype and t.is_contiguous():
        return t
    return t.detach().to(device, dtype).clone(memory_format=torch.contiguous_format)


def load_state(
    s: torch.Tensor, p: torch.Tensor, dtype: torch.dtype, where: str, reuse: bool = False
) -> torch.Tensor:
    """A saved per-element state, copied onto ``p``'s device (and layout, for a DTensor ``p``); with
    ``reuse``, not copied when it already fits (see owned_copy)."""
    if not is_dtensor(p):
        if is_dtensor(s):
            raise ValueError(
                f"{where}: the state is sharded (DTensor) but the parameter is not; load it into the same "
                "sharded model, or gather it with torch.distributed.checkpoint first"
            )
        return owned_copy(s, p.device, dtype, reuse).view(p.shape)
    if is_dtensor(s):
        _check_same_layout(s, p, where)
        return state_like(p, dtype, lambda shape, dt, dev: owned_copy(local(s), dev, dt, reuse).view(shape))
    if s.dtype == torch.uint8:
        raise ValueError(
            f"{where}: 8-bit state saved unsharded cannot be loaded into a sharded parameter (its quantization "
            "blocks follow the shards); load it into the unsharded model, or start with fresh state"
        )
    # A full float32 state (e.g. from a single-process checkpoint): keep this rank's part.
    full = s.detach().view(p.shape)
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    part = full[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
    return state_like(p, dtype, lambda shape, dt, dev: owned_copy(part, dev, dt).view(shape))


def check_8bit_layout(s: torch.Tensor, p: torch.Tensor, where: str) -> None:
    """8-bit codes are quantized in blocks over each rank's shard: they load only into a parameter
    sharded the same way (or, unsharded, into an unsharded one)."""
    if is_dtensor(p) and not is_dtensor(s):
        raise ValueError(
            f"{where}: 8-bit state saved unsharded cannot be loaded into a sharded parameter (its quantization "
            "blocks follow the shards); load it into the unsharded model, or start with fresh state"
        )
    if is_dtensor(s) and not is_dtensor(p):
        raise ValueError(
            f"{where}: the state is sharded (DTensor) but the parameter is not; load it into the same "
            "sharded model, or gather it with torch.distributed.checkpoint first"
        )
    if is_dtensor(p):
        _check_same_layout(s, p, where)


def load_absmax(absmax: torch.Tensor, p: torch.Tensor, where: str, reuse: bool = False) -> torch.Tensor:
    if not is_dtensor(p):
        if is_dtensor(absmax):
            raise ValueError(f"{where}: the absmax is sharded (DTensor) but the parameter is not")
        return owned_copy(absmax, p.device, torch.float32, reuse).view(-1)
    if not is_dtensor(absmax) or tuple(absmax.placements) != _absmax_placements(p):
        raise ValueError(f"{where}: the absmax of a sharded parameter must be a DTensor sharded like it")
    out = absmax_like(p)
    if local(absmax).numel() != local(out).numel():
        raise ValueError(
            f"{where}: this rank's absmax has {local(absmax).numel()} values, expected {local(out).numel()} "
            "(a checkpoint of 8-bit state reloads on the same mesh and sharding only)"
        )
    local(out).copy_(local(absmax).view(-1))
    return out


def _check_same_layout(s: torch.Tensor, p: torch.Tensor, where: str) -> None:
    if s.device_mesh != p.device_mesh or tuple(s.placements) != tuple(p.placements):
        raise ValueError(
            f"{where}: the state is sharded as {tuple(s.placements)} on {s.device_mesh}, its parameter as "
            f"{tuple(p.placements)} on {p.device_mesh}; load a checkpoint of the same sharding"
        )
