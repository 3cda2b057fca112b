"""The optimizer core off the happy path: configurations changed between steps, state dicts that do not
fit (or come from torch.optim), overrides among several parameters and optimizers, pickling, hooks,
embeddings converted to half precision, and argument types. Each case either works as torch /
bitsandbytes users expect or raises a clear error that leaves parameters and state as they were."""

from __future__ import annotations

import collections
import copy
import io
import math
import pickle

import pytest
import torch

import bnb8
from bnb8.optim import GlobalOptimManager


@pytest.fixture(autouse=True)
def fresh_manager():
    GlobalOptimManager.get_instance().initialize()
    yield
    GlobalOptimManager.get_instance().initialize()


def trained(cls=bnb8.optim.Adam8bit, n=5000, steps=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(n))
    opt = cls([p], **kwargs)
    for _ in range(steps):
        p.grad = torch.randn(n)
        opt.step()
    return p, opt


def continues_alike(ref, p_ref, opt, p, steps=3):
    """Three more steps of both optimizers on the same gradients end on the same parameters."""
    for _ in range(steps):
        g = torch.randn(p.shape)
        p_ref.grad, p.grad = g, g.clone()
        ref.step()
        opt.step()
    torch.testing.assert_close(p.detach(), p_ref.detach(), rtol=1e-5, atol=1e-6)


def snapshot(p, opt):
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
    return p.detach().clone(), state, copy.deepcopy(opt.param_groups[0]["lr"])


def assert_unchanged(p, opt, snap):
    before_p, before_state, _ = snap
    assert torch.equal(p.detach(), before_p)
    assert set(opt.state[p]) == set(before_state)
    for k, v in before_state.items():
        now = opt.state[p][k]
        assert torch.equal(now, v) if torch.is_tensor(v) else now == v


# -- state kinds: 8-bit and 32-bit states never meet in one native call ------------------------------


@pytest.mark.parametrize("when", ["after steps", "before the first step"])
def test_amsgrad_switched_on_for_8bit_state_is_an_error(when):
    p, opt = trained(steps=2 if when == "after steps" else 0)
    opt.param_groups[0]["amsgrad"] = True
    p.grad = torch.randn_like(p)
    snap = snapshot(p, opt)
    with pytest.raises(ValueError, match="amsgrad=True is implemented with 32-bit state only"):
        opt.step()
    assert_unchanged(p, opt, snap)


def test_state_dict_mixing_8bit_and_32bit_states_is_rejected():
    p, opt = trained()
    sd = opt.state_dict()
    sd["state"][0]["__bnb_optimizer_quant_state__"]["state2"] = torch.rand(p.numel())  # 32-bit next to 8-bit
    snap = snapshot(p, opt)
    with pytest.raises(ValueError, match="all of one kind"):
        opt.load_state_dict(sd)
    assert_unchanged(p, opt, snap)


def test_8bit_state_dict_into_a_32bit_amsgrad_optimizer_is_rejected():
    """A bitsandbytes Adam8bit state dict (its groups name neither amsgrad nor optim_bits) cannot
    continue an amsgrad optimizer, whose running maximum exists in 32-bit only."""
    _, source = trained()
    sd = source.state_dict()
    for group in sd["param_groups"]:
        del group["amsgrad"], group["optim_bits"]
    p, opt = trained(bnb8.optim.Adam, amsgrad=True)
    snap = snapshot(p, opt)
    with pytest.raises(ValueError, match="state3 is missing"):
        opt.load_state_dict(sd)
    assert_unchanged(p, opt, snap)


# -- state dicts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_state_dict_missing_a_moment_after_the_first_step_is_rejected(steps):
    p, opt = trained(steps=steps)
    sd = opt.state_dict()
    quant = sd["state"][0]["__bnb_optimizer_quant_state__"]
    for key in ("state2", "absmax2", "qmap2"):
        del quant[key]
    snap = snapshot(p, opt)
    with pytest.raises(ValueError, match=f"step is {steps} but state2 is missing"):
        opt.load_state_dict(sd)
    assert_unchanged(p, opt, snap)


