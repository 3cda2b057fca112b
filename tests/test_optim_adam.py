"""The optimizer core: Adam/AdamW in 8-bit and 32-bit against torch.optim, checkpoints, overrides,
StableEmbedding, non-finite gradients, memory, and bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch

import bnb8
from bnb8.functional import dynamic_map
from bnb8.optim import GlobalOptimManager

SHAPES = [(1024, 1024), (1000, 1001), (4097,)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# bitsandbytes' per-step tolerances (mean absolute / mean relative error of the parameters).
TOL = {
    torch.float32: (6e-5, 6e-4),
    torch.float16: (1.7e-4, 1.6e-3),
    torch.bfloat16: (1.7e-4, 1.6e-3),
}


@pytest.fixture(autouse=True)
def fresh_manager():
    GlobalOptimManager.get_instance().initialize()
    yield
    GlobalOptimManager.get_instance().initialize()


def dequantized(state: dict, k: int) -> torch.Tensor:
    s = state[f"state{k}"]
    if s.dtype != torch.uint8:
        return s.float()
    scale = state[f"absmax{k}"].repeat_interleave(256)[: s.numel()].view(s.shape)
    return state[f"qmap{k}"][s.long()] * scale


def torch_twin(name: str):
    return {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}[name]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_8bit_matches_torch_per_step(name, shape, dtype):
    torch.manual_seed(0)
    p_ref = (torch.randn(shape) * 0.1).requires_grad_()
    p = p_ref.detach().to(dtype).requires_grad_()
    with torch.no_grad():
        p_ref.copy_(p.float())
    wd = 1e-2
    ref = torch_twin(name)([p_ref], lr=1e-3, weight_decay=wd)
    opt = getattr(bnb8.optim, f"{name}8bit")([p], lr=1e-3, weight_decay=wd)
    atol, rtol = TOL[dtype]
    for _ in range(5):
        g = torch.randn(shape) * 0.01
        p_ref.grad = g.clone()
        p.grad = g.to(dtype)
        ref.step()
        opt.step()
        err = (p.float() - p_ref.detach()).abs()
        assert err.mean() < atol
        assert (err / (p_ref.detach().abs() + 1e-8)).mean() < rtol
        st, rst = opt.state[p], ref.state[p_ref]
        assert st["state1"].dtype == torch.uint8
        # Dequantized moments stay close to torch's float32 ones (relative to their scale).
        m_err = (dequantized(st, 1) - rst["exp_avg"]).abs().mean() / rst["exp_avg"].abs().mean()
        v_err = (dequantized(st, 2) - rst["exp_avg_sq"]).abs().mean() / rst["exp_avg_sq"].abs().mean()
        assert m_err < 0.02 and v_err < 0.02
        with torch.no_grad():  # re-sync, so each step is judged on its own
            p_ref.copy_(p.float())
            rst["exp_avg"].copy_(dequantized(st, 1))
            rst["exp_avg_sq"].copy_(dequantized(st, 2))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_32bit_matches_torch(name, amsgrad):
    torch.manual_seed(1)
    p_ref = torch.randn(1000, 1001).requires_grad_()
    p = p_ref.detach().clone().requires_grad_()
    ref = torch_twin(name)([p_ref], lr=1e-2, weight_decay=0.1, amsgrad=amsgrad)
    opt = getattr(bnb8.optim, name)([p], lr=1e-2, weight_decay=0.1, amsgrad=amsgrad)
    for _ in range(20):
        g = torch.randn(1000, 1001)
        p_ref.grad, p.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
    torch.testing.assert_close(p, p_ref, atol=2e-5, rtol=1e-5)
    assert opt.state[p]["state1"].dtype == torch.float32


def relative_change_error(opt_cls, steps=60, n=200_000, **kwargs) -> float:
    """||delta_x - delta_ref|| / ||delta_ref|| after `steps` steps on one fixed gradient stream."""
    torch.manual_seed(2)
    p0 = torch.randn(n) * 0.1
    p_ref = p0.clone().requires_grad_()
    p = p0.clone().requires_grad_()
    ref = torch.optim.Adam([p_ref], lr=1e-3)
    opt = opt_cls([p], lr=1e-3, **kwargs)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        g = torch.randn(n, generator=gen) * 0.01 + 0.002
        p_ref.grad, p.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
    d_ref = p_ref.detach() - p0
    return float((p.detach() - p0 - d_ref).norm() / d_ref.norm())


@pytest.mark.slow
def test_60_step_error_no_worse_than_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    ours = relative_change_error(bnb8.optim.Adam8bit)
    theirs = relative_change_error(bnb.optim.Adam8bit)
    print(
        f"relative error of the parameter change after 60 steps: bnb8 {ours:.4g}, bitsandbytes {theirs:.4g}"
    )
    assert ours <= theirs * 1.01


def test_60_step_error_is_small():
    assert relative_change_error(bnb8.optim.Adam8bit, steps=30, n=50_000) < 0.02


def train_tiny_lm(opt_factory, steps=150, seed=0):
    """A byte-level language model on the Python standard library's own source text."""
    import inspect
    import json

    text = (inspect.getsource(json.decoder) + inspect.getsource(json.encoder)).encode()
    data = torch.tensor(list(text), dtype=torch.long)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        bnb8.nn.StableEmbedding(256, 64),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 8, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 256),
    )
    opt = opt_factory(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(data) - 9, (64,), generator=gen)
        x = torch.stack([data[i : i + 8] for i in idx])
        y = data[idx + 8]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


