"""What code written for bitsandbytes touches besides the update itself: constructor signatures as
`inspect` sees them, module paths, attributes, bitsandbytes' Adam weight decay, Embedding's
initialisation, the linear map, PytorchLARS. Each case compares with bitsandbytes 0.50 where it is
installed (the test extra installs it)."""

from __future__ import annotations

import inspect
import math
import pickle
from copy import deepcopy

import pytest
import torch

import bnb8
import bnb8.functional as F
import bnb8.optim as optim

CLASSES = [getattr(optim, n) for n in optim.__all__ if isinstance(getattr(optim, n), type)]
OPTIMIZERS = [c for c in CLASSES if issubclass(c, optim.Optimizer8bit) and c is not optim.Optimizer8bit]


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_signature_names_every_argument(cls):
    """Tools such as litgpt and jsonargparse keep only the arguments `inspect.signature` names: a
    (*args, **kwargs) signature made them drop lr, betas and weight_decay without an error."""
    params = inspect.signature(cls.__init__).parameters
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
    assert list(params)[:3] == ["self", "params", "lr"]
    fixed_bits = 8 if cls.__name__.endswith("8bit") else 32 if cls.__name__.endswith("32bit") else None
    fixed_bits = 32 if cls is optim.PytorchLARS else fixed_bits
    if "optim_bits" in params and fixed_bits:
        assert params["optim_bits"].default == fixed_bits
    if "is_paged" in params:
        assert params["is_paged"].default is cls.__name__.startswith("Paged")
    # Every named argument is accepted with its shown default, and the shown defaults are the real ones:
    # passing them all (as jsonargparse does) builds the same optimizer as passing none.
    kwargs = {n: a.default for n, a in params.items() if n not in ("self", "params")}
    kwargs["lr"] = 0.5
    shown = cls([torch.nn.Parameter(torch.zeros(8))], **kwargs)
    real = cls([torch.nn.Parameter(torch.zeros(8))], lr=0.5)
    drop = ("params",)
    assert {k: v for k, v in shown.param_groups[0].items() if k not in drop} == {
        k: v for k, v in real.param_groups[0].items() if k not in drop
    }
    assert vars(shown.args) == vars(real.args) and shown.is_paged == real.is_paged


def test_a_signature_driven_factory_keeps_the_settings():
    """litgpt's pattern: build the optimizer from the config keys its signature names."""
    config = {"lr": 0.123, "weight_decay": 0.05, "betas": (0.8, 0.9), "unrelated": 1}
    for cls in (optim.PagedAdamW, optim.AdamW8bit, optim.Adam8bit, optim.PagedAdamW8bit):
        accepted = inspect.signature(cls.__init__).parameters
        opt = cls([torch.nn.Parameter(torch.zeros(8))], **{k: v for k, v in config.items() if k in accepted})
        group = opt.param_groups[0]
        assert (group["lr"], group["weight_decay"], group["betas"]) == (0.123, 0.05, (0.8, 0.9)), cls.__name__


def test_adamw_rejects_decoupled_weight_decay_like_torch():
    with pytest.raises(TypeError, match="decoupled_weight_decay"):
        optim.AdamW([torch.nn.Parameter(torch.zeros(8))], decoupled_weight_decay=False)
    with pytest.raises(TypeError, match="decoupled_weight_decay"):
        optim.Adam([torch.nn.Parameter(torch.zeros(8))], decoupled_weight_decay=1)


def _run(cls, steps=5, **kwargs):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4097) * 0.1)
    opt = cls([p], **kwargs)
    for _ in range(steps):
        p.grad = torch.randn_like(p) * 0.01
        opt.step()
    return p.detach().clone()


def test_adam_weight_decay_coupled_like_torch_or_decoupled_on_request():
    kwargs = dict(lr=1e-2, weight_decay=0.5)
    start = _run(torch.optim.Adam, steps=0)
    coupled = _run(torch.optim.Adam, **kwargs)
    decoupled = _run(torch.optim.AdamW, **kwargs)
    assert (coupled - decoupled).abs().max() > 1e-3  # the two rules differ at this weight decay

    def close(a, b):  # relative to the change of the parameters
        return ((a - b).norm() / (b - start).norm()).item() < 1e-5

    assert close(_run(optim.Adam32bit, **kwargs), coupled)
    assert close(_run(optim.Adam32bit, decoupled_weight_decay=True, **kwargs), decoupled)
    assert close(_run(optim.AdamW32bit, **kwargs), decoupled)
    assert close(_run(torch.optim.Adam, decoupled_weight_decay=True, **kwargs), decoupled)