def test_state_dict_with_unknown_state_is_rejected():
    p, opt = trained()
    sd = opt.state_dict()
    sd["state"][0]["momentum_buffer"] = torch.zeros(p.numel())
    with pytest.raises(ValueError, match=r"unknown state \['momentum_buffer'\]"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_torch_adam_state_dict_loads_and_continues_like_torch(amsgrad):
    torch.manual_seed(0)
    p_ref = torch.nn.Parameter(torch.randn(3000))
    ref = torch.optim.Adam([p_ref], lr=1e-2, amsgrad=amsgrad)
    for _ in range(5):
        p_ref.grad = torch.randn(3000)
        ref.step()
    p = torch.nn.Parameter(p_ref.detach().clone())
    opt = bnb8.optim.Adam([p], lr=1e-2, amsgrad=amsgrad)
    opt.load_state_dict(ref.state_dict())
    assert opt.state[p]["step"] == 5 and opt.state[p]["state1"].dtype == torch.float32
    continues_alike(ref, p_ref, opt, p)


def test_state_dict_keeps_scheduler_and_user_keys_of_param_groups():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(100))
    opt = bnb8.optim.AdamW8bit([{"params": [p], "name": "body"}], lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        p.grad = torch.randn(100)
        opt.step()
        sched.step()
    sd, sched_sd = opt.state_dict(), sched.state_dict()
    p2 = torch.nn.Parameter(p.detach().clone())
    opt2 = bnb8.optim.AdamW8bit([p2], lr=1e-2)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["name"] == "body" and opt2.param_groups[0]["initial_lr"] == 1e-2
    # a scheduler resumed at its epoch needs initial_lr in the groups (KeyError without it)
    torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5, last_epoch=sched_sd["last_epoch"])
    # torch's order: optimizer and scheduler built, then both loaded; both then continue alike
    p3 = torch.nn.Parameter(p.detach().clone())
    opt3 = bnb8.optim.AdamW8bit([p3], lr=1e-2)
    sched3 = torch.optim.lr_scheduler.StepLR(opt3, step_size=2, gamma=0.5)
    opt3.load_state_dict(sd)
    sched3.load_state_dict(sched_sd)
    for s in (sched, sched3):
        s.step()
    assert opt3.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 2.5e-3


def test_state_dict_post_hooks_see_the_nested_layout():
    p, opt = trained()
    seen = []
    opt.register_state_dict_post_hook(lambda optimizer, sd: seen.append(sorted(sd["state"][0])))
    opt.state_dict()
    assert seen == [["__bnb_optimizer_quant_state__", "step"]]


def test_state_dict_load_hooks_run():
    p, opt = trained()
    sd = opt.state_dict()
    calls = []

    def pre(optimizer, state_dict):
        calls.append("pre")
        state_dict = copy.deepcopy(state_dict)
        state_dict["param_groups"][0]["lr"] = 0.5
        return state_dict

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(lambda optimizer: calls.append("post"))
    opt.load_state_dict(sd)
    assert calls == ["pre", "post"] and opt.param_groups[0]["lr"] == 0.5


# -- norms enabled after the state exists ------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("percentile_clipping", 90), ("max_unorm", 0.5)])
def test_clipping_enabled_after_the_first_step(key, value):
    p, opt = trained(lr=1e-2)
    GlobalOptimManager.get_instance().override_config(p, key, value)
    for _ in range(3):
        before, step = p.detach().clone(), opt.state[p]["step"]
        p.grad = torch.randn_like(p)
        opt.step()
        assert opt.state[p]["step"] == step + 1
        # the gradient was not scaled to zero: the parameter moved by a normal Adam step
        assert float((p.detach() - before).abs().mean()) > 1e-3


def test_bitsandbytes_state_dict_into_a_clipping_optimizer_steps():
    source_p, source = trained(bnb8.optim.Adam8bit)
    sd = source.state_dict()
    for key in ("gnorm_vec", "unorm_vec"):  # bitsandbytes' Adam8bit keeps neither
        sd["state"][0]["__bnb_optimizer_quant_state__"].pop(key, None)
    for key in ("percentile_clipping", "max_unorm"):  # nor names them in its groups
        del sd["param_groups"][0][key]
    p = torch.nn.Parameter(source_p.detach().clone())
    opt = bnb8.optim.Adam8bit([p], percentile_clipping=95, max_unorm=1.0)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["percentile_clipping"] == 95 and opt.param_groups[0]["max_unorm"] == 1.0
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["step"] == 3 and not torch.equal(p.detach(), source_p.detach())


def test_percentile_clipping_with_a_non_finite_gradient():
    """The NaN element is skipped; the rest of that gradient is not zeroed, and the history is not
    poisoned for later steps."""
    p, opt = trained(lr=1e-2, percentile_clipping=50, steps=3)
    p.grad = torch.randn_like(p)
    p.grad[7] = float("nan")
    before = p.detach().clone()
    opt.step()
    moved = (p.detach() - before).abs()
    assert moved[7] == 0 and float(moved.mean()) > 1e-3
    for _ in range(3):
        before = p.detach().clone()
        p.grad = torch.randn_like(p)
        opt.step()
        assert torch.isfinite(p).all() and float((p.detach() - before).abs().mean()) > 1e-3


