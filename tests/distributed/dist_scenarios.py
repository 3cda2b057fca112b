"""What the ranks of the distributed tests run (imported by spawned worker processes).

One process group serves every scenario, so the whole distributed suite pays for one spawn. Each
scenario returns plain tensors / values; rank 0 stores them in ``OUT/results.pt`` and the test
process compares them with a single-process run of :func:`train_single` on the same global batches.
"""

from __future__ import annotations

import copy
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import bnb8
from bnb8.optim._distributed import carry_overrides

STEPS = 15
GLOBAL_BATCH = 16
LR = 1e-2
MIN_8BIT = 4096


class Net(nn.Module):
    """Parameters chosen for the sharding cases (FSDP2 shards dim 0 over 2 ranks):

    fc1.weight (97, 64)  6208 el.  8-bit, uneven rows 49/48, each shard < min_8bit_size
    fc1.bias   (97,)     97 el.    32-bit, uneven
    fc2.weight (64, 97)  6208 el.  8-bit, even shards of 3104 < min_8bit_size
    sq.weight  (64, 64)  4096 el.  exactly min_8bit_size: 8-bit, shards of 2048
    row        (1, 4096) 4096 el.  8-bit, rank 1's shard is empty
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 97)
        self.fc2 = nn.Linear(97, 64, bias=False)
        self.sq = nn.Linear(64, 64, bias=False)
        self.row = nn.Parameter(torch.randn(1, 4096) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x))) + self.sq(x) + x @ self.row.view(64, 64)


def make_model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 64, generator=g)
    return x, torch.sin(x.flip(1) * 2.0)


def loss_on(model: nn.Module, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Mean squared error on this rank's contiguous slice of the global batch (the mean over ranks,
    which DDP/FSDP take of the gradients, is the single-process loss on the whole batch)."""
    x, y = batch(step)
    n = GLOBAL_BATCH // world
    x, y = x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]
    return nn.functional.mse_loss(model(x), y)


def optimizer_kwargs(bits: int, **extra) -> dict:
    return dict(lr=LR, optim_bits=bits, min_8bit_size=MIN_8BIT, weight_decay=0.01, **extra)


def train_single(bits: int, steps: int = STEPS, cls: str = "AdamW", **extra) -> dict[str, torch.Tensor]:
    """The reference: one process, whole global batches."""
    model = make_model()
    opt = getattr(bnb8.optim, cls)(model.parameters(), **optimizer_kwargs(bits, **extra))
    for step in range(steps):
        loss_on(model, step).backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def initial_params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in make_model().state_dict().items()}


# -- helpers on the ranks -----------------------------------------------------------------------------


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: _full(v) for k, v in model.state_dict().items()}


def _fsdp2(model: nn.Module, mesh_shape: tuple[int, ...] | None = None) -> nn.Module:
    """fully_shard; a 2-D ``mesh_shape`` (replicate, shard) makes it HSDP."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    shape = mesh_shape or (dist.get_world_size(),)
    names = ("replicate", "shard") if len(shape) == 2 else None
    mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _train(model, opt, rank, world, steps, first=0):
    for step in range(first, first + steps):
        loss_on(model, step, rank, world).backward()
        opt.step()
        opt.zero_grad()


def _state_kinds(model, opt) -> dict[str, str]:
    """'8bit' or '32bit' per parameter name, from the optimizer's state."""
    return {
        name: ("8bit" if opt.state[p]["state1"].dtype == torch.uint8 else "32bit")
        for name, p in model.named_parameters()
    }


# -- scenarios ----------------------------------------------------------------------------------------


def ddp(rank, world, tmp, bits):
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(make_model())
    opt = bnb8.optim.AdamW(model.parameters(), **optimizer_kwargs(bits))
    _train(model, opt, rank, world, STEPS)
    params = _full_params(model.module)
    gathered = [None] * world
    dist.all_gather_object(gathered, params)
    same = all(torch.equal(gathered[0][k], g[k]) for g in gathered for k in params)
    return {"params": params, "ranks_identical": same}


def fsdp2(rank, world, tmp, bits, cls="AdamW", mesh_shape=None, **extra):
    if not hasattr(bnb8.optim, cls):
        return {"skip": f"bnb8.optim has no {cls}"}
    model = _fsdp2(make_model(), mesh_shape)
    opt = getattr(bnb8.optim, cls)(model.parameters(), **optimizer_kwargs(bits, **extra))
    _train(model, opt, rank, world, STEPS)
    local_numel = {n: p.to_local().numel() for n, p in model.named_parameters()}
    return {"params": _full_params(model), "kinds": _state_kinds(model, opt), "local_numel": local_numel}