@pytest.mark.slow
def test_training_reaches_32bit_loss():
    loss8 = train_tiny_lm(lambda ps: bnb8.optim.AdamW8bit(ps, lr=2e-3, min_8bit_size=1024), steps=400)
    loss32 = train_tiny_lm(lambda ps: torch.optim.AdamW(ps, lr=2e-3), steps=400)
    print(f"final loss: AdamW8bit {loss8:.4f}, torch AdamW {loss32:.4f}")
    assert loss8 <= loss32 * 1.01


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def run(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 64, generator=gen)
        y = torch.randint(0, 10, (32,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("cls", ["Adam8bit", "AdamW32bit"])
def test_checkpoint_resume_is_bit_exact(cls):
    kwargs = dict(lr=1e-2, min_8bit_size=1024, percentile_clipping=95, max_unorm=2.0)
    make_opt = lambda m: getattr(bnb8.optim, cls)(m.parameters(), **kwargs)  # noqa: E731
    straight = make_model()
    opt = make_opt(straight)
    gen_steps = [(0, 5), (1, 5)]
    for seed, n in gen_steps:
        run(straight, opt, n, seed)

    first = make_model()
    opt1 = make_opt(first)
    run(first, opt1, 5, 0)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = make_model(seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt2 = make_opt(resumed)
    opt2.load_state_dict(ckpt["opt"])
    run(resumed, opt2, 5, 1)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_loads_bitsandbytes_state_dict():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    p_theirs = torch.randn(5000, requires_grad=True)
    theirs = bnb.optim.Adam8bit([p_theirs], lr=1e-3)
    for _ in range(3):
        p_theirs.grad = torch.randn(5000)
        theirs.step()
    sd = theirs.state_dict()
    p = p_theirs.detach().clone().requires_grad_()
    ours = bnb8.optim.Adam8bit([p], lr=1e-3)
    ours.load_state_dict(sd)
    st, quant = ours.state[p], sd["state"][0]["__bnb_optimizer_quant_state__"]
    assert st["step"] == 3
    for key in ("state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2"):
        assert torch.equal(st[key], quant[key]), key
    p.grad = torch.randn(5000)
    ours.step()  # continues from their moments
    assert ours.state[p]["step"] == 4
    # and ours loads into theirs, too
    theirs.load_state_dict(ours.state_dict())


def test_state_dict_loads_with_weights_only():
    model = make_model()
    opt = bnb8.optim.AdamW8bit(model.parameters(), lr=1e-3, min_8bit_size=0, percentile_clipping=90)
    run(model, opt, 2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert "__bnb_optimizer_quant_state__" in sd["state"][0]


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
        for p in model.parameters()
    }
    return params, state, [dict(g) for g in opt.param_groups]


def assert_unchanged(model, opt, snap):
    params, state, groups = snap
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p, before)
    for p in model.parameters():
        after = opt.state[p]
        assert set(after) == set(state[id(p)])
        for k, v in state[id(p)].items():
            assert torch.equal(after[k], v) if torch.is_tensor(v) else after[k] == v
    assert [dict(g) for g in opt.param_groups] == groups


def test_bad_state_dict_leaves_optimizer_unchanged():
    model = make_model()
    opt = bnb8.optim.Adam8bit(model.parameters(), lr=1e-3, min_8bit_size=0)
    run(model, opt, 2)
    good = opt.state_dict()
    snap = snapshot(model, opt)

    wrong_groups = {**good, "param_groups": good["param_groups"] * 2}
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(wrong_groups)
    other = bnb8.optim.Adam8bit(list(make_model().parameters())[:2])
    with pytest.raises(ValueError, match="parameter group 0 has"):
        opt.load_state_dict({"state": {}, "param_groups": other.state_dict()["param_groups"]})
    broken = opt.state_dict()
    broken["state"][3]["__bnb_optimizer_quant_state__"]["state1"] = torch.zeros(7, dtype=torch.uint8)
    with pytest.raises(ValueError, match="state1 has 7 elements"):
        opt.load_state_dict(broken)
    missing = opt.state_dict()
    del missing["state"][0]["__bnb_optimizer_quant_state__"]["absmax2"]
    with pytest.raises(ValueError, match="absmax2"):
        opt.load_state_dict(missing)
    assert_unchanged(model, opt, snap)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1.0}, "learning rate"),
        ({"eps": -1e-8}, "epsilon"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (1.0, 0.999)}, "beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "beta parameter at index 1"),
        ({"betas": (0.9,)}, "betas"),
        ({"optim_bits": 16}, "optim_bits"),
        ({"percentile_clipping": 0}, "percentile_clipping"),
        ({"percentile_clipping": 101}, "percentile_clipping"),
        ({"min_8bit_size": -1}, "min_8bit_size"),
        ({"max_unorm": -1.0}, "max_unorm"),
        ({"block_wise": False}, "block_wise"),
        ({"optim_bits": 8, "amsgrad": True}, "amsgrad"),
        ({"capturable": True}, "capturable"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bnb8.optim.Adam([torch.zeros(10, requires_grad=True)], **kwargs)


def test_bad_params():
    with pytest.raises(ValueError, match="empty parameter list"):
        bnb8.optim.Adam8bit([])
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        bnb8.optim.Adam8bit([torch.zeros(10, dtype=torch.int64)])
    with pytest.raises(ValueError, match="optim_bits=8"):
        bnb8.optim.Adam8bit([torch.zeros(10, requires_grad=True)], optim_bits=32)


def test_failed_step_changes_nothing():
    model = make_model()
    opt = bnb8.optim.Adam8bit(model.parameters(), lr=1e-3, min_8bit_size=0)
    run(model, opt, 1)
    snap = snapshot(model, opt)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    params[-1].grad = torch.randn(10).to_sparse()  # a bad gradient, seen after the good ones
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert_unchanged(model, opt, snap)


def test_sparse_gradient_is_rejected():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = bnb8.optim.Adam8bit(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_parameter_that_changed_size():
    p = torch.nn.Parameter(torch.randn(5000))
    opt = bnb8.optim.Adam8bit([p])
    p.grad = torch.randn(5000)
    opt.step()
    p.data = torch.randn(6000)
    p.grad = torch.randn(6000)
    with pytest.raises(RuntimeError, match="changed size"):
        opt.step()


def test_nonfinite_gradient_never_poisons_a_block():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000))
    opt = bnb8.optim.Adam8bit([p], lr=1e-2, min_8bit_size=0)
    p.grad = torch.randn(1000)
    opt.step()
    before = p.detach().clone()
    m_before = dequantized(opt.state[p], 1).clone()
    g = torch.randn(1000)
    g[10], g[300] = float("nan"), float("inf")
    p.grad = g
    opt.step()
    st = opt.state[p]
    assert torch.isfinite(st["absmax1"]).all() and torch.isfinite(st["absmax2"]).all()
    assert p[10] == before[10] and p[300] == before[300]
    # the element's first moment keeps its value (up to requantization in the new block scale)
    assert abs(dequantized(st, 1)[10] - m_before[10]) <= st["absmax1"][0] * 0.02
    changed = (p.detach() != before).float()
    assert changed.sum() >= 990  # the 254 other elements of those blocks were updated normally
    assert torch.isfinite(p).all()
    assert opt.nonfinite_count == 2