# -- param groups ------------------------------------------------------------------------------------


def test_invalid_param_group_is_not_added():
    p, opt = trained()
    extra = torch.nn.Parameter(torch.randn(10))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [extra], "lr": -1.0})
    assert len(opt.param_groups) == 1


def test_hand_edited_invalid_group_is_rejected_at_step():
    p, opt = trained()
    opt.param_groups[0]["lr"] = -1.0
    p.grad = torch.randn_like(p)
    snap = snapshot(p, opt)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    assert_unchanged(p, opt, snap)


# -- GlobalOptimManager ------------------------------------------------------------------------------


def test_manager_override_does_not_leak_to_other_parameters():
    """An override of one parameter stays with it, whatever the grouping or optimizer."""
    torch.manual_seed(0)
    mng = GlobalOptimManager.get_instance()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    mng.register_parameters(model.parameters())
    mng.override_config(model[0].weight, "lr", 0.0)
    groups = [
        {"params": [model[1].weight, model[0].weight]},
        {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0},
    ]
    opt = bnb8.optim.AdamW8bit(groups, lr=1e-2)
    other = torch.nn.Linear(64, 64)
    other_opt = bnb8.optim.Adam8bit(other.parameters(), lr=1e-2)
    before = {name: t.detach().clone() for name, t in [*model.named_parameters(), ("other", other.weight)]}
    model(torch.randn(8, 64)).sum().backward()
    other(torch.randn(8, 64)).sum().backward()
    opt.step()
    other_opt.step()
    assert torch.equal(model[0].weight, before["0.weight"])  # its own lr = 0
    assert not torch.equal(model[1].weight, before["1.weight"])
    assert not torch.equal(other.weight, before["other"])


def test_manager_positional_override_for_a_replaced_parameter():
    """As in bitsandbytes: overrides a parameter had when registered follow its position to a
    replacement tensor of the same shape (and not to one of another shape)."""
    mng = GlobalOptimManager.get_instance()
    old = torch.nn.Parameter(torch.randn(5000))
    mng.override_config(old, "optim_bits", 32)
    mng.register_parameters([old])
    new = torch.nn.Parameter(old.detach().clone())
    opt = bnb8.optim.Adam8bit([new])
    new.grad = torch.randn_like(new)
    opt.step()
    assert opt.state[new]["state1"].dtype == torch.float32
    reshaped = torch.nn.Parameter(torch.randn(50, 100))
    opt2 = bnb8.optim.Adam8bit([reshaped])
    reshaped.grad = torch.randn_like(reshaped)
    opt2.step()
    assert opt2.state[reshaped]["state1"].dtype == torch.uint8


def test_override_of_another_familys_setting_is_an_error():
    p, opt = trained()
    GlobalOptimManager.get_instance().override_config(p, "momentum", 0.9)
    p.grad = torch.randn_like(p)
    snap = snapshot(p, opt)
    with pytest.raises(ValueError, match=r"\['momentum'\].*not a setting of Adam8bit"):
        opt.step()
    assert_unchanged(p, opt, snap)


# -- pickling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_optimizer_copies_step_like_the_original(how):
    p, opt = trained()
    if how == "deepcopy":
        p2, opt2 = copy.deepcopy((p, opt))
    elif how == "pickle":
        p2, opt2 = pickle.loads(pickle.dumps((p, opt)))
    else:
        buf = io.BytesIO()
        torch.save((p, opt), buf)
        buf.seek(0)
        p2, opt2 = torch.load(buf, weights_only=False)
    g = torch.randn_like(p)
    p.grad, p2.grad = g, g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p.detach(), p2.detach())
    assert torch.equal(opt.state[p]["state1"], opt2.state[p2]["state1"])


# -- embeddings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stable_embedding_after_conversion_to_half_precision(dtype):
    torch.manual_seed(0)
    emb = bnb8.nn.StableEmbedding(100, 16)
    idx = torch.tensor([[1, 2, 3]])
    reference = emb(idx)
    out = emb.to(dtype)(idx)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


def test_embedding_copy_keeps_32bit_state():
    emb = copy.deepcopy(bnb8.nn.StableEmbedding(5000, 4))
    opt = bnb8.optim.Adam8bit(emb.parameters(), min_8bit_size=0)
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    assert opt.state[emb.norm.weight]["state1"].dtype == torch.uint8