def fsdp2_state_dict(rank, world, tmp):
    """state_dict()/load_state_dict() per rank round trip (through torch.save), bit-exact resume."""
    model = _fsdp2(make_model())
    opt = bnb8.optim.AdamW8bit(model.parameters(), **optimizer_kwargs(8))
    _train(model, opt, rank, world, 5)
    path = os.path.join(tmp, f"sd-{rank}.pt")
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
    _train(model, opt, rank, world, 4, first=5)
    expected = _full_params(model)

    model2 = _fsdp2(make_model(seed=1))
    opt2 = bnb8.optim.AdamW8bit(model2.parameters(), **optimizer_kwargs(8))
    saved = torch.load(path, weights_only=False)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optim"])
    _train(model2, opt2, rank, world, 4, first=5)
    got = _full_params(model2)
    return {"exact": all(torch.equal(expected[k], got[k]) for k in expected)}


def fsdp2_dcp(rank, world, tmp):
    """torch.distributed.checkpoint save, reload into fresh model and optimizer, resume."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    ckpt = os.path.join(tmp, "dcp")
    model = _fsdp2(make_model())
    opt = bnb8.optim.AdamW8bit(model.parameters(), **optimizer_kwargs(8))
    _train(model, opt, rank, world, 8)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt)
    _train(model, opt, rank, world, 7, first=8)
    expected = _full_params(model)

    model2 = _fsdp2(make_model(seed=1))
    opt2 = bnb8.optim.AdamW8bit(model2.parameters(), **optimizer_kwargs(8))
    msd2, osd2 = get_state_dict(model2, opt2)  # allocates the state to load into
    dcp.load({"model": msd2, "optim": osd2}, checkpoint_id=ckpt)
    set_state_dict(model2, opt2, model_state_dict=msd2, optim_state_dict=osd2)
    steps = [opt2.state[p]["step"] for p in model2.parameters()]
    _train(model2, opt2, rank, world, 7, first=8)
    got = _full_params(model2)
    err = max(((expected[k] - got[k]).norm() / expected[k].norm()).item() for k in expected)
    return {"exact": all(torch.equal(expected[k], got[k]) for k in expected), "max_rel": err, "steps": steps}


def fsdp2_full_state_dict(rank, world, tmp):
    """get_state_dict(full_state_dict=True) gathers every state; set_state_dict splits it again."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    model = _fsdp2(make_model())
    opt = bnb8.optim.AdamW8bit(model.parameters(), **optimizer_kwargs(8))
    _train(model, opt, rank, world, 5)
    options = StateDictOptions(full_state_dict=True)
    msd, osd = get_state_dict(model, opt, options=options)
    _train(model, opt, rank, world, 4, first=5)
    expected = _full_params(model)
    model2 = _fsdp2(make_model(seed=1))
    opt2 = bnb8.optim.AdamW8bit(model2.parameters(), **optimizer_kwargs(8))
    set_state_dict(model2, opt2, model_state_dict=msd, optim_state_dict=osd, options=options)
    _train(model2, opt2, rank, world, 4, first=5)
    got = _full_params(model2)
    return {"exact": all(torch.equal(expected[k], got[k]) for k in expected)}


def fsdp2_load_unsharded(rank, world, tmp):
    """A single-process checkpoint into a sharded model: float32 states are split, 8-bit ones refused."""
    out = {}
    for bits in (32, 8):
        single = make_model()
        opt = bnb8.optim.AdamW(single.parameters(), **optimizer_kwargs(bits))
        _train(single, opt, 0, 1, 3)
        saved = opt.state_dict()
        model = _fsdp2(make_model())
        opt2 = bnb8.optim.AdamW(model.parameters(), **optimizer_kwargs(bits))
        try:
            opt2.load_state_dict(saved)
        except ValueError as e:
            out[bits] = str(e)
            continue
        out[bits] = all(
            torch.equal(opt2.state[p2]["state2"].full_tensor(), opt.state[p1]["state2"])
            for p1, p2 in zip(single.parameters(), model.parameters())
        )
    return out