def test_skip_zeros_leaves_zero_gradient_elements():
    p = torch.nn.Parameter(torch.randn(4096))
    opt = bnb8.optim.Adam8bit([p], skip_zeros=True)
    g = torch.randn(4096)
    g[::2] = 0
    p.grad = g
    before = p.detach().clone()
    opt.step()
    assert torch.equal(p[::2], before[::2])
    assert (p[1::2] != before[1::2]).all()


def test_percentile_clipping_scales_down_a_spike():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(5000))
    q = torch.nn.Parameter(torch.zeros(5000))
    clipped = bnb8.optim.Adam32bit([p], lr=1e-2, percentile_clipping=50)
    plain = bnb8.optim.Adam32bit([q], lr=1e-2)
    for i in range(10):
        g = torch.randn(5000) * (100.0 if i == 9 else 1.0)
        p.grad, q.grad = g.clone(), g.clone()
        clipped.step()
        plain.step()
    history = clipped.state[p]["gnorm_vec"]
    assert history[9] > 100 * history[:9].max() * 0.5  # the spike's squared norm was recorded
    # the spike's first moment contribution was clipped to the median norm
    m_clipped = clipped.state[p]["state1"].norm()
    m_plain = plain.state[q]["state1"].norm()
    assert m_clipped < m_plain / 5