# -- arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": None}, TypeError, "lr: expected a number"),
        ({"lr": "0.1"}, TypeError, "lr: expected a number"),
        ({"eps": None}, TypeError, "eps: expected a number"),
        ({"betas": ("a", 0.9)}, TypeError, r"betas\[0\]: expected a number"),
        ({"max_unorm": "x"}, TypeError, "max_unorm: expected a number"),
        ({"min_8bit_size": 1.5}, ValueError, "min_8bit_size: expected a non-negative integer"),
        ({"min_8bit_size": math.nan}, ValueError, "min_8bit_size: expected a non-negative integer"),
        ({"optim_bits": 8.0}, ValueError, "optim_bits: expected 8 or 32"),
    ],
)
def test_argument_types(kwargs, error, match):
    with pytest.raises(error, match=match):
        bnb8.optim.Adam([torch.nn.Parameter(torch.randn(10))], **kwargs)


def test_fixed_variants_see_positional_arguments():
    p = torch.nn.Parameter(torch.randn(10))
    opt = bnb8.optim.AdamW8bit([p], 1e-3, (0.9, 0.999), 1e-8, 0.05, False, 8)
    assert opt.defaults["weight_decay"] == 0.05 and opt.defaults["optim_bits"] == 8
    with pytest.raises(ValueError, match="Adam8bit has optim_bits=8; got optim_bits=32"):
        bnb8.optim.Adam8bit([p], 1e-3, (0.9, 0.999), 1e-8, 0.0, False, 32)


# -- options switched between steps: every state keeps its meaning ------------------------------------


def _run_switch(make_ours, make_torch, switch, steps=(3, 3), n=(2000, 1000), seed=0):
    """Both optimizers over the same gradients; `switch(group)` is applied to every group after
    steps[0] steps. Returns the largest parameter difference and the largest parameter change."""
    torch.manual_seed(seed)
    init = [torch.randn(k) for k in n]
    ours_p = [torch.nn.Parameter(t.clone()) for t in init]
    ref_p = [torch.nn.Parameter(t.clone()) for t in init]
    ours, ref = make_ours(ours_p), make_torch(ref_p)
    for i in range(sum(steps)):
        if i == steps[0]:
            for opt in (ours, ref):
                for group in opt.param_groups:
                    switch(group)
        for a, b in zip(ours_p, ref_p):
            g = torch.randn_like(a)
            a.grad, b.grad = g, g.clone()
        ours.step()
        ref.step()
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(ours_p, ref_p))
    change = max(float((b.detach() - t).abs().max()) for b, t in zip(ref_p, init))
    return diff, change


@pytest.mark.parametrize(
    "before, after",
    [({"momentum": 0.9, "centered": True}, {"momentum": 0.0}), ({"momentum": 0.9, "centered": True}, {"centered": False}),
     ({"momentum": 0.9}, {"momentum": 0.0})],
)  # fmt: skip
def test_rmsprop_options_switched_between_steps_match_torch(before, after):
    # (torch cannot switch momentum on after the first step: its state has no buffer then)
    diff, change = _run_switch(
        lambda ps: bnb8.optim.RMSprop32bit(ps, lr=1e-2, **before),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-2, **before),
        lambda group: group.update(after),
    )
    assert diff < 1e-5 * max(change, 1.0)


@pytest.mark.parametrize("momentum", [(0.0, 0.9), (0.9, 0.0)], ids=["on", "off"])
def test_sgd_momentum_switched_between_steps_matches_torch(momentum):
    diff, change = _run_switch(
        lambda ps: bnb8.optim.SGD32bit(ps, lr=1e-2, momentum=momentum[0], dampening=0.5),
        lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=momentum[0], dampening=0.5),
        lambda group: group.update(momentum=momentum[1]),
    )
    assert diff < 1e-6 * max(change, 1.0)