def test_bitsandbytes_adam_decays_decoupled():
    """The README's statement: bitsandbytes' Adam is matched by decoupled_weight_decay=True."""
    bnb = pytest.importorskip("bitsandbytes")
    kwargs = dict(lr=1e-2, weight_decay=0.5)
    start = _run(torch.optim.Adam, steps=0)
    theirs = _run(bnb.optim.Adam32bit, **kwargs)
    ours = _run(optim.Adam32bit, decoupled_weight_decay=True, **kwargs)
    assert ((ours - theirs).norm() / (theirs - start).norm()).item() < 1e-5
    assert ((_run(optim.Adam32bit, **kwargs) - theirs).norm() / (theirs - start).norm()).item() > 0.1


def test_bitsandbytes_module_paths_and_names():
    from bnb8.optim.adamw import PagedAdamW8bit
    from bnb8.optim.lars import LARS8bit

    assert PagedAdamW8bit is optim.PagedAdamW8bit and LARS8bit is optim.LARS8bit
    bnb = pytest.importorskip("bitsandbytes")
    missing = {n for n in dir(bnb.optim) if not n.startswith("_")} - set(dir(optim))
    assert not missing


def test_bitsandbytes_attributes():
    p = torch.nn.Parameter(torch.zeros(8))
    opt = optim.PagedAdamW8bit([p], lr=0.1, min_8bit_size=16)
    assert opt.optimizer_name == "adam" and optim.SGD([p], lr=0.1).optimizer_name == "momentum"
    assert (opt.args.optim_bits, opt.args.min_8bit_size, opt.args.is_paged) == (8, 16, True)
    assert "state1" in opt.non_castable_tensor_keys and "absmax1" in opt.non_castable_tensor_keys
    assert torch.equal(opt.name2qmap["dynamic"], F.create_dynamic_map(True))
    assert torch.equal(opt.name2qmap["udynamic"], F.create_dynamic_map(False))
    optim.GlobalOptimManager.get_instance().override_config(p, "lr", 0.01)
    config = opt.get_config(0, 0, opt.param_groups[0])
    assert config["lr"] == 0.01 and config["optim_bits"] == 8 and "params" not in config
    for copy in (pickle.loads(pickle.dumps(opt)), deepcopy(opt)):
        assert copy.args.min_8bit_size == 16 and copy.optimizer_name == "adam"
    with pytest.raises(ValueError, match="move_to_device=False is not supported"):
        opt.load_state_dict(opt.state_dict(), move_to_device=False)
    opt.load_state_dict(opt.state_dict(), move_to_device=True)


def test_overrides_take_amsgrad_and_block_wise():
    p = torch.nn.Parameter(torch.randn(5000))
    mng = optim.GlobalOptimManager.get_instance()
    mng.register_parameters([p])
    opt = optim.Adam([p], lr=1e-3)
    mng.override_config(p, key_value_dict={"amsgrad": True, "block_wise": True})
    p.grad = torch.randn_like(p)
    opt.step()
    assert "state3" in opt.state[p]  # AMSGrad's running maximum
    mng.override_config(p, "block_wise", False)
    with pytest.raises(ValueError, match="block_wise=False"):
        opt.step()


def test_embedding_initialised_like_bitsandbytes():
    torch.manual_seed(0)
    emb = bnb8.nn.Embedding(1000, 64, padding_idx=3)
    bound = math.sqrt(6 / (1000 + 64))  # Xavier-uniform, not torch's N(0, 1)
    assert emb.weight.abs().max() <= bound and emb.weight.std() > 0.8 * bound / math.sqrt(3)
    assert torch.equal(emb.weight[3], torch.zeros(64))
    for cls in (bnb8.nn.Embedding, bnb8.nn.StableEmbedding):
        assert list(inspect.signature(cls).parameters)[:3] == [
            "num_embeddings",
            "embedding_dim",
            "padding_idx",
        ]
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    assert torch.equal(bnb.nn.Embedding(1000, 64, padding_idx=3).weight, emb.weight)