@pytest.mark.parametrize("percentile", [50, 90])
def test_percentile_clipping_clips_to_the_nearest_rank(percentile):
    """SGD without momentum shows the gradient scale directly: after 8 steps with gradients of known
    norms, a spike is scaled to the nearest-rank percentile of the 9 recorded norms (its own included)."""
    p = torch.nn.Parameter(torch.zeros(5000))
    opt = bnb8.optim.SGD32bit([p], lr=1.0, percentile_clipping=percentile)
    direction = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    norms = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]
    for norm in norms:
        p.grad = direction * norm
        opt.step()
    before = p.detach().clone()
    p.grad = direction * 100.0
    opt.step()
    recorded = sorted([*norms, 100.0])
    rank = math.ceil(percentile / 100 * len(recorded)) - 1
    assert (before - p.detach()).norm().item() == pytest.approx(recorded[rank], rel=1e-5)


def test_max_unorm_caps_the_update():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5000))
    opt = bnb8.optim.Adam8bit([p], lr=1.0, max_unorm=0.01)
    p.grad = torch.randn(5000)
    before = p.detach().clone()
    opt.step()
    # The update per unit of learning rate, m_hat / (sqrt(v_hat) + eps), has norm ~sqrt(n) >> 0.01 ||p||,
    # so the cap binds: ||delta|| = lr * 0.01 * ||p||, on the first step (bias corrections included) too.
    delta = float((p.detach() - before).norm())
    assert delta == pytest.approx(1.0 * 0.01 * float(before.norm()), rel=0.02)
    assert opt.state[p]["unorm_vec"].item() > 5 * 0.01 * float(before.norm())  # the cap was binding


def test_state_bytes_per_parameter():
    p8 = torch.nn.Parameter(torch.randn(1 << 20))
    p32 = torch.nn.Parameter(torch.randn(1 << 20))
    o8, o32 = bnb8.optim.Adam8bit([p8]), bnb8.optim.Adam32bit([p32])
    for p, o in ((p8, o8), (p32, o32)):
        p.grad = torch.randn_like(p)
        o.step()

    def state_bytes(opt, p):
        # qmaps are shared by every parameter of the optimizer: not per-parameter cost
        return sum(
            v.nbytes for k, v in opt.state[p].items() if torch.is_tensor(v) and not k.startswith("qmap")
        )

    assert state_bytes(o8, p8) / p8.numel() <= 2.04
    assert state_bytes(o32, p32) / p32.numel() == 8


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def test_step_needs_no_memory_proportional_to_the_parameter():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("peak RSS cannot be reset on this system")
    n = 16 << 20  # 64 MB of float32
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    opt = bnb8.optim.Adam8bit([p])
    opt.step()  # creates the state
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _peak_rss_kb()
    opt.step()
    extra_mb = (_peak_rss_kb() - base) / 1024
    assert extra_mb < 8, f"step() raised peak RSS by {extra_mb:.1f} MB for a 64 MB parameter"