def test_parameters_with_and_without_a_buffer_step_together():
    """After momentum is switched off, a parameter that has a buffer and one that never had one
    share a step (in either order), and the optimizer's state dict loads back."""
    for order in ((0, 1), (1, 0)):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(300)) for _ in range(2)]
        opt = bnb8.optim.RMSprop32bit([ps[order[0]], ps[order[1]]], lr=1e-2, momentum=0.9)
        ps[0].grad = torch.randn(300)
        opt.step()  # only ps[0] gets state (with a momentum buffer)
        opt.param_groups[0]["momentum"] = 0.0
        for p in ps:
            p.grad = torch.randn(300)
        opt.step()
        assert opt.state[ps[0]]["step"] == 2 and opt.state[ps[1]]["step"] == 1
        fresh = bnb8.optim.RMSprop32bit([ps[order[0]], ps[order[1]]], lr=1e-2)
        fresh.load_state_dict(opt.state_dict())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ps: bnb8.optim.SGD(ps, lr=0.1, momentum=None), "momentum: expected a number"),
        (lambda ps: bnb8.optim.RMSprop(ps, alpha="0.9"), "alpha: expected a number"),
        (lambda ps: bnb8.optim.Adagrad(ps, lr_decay=None), "lr_decay: expected a number"),
        (lambda ps: bnb8.optim.Lion(ps, betas=0.9), "betas: expected a tuple of 2 floats"),
        (lambda ps: bnb8.optim.AdEMAMix(ps, betas=None), "betas: expected a tuple of 3 floats"),
    ],
)
def test_family_argument_types(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make([torch.nn.Parameter(torch.randn(10))])


def test_fixed_bits_variants_take_bitsandbytes_positional_order():
    """bitsandbytes' SGD8bit, LARS8bit, Lion8bit, ... have no optim_bits slot; Adam8bit and
    Adagrad8bit do."""
    p = torch.nn.Parameter(torch.randn(10))
    assert bnb8.optim.SGD8bit([p], 0.1, 0.9, 0.0, 0.0, False, None, 100).defaults["min_8bit_size"] == 100
    assert bnb8.optim.LARS8bit([p], 0.1, 0.9, 0.0, 0.0, False, None, 100).defaults["min_8bit_size"] == 100
    assert bnb8.optim.Lion8bit([p], 1e-4, (0.9, 0.99), 0.0, None, 100).defaults["min_8bit_size"] == 100
    assert bnb8.optim.Adagrad8bit([p], 0.01, 0, 0, 0, 1e-10, 8, None, 100).defaults["min_8bit_size"] == 100
    assert (
        bnb8.optim.Adam8bit([p], 1e-3, (0.9, 0.999), 1e-8, 0, False, 8, None, 100).defaults["min_8bit_size"]
        == 100
    )


def test_bitsandbytes_group_settings_load_and_are_saved():
    """bitsandbytes' SGD/RMSprop groups hold momentum, dampening and alpha in `betas`: loading maps
    them to the settings, saving writes them (and `eps`) so bitsandbytes can load bnb8's dicts."""
    p = torch.nn.Parameter(torch.randn(5000))
    sgd = bnb8.optim.SGD8bit([p], lr=0.1, momentum=0.9, dampening=0.1)
    p.grad = torch.randn(5000)
    sgd.step()
    sd = sgd.state_dict()
    assert sd["param_groups"][0]["betas"] == (0.9, 0.1) and sd["param_groups"][0]["eps"] == 0.0
    for key in ("momentum", "dampening"):  # as bitsandbytes saves it
        del sd["param_groups"][0][key]
    sd["param_groups"][0]["betas"] = (0.5, 0.2)
    other = bnb8.optim.SGD8bit([p], lr=0.1, momentum=0.9)
    other.load_state_dict(sd)
    assert other.param_groups[0]["momentum"] == 0.5 and other.param_groups[0]["dampening"] == 0.2
    assert "betas" not in other.param_groups[0]
    rms = bnb8.optim.RMSprop8bit([p], lr=0.01, alpha=0.9)
    assert rms.state_dict()["param_groups"][0]["betas"] == (0.9, 0.0)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda ps: bnb8.optim.SGD(ps, lr=1e-2, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)),
        (lambda ps: bnb8.optim.SGD(ps, lr=1e-2), lambda ps: torch.optim.SGD(ps, lr=1e-2)),
        (lambda ps: bnb8.optim.RMSprop(ps, momentum=0.9, centered=True),
         lambda ps: torch.optim.RMSprop(ps, momentum=0.9, centered=True)),
        (lambda ps: bnb8.optim.Adagrad(ps, initial_accumulator_value=0.1),
         lambda ps: torch.optim.Adagrad(ps, initial_accumulator_value=0.1)),
    ],
    ids=["sgd-momentum", "sgd", "rmsprop", "adagrad"],
)  # fmt: skip
def test_torch_state_dicts_of_other_families_load_and_continue_like_torch(ours, theirs):
    torch.manual_seed(0)
    p_ref = torch.nn.Parameter(torch.randn(3000))
    ref = theirs([p_ref])
    for _ in range(4):
        p_ref.grad = torch.randn(3000)
        ref.step()
    p = torch.nn.Parameter(p_ref.detach().clone())
    opt = ours([p])
    opt.load_state_dict(ref.state_dict())
    continues_alike(ref, p_ref, opt, p)