def fsdp2_overrides(rank, world, tmp):
    """GlobalOptimManager after fully_shard: module overrides and overrides on sharded parameters."""
    mng = bnb8.optim.GlobalOptimManager.get_instance()
    mng.initialize()
    model = make_model()
    mng.register_module_override(model.fc2, "weight", {"optim_bits": 32})  # registered before wrapping
    mng.override_config(model.row, "optim_bits", 32)  # on the original parameter, carried:
    carry_overrides(model)
    model = _fsdp2(model)
    mng.override_config(model.sq.weight, "min_8bit_size", 5000)  # on the sharded parameter
    opt = bnb8.optim.AdamW8bit(model.parameters(), **optimizer_kwargs(8))
    _train(model, opt, rank, world, 2)
    kinds = _state_kinds(model, opt)
    mng.initialize()
    return {"kinds": kinds}


def zero(rank, world, tmp, bits):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(make_model())
    opt = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=bnb8.optim.AdamW, **optimizer_kwargs(bits)
    )
    _train(model, opt, rank, world, STEPS)
    opt.consolidate_state_dict(to=0)
    out = {"params": _full_params(model.module)}
    sd = copy.deepcopy(opt.state_dict()) if rank == 0 else None  # state_dict() holds live tensors
    if rank == 0:
        out["consolidated_states"] = len(sd["state"])
    # Resume: every rank loads the consolidated dict into a fresh model and optimizer (ZeRO assigns
    # each rank's share of the states directly) and continues exactly like the uninterrupted run.
    gathered = [sd]
    dist.broadcast_object_list(gathered, src=0)
    _train(model, opt, rank, world, 3, first=STEPS)
    expected = _full_params(model.module)
    model2 = DistributedDataParallel(make_model())
    model2.module.load_state_dict({k: v.clone() for k, v in out["params"].items()})
    opt2 = ZeroRedundancyOptimizer(
        model2.parameters(), optimizer_class=bnb8.optim.AdamW, **optimizer_kwargs(bits)
    )
    opt2.load_state_dict(gathered[0])
    _train(model2, opt2, rank, world, 3, first=STEPS)
    got = _full_params(model2.module)
    out["resume_exact"] = all(torch.equal(expected[k], got[k]) for k in expected)
    return out


SCENARIOS = {
    "ddp8": lambda r, w, t: ddp(r, w, t, 8),
    "ddp32": lambda r, w, t: ddp(r, w, t, 32),
    "fsdp2_8": lambda r, w, t: fsdp2(r, w, t, 8),
    "fsdp2_32": lambda r, w, t: fsdp2(r, w, t, 32),
    "fsdp2_norms32": lambda r, w, t: fsdp2(r, w, t, 32, percentile_clipping=50, max_unorm=0.05),
    # LAMB's trust ratio needs norms of whole tensors (the base class all-reduces them over shards).
    "fsdp2_lamb8": lambda r, w, t: fsdp2(r, w, t, 8, cls="LAMB"),
    "fsdp2_lamb32": lambda r, w, t: fsdp2(r, w, t, 32, cls="LAMB"),
    # HSDP meshes: norms are summed over the shard dim only, never over replicas.
    "hsdp_2x1_norms32": lambda r, w, t: fsdp2(
        r, w, t, 32, mesh_shape=(2, 1), percentile_clipping=50, max_unorm=0.05
    ),
    "hsdp_1x2_norms32": lambda r, w, t: fsdp2(
        r, w, t, 32, mesh_shape=(1, 2), percentile_clipping=50, max_unorm=0.05
    ),
    "hsdp_1x2_8": lambda r, w, t: fsdp2(r, w, t, 8, mesh_shape=(1, 2)),
    "fsdp2_state_dict": fsdp2_state_dict,
    "fsdp2_dcp": fsdp2_dcp,
    "fsdp2_load_unsharded": fsdp2_load_unsharded,
    "fsdp2_full_state_dict": fsdp2_full_state_dict,
    "fsdp2_overrides": fsdp2_overrides,
    "zero8": lambda r, w, t: zero(r, w, t, 8),
    "zero32": lambda r, w, t: zero(r, w, t, 32),
}


def worker(rank: int, world: int, port: int, tmp: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    results = {}
    try:
        for name in names:
            try:
                results[name] = SCENARIOS[name](rank, world, tmp)
            except Exception:
                results[name] = {"error": traceback.format_exc()}
                raise  # the other rank may be waiting in a collective: stop the group
            dist.barrier()
    finally:
        torch.save(results, os.path.join(tmp, f"results-{rank}.pt"))
        dist.destroy_process_group()