def test_many_small_tensors_make_one_native_call(monkeypatch):
    from bnb8.backends import cpu

    calls = []  # tensors per native update call (fn, rule, params, ...)
    real = cpu._update_call
    monkeypatch.setattr(cpu, "_update_call", lambda *a: calls.append(len(a[2])) or real(*a))
    params = [torch.nn.Parameter(torch.randn(300)) for _ in range(200)]
    opt = bnb8.optim.Adam8bit(params, min_8bit_size=0)
    for p in params:
        p.grad = torch.randn(300)
    opt.step()
    assert calls == [200]


def test_eager_cpu_step_bumps_version_counters_like_the_op():
    """Eager CPU steps call the kernel without torch.library's dispatch; autograd must still see the
    in-place update of a tensor it saved."""
    p = torch.nn.Parameter(torch.randn(5000))
    opt = bnb8.optim.Adam8bit([p])
    p.grad = torch.randn(5000)
    opt.step()
    versions = (p._version, opt.state[p]["state1"]._version, opt.state[p]["absmax2"]._version)
    x = torch.randn(5000, requires_grad=True)
    y = (x * p).sum()  # saves p for x's gradient
    opt.step()
    after = (p._version, opt.state[p]["state1"]._version, opt.state[p]["absmax2"]._version)
    assert all(b > a for a, b in zip(versions, after))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_fp16_and_bf16_params_update_in_fp32_math():
    for dtype in (torch.float16, torch.bfloat16):
        p = torch.nn.Parameter(torch.randn(8192).to(dtype))
        opt = bnb8.optim.Adam8bit([p], lr=1e-2)
        p.grad = torch.randn(8192).to(dtype)
        before = p.detach().clone()
        opt.step()
        assert p.dtype == dtype
        assert (p != before).float().mean() > 0.9


# -- GlobalOptimManager ---------------------------------------------------------------------------


def test_manager_overrides_as_documented():
    mng = GlobalOptimManager.get_instance()
    model = make_model()
    mng.register_parameters(model.parameters())
    model = model.to(torch.device("cpu"))  # as .cuda() in the docs: the Parameter objects stay
    opt = bnb8.optim.Adam(model.parameters(), lr=1e-3, optim_bits=8, min_8bit_size=0)
    mng.override_config(model[0].weight, "optim_bits", 32)  # after construction: applies from the first step
    mng.override_config([model[2].weight], key_value_dict={"lr": 0.0, "betas": (0.9, 0.98)})
    before = model[2].weight.detach().clone()
    run(model, opt, 2)
    assert opt.state[model[0].weight]["state1"].dtype == torch.float32
    assert opt.state[model[0].bias]["state1"].dtype == torch.uint8
    assert torch.equal(model[2].weight, before)  # lr override 0


def test_manager_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key"):
        GlobalOptimManager.get_instance().override_config(torch.zeros(1), "learning_rate", 1.0)


def test_manager_is_a_singleton():
    assert GlobalOptimManager.get_instance() is GlobalOptimManager.get_instance()
    with pytest.raises(RuntimeError, match="get_instance"):
        GlobalOptimManager()


def test_is_sparse_override_skips_zero_gradients():
    emb = torch.nn.Embedding(100, 64)
    GlobalOptimManager.get_instance().override_config(emb.weight, key_value_dict={"is_sparse": True})
    opt = bnb8.optim.Adam8bit(emb.parameters())
    before = emb.weight.detach().clone()
    emb(torch.tensor([3, 5])).sum().backward()
    opt.step()
    changed = (emb.weight != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 5]