def test_meta_parameter_is_a_clear_error_at_step():
    p = torch.nn.Parameter(torch.empty(5000, device="meta"))
    p.grad = torch.empty(5000, device="meta")
    opt = bnb8.optim.Adam8bit([p])  # constructing on meta is fine, as in torch (deferred init)
    with pytest.raises(RuntimeError, match=r"meta device .* model\.to_empty"):
        opt.step()
    assert not opt.state


def test_explicit_override_wins_over_a_module_override():
    """README/manager.py: a key set with override_config beats the same key of register_module_override;
    the module override's other keys still apply."""
    layer = torch.nn.Linear(80, 80)
    mng = bnb8.optim.GlobalOptimManager.get_instance()
    mng.register_module_override(layer, "weight", {"lr": 1.0, "optim_bits": 32})
    opt = bnb8.optim.Adam8bit(layer.parameters(), lr=1e-3)
    mng.override_config(layer.weight, "lr", 1e-5)
    layer(torch.randn(4, 80)).sum().backward()
    opt.step()
    config = opt.get_config(0, 0, opt.param_groups[0])
    assert config["lr"] == 1e-5 and config["optim_bits"] == 32
    assert opt.state[layer.weight]["state1"].dtype == torch.float32


# -- corrupt or foreign state dicts are rejected at load, never half-applied at step (atomicity audit) ---
def _quant(sd, i=0):
    return sd["state"][i]["__bnb_optimizer_quant_state__"]


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda sd: _quant(sd)["absmax1"].__setitem__(0, float("nan")), "absmax1 holds negative or NaN"),
        (lambda sd: _quant(sd)["absmax2"].mul_(-1), "absmax2 holds negative or NaN"),
        (
            lambda sd: _quant(sd).__setitem__("qmap1", _quant(sd)["qmap1"].flip(0)),
            "qmap1: the 256 code values must be sorted",
        ),
        (lambda sd: _quant(sd)["qmap2"].__setitem__(5, float("nan")), "qmap2: the code table holds NaN"),
        (lambda sd: sd["state"][0].__setitem__("step", 2**31), "step must be an integer in 0..2"),
    ],
)
def test_corrupt_quantization_state_is_rejected_at_load(corrupt, match):
    p, opt = trained()
    sd = copy.deepcopy(opt.state_dict())
    corrupt(sd)
    snap = snapshot(p, opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_unchanged(p, opt, snap)


def test_clipping_history_of_the_wrong_size_is_rejected_at_load():
    p, opt = trained(percentile_clipping=90)
    sd = copy.deepcopy(opt.state_dict())
    assert "gnorm_vec" in _quant(sd)
    _quant(sd)["gnorm_vec"] = torch.zeros(0)
    with pytest.raises(ValueError, match="gnorm_vec must be 100 float values, got 0 values"):
        opt.load_state_dict(sd)


def test_another_familys_state_dict_is_rejected():
    _, adam = trained()
    p, lion = trained(cls=bnb8.optim.Lion8bit)
    snap = snapshot(p, lion)
    with pytest.raises(ValueError, match="state2 is not a state of Lion8bit .* another optimizer"):
        lion.load_state_dict(adam.state_dict())
    assert_unchanged(p, lion, snap)


def test_settings_must_be_finite_and_switches_bools():
    params = [torch.nn.Parameter(torch.zeros(8))]
    for kwargs, match in (
        (dict(lr=math.inf), "lr=inf"),
        (dict(eps=math.inf), "eps=inf"),
        (dict(weight_decay=math.inf), "weight_decay=inf"),
        (dict(max_unorm=math.inf), "max_unorm: expected a finite number"),
        (dict(maximize="yes"), "maximize: expected True or False, got str 'yes'"),
        (dict(skip_zeros=2), "skip_zeros: expected True or False, got int 2"),
        (dict(amsgrad="yes"), "amsgrad: expected True or False"),
        (dict(block_wise="no"), "block_wise: expected True or False"),
        (dict(is_paged="no"), "is_paged: expected True or False"),
    ):
        with pytest.raises((TypeError, ValueError), match=match):
            bnb8.optim.Adam(params, optim_bits=8, **kwargs)
    with pytest.raises(TypeError, match="nesterov: expected True or False"):
        bnb8.optim.SGD(params, lr=0.1, momentum=0.9, nesterov="yes")


def test_bad_override_is_reported_with_its_origin_and_applied_all_or_nothing():
    mng = bnb8.optim.GlobalOptimManager.get_instance()
    p = torch.nn.Parameter(torch.randn(5000))
    with pytest.raises(TypeError, match="expected parameters"):
        mng.override_config([p, "x"], "lr", 0.5)
    assert mng.overrides_for(0, 0, p) == {}  # the valid first entry was not changed either
    opt = bnb8.optim.Adam8bit([p])
    mng.override_config(p, "optim_bits", 7)
    p.grad = torch.randn_like(p)
    with pytest.raises(
        ValueError, match=r"override \{'optim_bits': 7\} for a parameter of shape \(5000,\): optim_bits"
    ):
        opt.step()
    layer = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="Linear has no tensor 'wieght' \\(its parameters: weight, bias\\)"):
        mng.register_module_override(layer, "wieght", {"optim_bits": 32})