def test_embeddings_from_pretrained():
    weights = torch.randn(10, 4)
    for cls in (bnb8.nn.Embedding, bnb8.nn.StableEmbedding):
        emb = cls.from_pretrained(weights, freeze=False, padding_idx=2)
        assert torch.equal(emb.weight, weights) and emb.weight.requires_grad and emb.padding_idx == 2
        assert not cls.from_pretrained(weights).weight.requires_grad  # freeze=True by default, as torch


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("add_zero", [True, False])
@pytest.mark.parametrize("total_bits", [1, 2, 4, 7, 8])
def test_linear_map(signed, add_zero, total_bits):
    table = F.create_linear_map(signed, total_bits, add_zero)
    count = 2**total_bits - (1 if signed and (add_zero or total_bits < 8) else 0)
    assert table.shape == (256,) and table.dtype == torch.float32
    nonpad = torch.cat([table[: count // 2], table[count // 2 + 256 - count :]])
    expected = torch.linspace(-1.0 if signed else 0.0, 1.0, count)
    assert torch.allclose(nonpad.double(), expected.double(), atol=1e-7)
    assert (table[count // 2 : count // 2 + 256 - count] == 0).all()
    if signed and (add_zero or total_bits < 8):
        assert (table.abs() < 1e-7).any()  # zero is a code
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(table, bnb_f.create_linear_map(signed, total_bits, add_zero))


def test_linear_map_bad_arguments():
    with pytest.raises(ValueError, match="total_bits: expected an integer in 1..8, got 9"):
        F.create_linear_map(True, 9)
    with pytest.raises(TypeError, match="signed, add_zero"):
        F.create_linear_map("yes")


def test_pytorch_lars_matches_bitsandbytes():
    kwargs = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, max_unorm=0.02)
    ours = _run(optim.PytorchLARS, steps=10, **kwargs)
    start = _run(optim.PytorchLARS, steps=0)
    assert (ours - start).abs().max() > 0  # it moved
    bnb = pytest.importorskip("bitsandbytes")
    theirs = _run(bnb.optim.PytorchLARS, steps=10, **kwargs)
    assert ((ours - theirs).norm() / (theirs - start).norm()).item() < 1e-5


def test_dtype_errors_are_type_and_value_errors():
    """bitsandbytes raises ValueError for an integer tensor, torch-style code expects TypeError."""
    for error in (TypeError, ValueError):
        with pytest.raises(error, match="A: expected float32, float16 or bfloat16, got torch.int32"):
            F.quantize_blockwise(torch.zeros(100, dtype=torch.int32))


class ProjectedAdamW8bit(bnb8.optim.optimizer.Optimizer2State):
    """GaLore's pattern (its GaLoreAdamW8bit subclasses bitsandbytes' Optimizer2State): step() drives the
    per-parameter hooks itself and updates 2-D weights in a rank-r projection of their gradient."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, min_8bit_size=4096):
        super().__init__("adam", params, lr, betas, eps, weight_decay, 8, None, min_8bit_size, 100, True)

    @torch.no_grad()
    def step(self, closure=None):
        if not self.initialized:
            self.check_overrides()
            self.to_gpu()
            self.initialized = True
        for gindex, group in enumerate(self.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p]
                state.setdefault("step", 0)
                project = "rank" in group
                if project:
                    if "P" not in state:
                        state["P"] = torch.linalg.svd(p.grad, full_matrices=False)[0][:, : group["rank"]]
                    full, grad = p.data, p.grad
                    p.data, p.grad = torch.zeros(group["rank"], p.shape[1]), state["P"].T @ grad
                if "state1" not in state:
                    self.init_state(group, p, gindex, pindex)
                self.prefetch_state(p)
                self.update_step(group, p, gindex, pindex)
                if project:
                    p.data, p.grad = full.add_(state["P"] @ p.data), grad


def _grads(params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g) * 0.01 for p in params] for _ in range(steps)]


def test_a_galore_style_subclass_of_optimizer2state_runs():
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(256, 128) * 0.1), torch.nn.Parameter(torch.randn(5000) * 0.1)
    b_ref = torch.nn.Parameter(b.detach().clone())
    opt = ProjectedAdamW8bit([{"params": [w], "rank": 16}, {"params": [b]}], lr=1e-2, min_8bit_size=1000)
    ref = optim.AdamW8bit([b_ref], lr=1e-2, min_8bit_size=1000)
    w0 = w.detach().clone()
    for gw, gb in zip(*zip(*_grads([w, b], 5))):
        w.grad, b.grad, b_ref.grad = gw, gb.clone(), gb.clone()
        opt.step()
        ref.step()
    assert isinstance(opt, ProjectedAdamW8bit) and isinstance(opt, optim.AdamW)
    assert opt.state[w]["state1"].shape == (16, 128) and opt.state[w]["state1"].dtype == torch.uint8
    assert torch.equal(b, b_ref)  # update_step is the fused step, one parameter at a time
    change = w.detach() - w0
    assert change.abs().max() > 0
    assert torch.linalg.matrix_rank(change).item() <= 16  # the update stayed in the projection
    for copy in (pickle.loads(pickle.dumps(opt)), deepcopy(opt)):
        b_copy = copy.param_groups[1]["params"][0]
        assert type(copy) is type(opt) and torch.equal(copy.state[b_copy]["state1"], opt.state[b]["state1"])


@pytest.mark.parametrize(
    ("name", "betas", "eps", "family", "kwargs"),
    [
        ("momentum", (0.9, 0.1), 0.0, optim.SGD, dict(momentum=0.9, dampening=0.1)),
        ("lars", (0.9, 0.0), 0.0, optim.LARS, dict(momentum=0.9)),
        ("rmsprop", (0.95, 0.5), 1e-6, optim.RMSprop, dict(alpha=0.95, momentum=0.5, eps=1e-6)),
        ("adagrad", (0.0, 0.0), 1e-10, optim.Adagrad, dict(eps=1e-10)),
        ("lion", (0.9, 0.99), 0.0, optim.Lion, dict(betas=(0.9, 0.99))),
        ("adam", (0.9, 0.99), 1e-8, optim.AdamW, dict(betas=(0.9, 0.99))),
        ("lamb", (0.9, 0.99), 1e-8, optim.LAMB, dict(betas=(0.9, 0.99))),
        ("ademamix", (0.9, 0.99, 0.999), 1e-8, optim.AdEMAMix, dict(betas=(0.9, 0.99, 0.999), alpha=2.0)),
    ],
)
def test_optimizer_by_name_is_its_family(name, betas, eps, family, kwargs):
    """bitsandbytes' classes pass their hyper-parameters through (betas, eps): the same updates as the
    bnb8 family with them, bit for bit, in 8-bit state."""
    two = len(betas) == 3 or name in ("adam", "lamb")
    by_name = optim.optimizer.Optimizer2State if two else optim.optimizer.Optimizer1State
    p, q = (torch.nn.Parameter(torch.randn(5000) * 0.1) for _ in range(2))
    q.data.copy_(p.data)
    extra = {"ademamix": dict(alpha=2.0), "lars": dict(max_unorm=0.02)}.get(name, {})
    ours = by_name(name, [p], 1e-2, betas, eps, 0.01, 8, **extra)
    theirs = family([q], lr=1e-2, weight_decay=0.01, optim_bits=8, **kwargs)
    assert ours.optimizer_name == theirs.optimizer_name
    for (g,) in _grads([p], 4):
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert torch.equal(p, q)


def test_optimizer_by_name_rejects_an_unknown_name():
    with pytest.raises(
        ValueError, match="optimizer_name: expected one of adam, ademamix, lamb for Optimizer2State"
    ):
        optim.optimizer.Optimizer2State("sgd", [torch.nn.Parameter(torch.zeros(4))])


def test_optimizer_by_name_rejects_bad_betas():
    with pytest.raises(ValueError, match="betas: expected a tuple of at least 2 numbers, got 0.9"):
        optim.optimizer.Optimizer1State("momentum", [torch.nn.Parameter(torch.zeros(4))], 0.1, 0.9)