# -- embeddings -------------------------------------------------------------------------------------


def test_stable_embedding_keeps_32bit_state_and_normalizes():
    torch.manual_seed(0)
    emb = bnb8.nn.StableEmbedding(1000, 64)
    out = emb(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 64)
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 3), atol=1e-5, rtol=0)
    bound = math.sqrt(6 / (1000 + 64))  # Xavier uniform
    assert emb.weight.abs().max() <= bound
    opt = bnb8.optim.Adam8bit(emb.parameters())
    out.sum().backward()
    opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    plain = bnb8.nn.Embedding(1000, 64, padding_idx=0)
    assert torch.equal(plain.weight[0], torch.zeros(64))


def test_import_as_bnb_runs_bitsandbytes_code():
    import bnb8 as bnb

    model = torch.nn.Linear(128, 128)
    adam = bnb.optim.Adam8bit(model.parameters(), lr=0.001, betas=(0.9, 0.995))
    model(torch.randn(4, 128)).sum().backward()
    adam.step()
    codes, state = bnb.functional.quantize_blockwise(torch.randn(1000), blocksize=256)
    assert bnb.functional.dequantize_blockwise(codes, state).shape == (1000,)
    assert torch.equal(dynamic_map(True), bnb.functional.create_dynamic_map(signed=True))


@pytest.mark.parametrize(
    "cls",
    [bnb8.optim.AdamW8bit, bnb8.optim.LAMB8bit, bnb8.optim.AdEMAMix8bit],
    ids=["adamw", "lamb (norms pass)", "ademamix (3 states)"],
)
def test_fused_buckets_update_like_one_optimizer_per_parameter(cls):
    """However step() groups parameters into fused calls (dtypes, 8-bit and 32-bit states, groups with
    equal and different settings, clipping, an override, parameters that skip steps), every parameter
    ends exactly where an optimizer of its own would take it."""
    gen = torch.Generator().manual_seed(0)
    specs = [  # (group, numel, dtype)
        (0, 5000, torch.float32), (0, 300, torch.float32), (0, 6000, torch.bfloat16), (0, 4097, torch.float16),
        (1, 5000, torch.float32), (1, 9000, torch.float32),  # same settings as group 0: shares its calls
        (2, 5000, torch.float32), (2, 100, torch.float32),  # other lr and betas, percentile clipping
        (3, 5000, torch.float32),  # only clipping differs from group 0
    ]  # fmt: skip
    n_betas = len(cls([torch.nn.Parameter(torch.zeros(1))]).defaults["betas"])  # AdEMAMix has 3
    groups = [
        {},
        {},
        {"lr": 3e-3, "betas": (0.8, 0.99, 0.9995)[:n_betas], "percentile_clipping": 90},
        {"percentile_clipping": 5},
    ]
    start = [torch.randn(n, generator=gen).to(dtype) for _, n, dtype in specs]
    fused = [torch.nn.Parameter(t.clone()) for t in start]
    alone = [torch.nn.Parameter(t.clone()) for t in start]
    mng = GlobalOptimManager.get_instance()
    for params in (fused, alone):
        mng.override_config(params[4], "optim_bits", 32)
    opt = cls(
        [
            {"params": [p for (g, _, _), p in zip(specs, fused) if g == gi], **groups[gi]}
            for gi in range(len(groups))
        ]
    )
    singles = [cls([{"params": [p], **groups[g]}]) for (g, _, _), p in zip(specs, alone)]
    for step in range(6):
        for i, (a, b) in enumerate(zip(fused, alone)):
            skips = (i + step) % 4 == 0  # some parameters get no gradient on some steps
            grad = None if skips else (torch.randn(a.shape, generator=gen) * 0.01).to(a.dtype)
            a.grad, b.grad = grad, None if grad is None else grad.clone()
        opt.step()
        for single in singles:
            single.step()
    assert opt.state[fused[4]]["state1"].dtype == torch.float32  # the override applied
    assert opt.state[fused[0]]["state1"].dtype == torch.uint8
    for i, (a, b) in enumerate(zip(fused, alone)):
        assert torch.equal(a.detach(), b.detach()), f"parameter {i} {specs[i]}"