def test_param_groups_that_are_not_groups_get_clear_errors():
    p, q = torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(10))
    opt = bnb8.optim.Adam8bit([p])
    with pytest.raises(TypeError, match="param_group: expected a dict with 'params'"):
        opt.add_param_group({"lr": 0.1})
    with pytest.raises(ValueError, match=r"\['momentum'\] not a setting of Adam8bit"):
        opt.add_param_group({"params": [q], "momentum": 0.9})
    del opt.param_groups[0]["lr"]
    p.grad = torch.randn_like(p)
    with pytest.raises(ValueError, match=r"param group: missing setting\(s\) \['lr'\] of Adam8bit"):
        opt.step()


def test_per_parameter_hooks_check_their_indices():
    p, q = torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(10))
    opt = bnb8.optim.Adam8bit([p])
    p.grad = q.grad = torch.randn(10)
    group = opt.param_groups[0]
    with pytest.raises(ValueError, match="gindex=5, pindex=9: not a parameter group and index"):
        opt.update_step(group, p, 5, 9)
    with pytest.raises(ValueError, match="p: not parameter 0 of parameter group 0"):
        opt.update_step(group, q, 0, 0)
    with pytest.raises(ValueError, match="gindex=0, pindex=0: not a parameter group"):
        opt.init_state({"params": [p]}, p, 0, 0)
    assert not opt.state


def _two_trained(steps=2):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5000)) for _ in range(2)]
    opt = bnb8.optim.Adam8bit(ps)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(5000)
        opt.step()
    return ps, opt


HAND_EDITS = {
    "state1 of the wrong size": (lambda s: s.__setitem__("state1", torch.zeros(10, dtype=torch.uint8)),
                                 "state1 has 10 elements, expected 5000"),
    "float32 state1 beside 8-bit state2": (lambda s: s.__setitem__("state1", s["state1"].float()),
                                           "not all of one kind"),
    "absmax of the wrong size": (lambda s: s.__setitem__("absmax2", torch.zeros(3)), "needs absmax2 with 20 values"),
    "short code table": (lambda s: s.__setitem__("qmap1", torch.zeros(10)), "needs qmap1 with 256 values"),
    "unsorted code table": (lambda s: s.__setitem__("qmap2", s["qmap2"].flip(0)), "qmap2"),
    "step out of range": (lambda s: s.__setitem__("step", 2**31), "step must be an integer in 0..2\\*\\*31-2"),
    "moment deleted": (lambda s: s.pop("state2"), "step is 2 but state2 is missing"),
}  # fmt: skip


@pytest.mark.parametrize("edit", list(HAND_EDITS))
def test_state_edited_by_hand_is_validated_at_the_next_step(edit):
    """A state assigned by hand is checked before the kernels see it (a wrong size or dtype would have
    them write out of bounds: a float32 state1 beside 8-bit state2 corrupted the heap), and the failed
    step changes no parameter or state."""
    ps, opt = _two_trained()
    change, match = HAND_EDITS[edit]
    change(opt.state[ps[1]])
    snaps = [snapshot(p, opt) for p in ps]
    for p in ps:
        p.grad = torch.randn(5000)
    with pytest.raises(ValueError, match=r"optimizer.state: parameter '0:1' \(shape \(5000,\)\): .*" + match):
        opt.step()
    for p, snap in zip(ps, snaps):
        assert_unchanged(p, opt, snap)


def test_state_assigned_by_hand_that_fits_is_used_in_place():
    """Resetting a moment by assignment works like resetting it in place, and the assigned tensor is
    the one the optimizer then updates (no copy)."""
    (p, _), opt = _two_trained()
    (q, _), ref = _two_trained()
    zeros = torch.full_like(opt.state[p]["state1"], 127)  # code 127 of the signed map is 0.0
    assert bnb8.functional.dynamic_map(True)[127] == 0
    opt.state[p]["state1"] = zeros
    ref.state[q]["state1"].fill_(127)
    continues_alike(ref, q, opt, p)
    assert opt.state[p]["state1"].data_ptr() == zeros.data_ptr()
    assert not torch.equal(zeros, torch.full_like(zeros, 127))  # updated through the assigned tensor


def test_non_contiguous_state_assigned_by_hand_is_copied_contiguous():
    (p, _), opt = _two_trained()
    (q, _), ref = _two_trained()
    wide = torch.zeros(2 * 5000, dtype=torch.uint8)
    wide[::2] = opt.state[p]["state2"]
    opt.state[p]["state2"] = wide[::2]  # same values, every other byte of a wider buffer
    continues_alike(ref, q, opt, p)
    assert opt.state[p]["state2"].is_contiguous()
    assert torch.equal(opt.state[p]["state2"], ref.state[q]["state2"])


def test_transposed_state_in_a_state_dict_loads_contiguous():
    """A plain clone keeps a transposed tensor's strides; the kernels read raw memory."""
    torch.manual_seed(0)
    p_ref = torch.nn.Parameter(torch.randn(64, 96))
    ref = bnb8.optim.Adam8bit([p_ref])
    p_ref.grad = torch.randn(64, 96)
    ref.step()
    sd = ref.state_dict()
    quant = sd["state"][0]["__bnb_optimizer_quant_state__"]
    quant["state1"] = quant["state1"].t().contiguous().t()  # same values, column-major
    p = torch.nn.Parameter(p_ref.detach().clone())
    opt = bnb8.optim.Adam8bit([p])
    opt.load_state_dict(sd)
    assert opt.state[p]["state1"].is_contiguous()
    continues_alike(ref, p_ref, opt, p)


def test_subclass_entries_survive_and_unedited_state_is_not_revalidated(monkeypatch):
    """Validation runs once per edit, not per step: a subclass that keeps its own entry in the state
    (GaLore's projection) and calls setdefault("step", 0) each step pays nothing after the first."""
    ps, opt = _two_trained()
    opt.state[ps[0]]["projection"] = torch.eye(3)
    calls = []
    checked_state = type(opt)._checked_state
    monkeypatch.setattr(
        type(opt), "_checked_state", lambda self, *a, **k: calls.append(a[0]) or checked_state(self, *a, **k)
    )
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(5000)
            opt.state[p].setdefault("step", 0)
        opt.step()
    assert calls == ["0:0"]
    assert torch.equal(opt.state[ps[0]]["projection"], torch.eye(3))


def test_plain_dict_assigned_as_a_state_is_validated_and_tracked():
    (p, _), opt = _two_trained()
    (q, _), ref = _two_trained()
    opt.state[p] = dict(opt.state[p])  # what a wrapper that rebuilds states does
    continues_alike(ref, q, opt, p)
    assert type(opt.state[p]) is not dict and opt.state[p].checked
    opt.state[p] = {}  # an empty state: created again at the next step
    p.grad = torch.randn(5000)
    opt.step()
    assert opt.state[p]["step"] == 1 and opt.state[p]["state1"].dtype == torch.uint8


def test_param_state_records_every_kind_of_edit():
    from bnb8.optim.optimizer import _ParamState

    edits = {
        "setitem": lambda s: s.__setitem__("x", 1),
        "delitem": lambda s: s.__delitem__("step"),
        "setdefault of a new key": lambda s: s.setdefault("x", 1),
        "update": lambda s: s.update(x=1),
        "|=": lambda s: s.__ior__({"x": 1}),
        "pop": lambda s: s.pop("step"),
        "popitem": lambda s: s.popitem(),
        "clear": lambda s: s.clear(),
    }
    for name, edit in edits.items():
        state = _ParamState({"step": 3}, checked=True)
        edit(state)
        assert not state.checked, name
    kept = {
        "setdefault of a present key": lambda s: s.setdefault("step", 0),
        "pop of an absent key": lambda s: s.pop("x", None),
        "set_step": lambda s: s.set_step(4),
    }
    for name, keep in kept.items():
        state = _ParamState({"step": 3}, checked=True)
        keep(state)
        assert state.checked, name
    assert not copy.deepcopy(_ParamState({"step": 3}, checked=True)).checked


@pytest.mark.parametrize("reset", [lambda: collections.defaultdict(dict), dict], ids=["defaultdict", "dict"])
def test_state_container_replaced_to_reset_the_optimizer(reset):
    """`optimizer.state = defaultdict(dict)` is a common way to restart an optimizer's moments."""
    (p, _), opt = _two_trained()
    opt.state = reset()
    p.grad = torch.randn(5000)
    opt.step()
    assert opt.state[p]["step"] == 1 and opt.state[p]["state1"].dtype == torch.uint8
