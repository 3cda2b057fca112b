"""The optimizer families beyond Adam: SGD, RMSprop, Adagrad, Lion, LAMB, LARS, AdEMAMix.

* accuracy of 8-bit and 32-bit state against an independent 32-bit reference on the same gradient
  stream: torch's own class where torch has the optimizer (SGD, RMSprop, Adagrad), otherwise a short
  pure-torch transcription of the paper (Lion, LAMB, LARS, AdEMAMix) written here, not bnb8's
  reference backend. Protocol and tolerances as bitsandbytes' test_optimizer8bit: parameters ~0.1,
  gradients ~0.01, re-synced (parameters and dequantized states) every 10 steps;
* every native CPU rule against bnb8's pure-torch reference backend on the same inputs;
* argument validation, checkpoints (bit-exact resume, bitsandbytes' state dicts), the common settings;
* (slow) 60-step accumulated error against bitsandbytes' 8-bit optimizer of the same family.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import bnb8
import bnb8.functional as F
import bnb8.optim as optim
from bnb8 import _native, _ops
from bnb8.backends import reference
from bnb8.optim.optimizer import QUANT_STATE_KEY
from tests.conftest import run_under_isa

DTYPE_IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
DTYPES = list(DTYPE_IDS)


# -- independent 32-bit references ------------------------------------------------------------------
class TorchRef:
    """torch.optim's class on a float32 copy; states listed in bnb8's state order."""

    def __init__(self, p: torch.Tensor, cls: type, keys: list[str], **kwargs):
        self.p = p.detach().float().clone().requires_grad_(True)
        self.opt = cls([self.p], **kwargs)
        self.keys = keys

    def step(self, g: torch.Tensor) -> None:
        self.p.grad = g.float()
        self.opt.step()

    def states(self) -> list[torch.Tensor]:
        return [self.opt.state[self.p][k] for k in self.keys]


class PaperRef:
    """The update of a paper, transcribed in plain torch (float32)."""

    def __init__(self, p: torch.Tensor, update, n_states: int, **hp):
        self.p = p.detach().float().clone()
        self.s = [torch.zeros_like(self.p) for _ in range(n_states)]
        self.update, self.hp, self.t = update, hp, 0

    def step(self, g: torch.Tensor) -> None:
        self.t += 1
        self.update(self.p, g.float(), self.s, self.t, **self.hp)

    def states(self) -> list[torch.Tensor]:
        return self.s


def lion_update(p, g, s, t, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
    # Chen et al. 2023, Program 1.
    (m,) = s
    b1, b2 = betas
    u = (b1 * m + (1 - b1) * g).sign()
    p.mul_(1 - lr * weight_decay).add_(u, alpha=-lr)
    m.mul_(b2).add_(g, alpha=1 - b2)


def lamb_update(p, g, s, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    # You et al. 2020, Algorithm 2 (bias-corrected Adam direction; trust ratio 1 where a norm is 0).
    m, v = s
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + weight_decay * p
    pn, rn = p.norm(), r.norm()
    trust = (pn / rn).item() if pn > 0 and rn > 0 else 1.0
    p.add_(r, alpha=-lr * trust)


def lars_update(
    p, g, s, t, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, max_unorm=0.02
):
    # SGD momentum (torch semantics) with the update norm capped at max_unorm * ||p|| (bitsandbytes' LARS).
    (buf,) = s
    d = g + weight_decay * p
    buf.copy_(d if t == 1 else momentum * buf + (1 - dampening) * d)
    u = d + momentum * buf if nesterov else buf.clone()
    limit = max_unorm * p.norm()
    scale = (limit / u.norm()).item() if u.norm() > limit else 1.0
    p.add_(u, alpha=-lr * scale)


def ademamix_update(
    p,
    g,
    s,
    t,
    lr=1e-3,
    betas=(0.9, 0.999, 0.9999),
    alpha=5.0,
    t_alpha=None,
    t_beta3=None,
    eps=1e-8,
    weight_decay=1e-2,
):
    # Pagliardini et al. 2024, Algorithm 1 with the alpha and beta3 schedulers (their eq. for beta3).
    m1, nu, m2 = s
    b1, b2, b3 = betas
    if t_alpha is not None:
        alpha = min(t * alpha / t_alpha, alpha)
    if t_beta3 is not None:
        f = t / t_beta3
        b3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - f) * math.log(b3) + f * math.log(b1))), b3)
    m1.mul_(b1).add_(g, alpha=1 - b1)
    m2.mul_(b3).add_(g, alpha=1 - b3)
    nu.mul_(b2).addcmul_(g, g, value=1 - b2)
    update = (m1 / (1 - b1**t) + alpha * m2) / ((nu / (1 - b2**t)).sqrt() + eps)
    p.sub_(lr * (update + weight_decay * p))


def rmsprop_keys(kw):
    return (
        ["square_avg"]
        + (["momentum_buffer"] if kw.get("momentum", 0) > 0 else [])
        + (["grad_avg"] if kw.get("centered") else [])
    )


# name -> (bnb8 class, reference factory(p, **kw))
FAMILIES = {
    "sgd": (optim.SGD, lambda p, **kw: TorchRef(p, torch.optim.SGD, ["momentum_buffer"], **kw)),
    "rmsprop": (optim.RMSprop, lambda p, **kw: TorchRef(p, torch.optim.RMSprop, rmsprop_keys(kw), **kw)),
    "adagrad": (optim.Adagrad, lambda p, **kw: TorchRef(p, torch.optim.Adagrad, ["sum"], **kw)),
    "lion": (optim.Lion, lambda p, **kw: PaperRef(p, lion_update, 1, **kw)),
    "lamb": (optim.LAMB, lambda p, **kw: PaperRef(p, lamb_update, 2, **kw)),
    "lars": (optim.LARS, lambda p, **kw: PaperRef(p, lars_update, 1, **kw)),
    "ademamix": (optim.AdEMAMix, lambda p, **kw: PaperRef(p, ademamix_update, 3, **kw)),
}

# (family, kwargs): defaults, plus every option that changes the math.
CONFIGS = [
    ("sgd", dict(lr=0.01, momentum=0.9)),
    ("sgd", dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("sgd", dict(lr=0.01, momentum=0.5, dampening=0.3)),
    ("rmsprop", dict(lr=1e-3)),
    ("rmsprop", dict(lr=0.001, momentum=0.9, centered=True, weight_decay=0.1)),
    ("adagrad", dict(lr=0.01)),
    ("adagrad", dict(lr=0.01, lr_decay=0.01, initial_accumulator_value=1e-4, weight_decay=0.1)),
    ("lion", dict()),
    ("lion", dict(weight_decay=0.1)),
    ("lamb", dict(weight_decay=0.01)),
    ("lars", dict(lr=0.01, momentum=0.9)),
    ("ademamix", dict()),
    ("ademamix", dict(t_alpha=20, t_beta3=20)),
]
CONFIG_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for name, kw in CONFIGS]


def bnb8_kwargs(name: str, kw: dict) -> dict:
    return kw if name != "lamb" else {**kw, "max_unorm": 0.0}


def dequantized(opt, p: torch.Tensor) -> list[torch.Tensor]:
    """bnb8's states of p as float32 (8-bit: qmap[code] * absmax of its block)."""
    state, out = opt.state[p], []
    for k in (1, 2, 3):
        s = state.get(f"state{k}")
        if s is None:
            continue
        if s.dtype == torch.uint8:
            scale = state[f"absmax{k}"].repeat_interleave(256)[: s.numel()]
            s = (state[f"qmap{k}"][s.reshape(-1).long()] * scale).view(p.shape)
        out.append(s.float())
    return out


def run_pair(name, kw, shape, dtype, bits, steps, resync_every, states=None):
    """Yields (step, reference params, bnb8 params) for the same gradient stream. With a list as
    ``states``, each step also appends (reference states, bnb8's states dequantized, bnb8's state dict)."""
    cls, make_ref = FAMILIES[name]
    torch.manual_seed(0)  # the same data whatever ran before (and whichever tests -k selects)
    p = torch.nn.Parameter((torch.randn(shape) * 0.1).to(dtype))
    opt = cls([p], optim_bits=bits, **bnb8_kwargs(name, kw))
    ref = make_ref(p.detach(), **kw)
    for i in range(1, steps + 1):
        g = (torch.randn(shape) * 0.01).to(dtype)
        p.grad = g
        opt.step()
        ref.step(g)
        if states is not None:
            snapshot = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
            states.append(([r.clone() for r in ref.states()], dequantized(opt, p), snapshot))
        yield i, ref.p.detach(), p.detach().float()
        if i % resync_every == 0:
            ref.p.data.copy_(p.detach().float())
            for r, s in zip(ref.states(), dequantized(opt, p)):
                r.copy_(s)


# (dtype, shape): the large odd shape in float32, every dtype on a size that is not a block multiple.
CASES = [
    (torch.float32, (4097,)),
    (torch.float32, (1000, 1001)),
    (torch.float16, (4097,)),
    (torch.bfloat16, (4097,)),
]
CASE_IDS = [f"{DTYPE_IDS[d]}-{'x'.join(map(str, s))}" for d, s in CASES]


def _check_8bit(name, kw, shape, dtype, steps=6):
    """Per-step error: both sides start every step from bnb8's parameters and dequantized states; the
    reference result is rounded to the parameter dtype, so only the 8-bit state can differ."""
    errs, relerrs, of_update = [], [], []
    states, before = [], None
    for _, p_ref, p8 in run_pair(name, kw, shape, dtype, bits=8, steps=steps, resync_every=1, states=states):
        err = (p_ref.to(dtype).float() - p8).abs()
        # bitsandbytes divides by |p| + 1e-9, which makes the mean a heavy-tailed statistic of the few
        # parameters near 0 (its own SGD8bit measures 1.7e-2 with it); the denominator is floored at 1e-3.
        relerr = err / (p_ref.abs() + 1e-3)
        errs.append(err.mean().item())
        relerrs.append(relerr.mean().item())
        if before is not None:  # the error against the size of the step itself
            moved = (p8 - before).abs().mean().item()
            assert moved > 0, "a step left every parameter where it was"
            of_update.append(err.mean().item() / moved)
        before = p8.clone()
    # bitsandbytes' tolerances (tests/test_optim.py, test_optimizer8bit)
    atol, rtol = (1.7e-4, 1.6e-3) if dtype == torch.bfloat16 else (6e-5, 6e-4)
    assert max(errs) < atol, f"mean abs error per step {max(errs):.3g} >= {atol}"
    assert max(relerrs) < rtol, f"mean rel error per step {max(relerrs):.3g} >= {rtol}"
    # Those tolerances are far above what the re-synced steps differ by (float rounding: measured
    # <= 4e-9 in float32, <= 1e-4 of the step's own size): a wrong update fails these instead.
    assert max(errs) < (1e-7 if dtype == torch.float32 else 1e-6), f"mean abs error per step {max(errs):.3g}"
    assert max(of_update) < 1e-3, f"mean error per step is {max(of_update):.3g} of the mean step"
    # The new states are the reference's rounded to the nearest code: within half the widest gap of
    # the state's map (or the distance from +-1 to its outermost codes: the signed map has no -1) times
    # the block's absmax, element by element.
    for ref_states, ours, raw in states:
        for k, (r, q) in enumerate(zip(ref_states, ours), start=1):
            if raw[f"state{k}"].dtype != torch.uint8:
                continue
            qmap = raw[f"qmap{k}"]
            reach = max(
                0.5 * qmap.diff().max().item(),
                1 - qmap.max().item(),
                1 + qmap.min().item() if qmap.min() < 0 else 0,
            )
            scale = raw[f"absmax{k}"].repeat_interleave(256)[: q.numel()].view(q.shape)
            # 1e-3 of the absmax: rounding, and the kernels form 1 - beta in float32 (for AdEMAMix's
            # beta3 = 0.9999 that increment is 1.7e-4 off the reference's double 1 - beta).
            excess = ((q - r.float()).abs() - (reach + 1e-3) * scale).max().item()
            assert excess <= 1e-6 * scale.max().item(), f"state{k}: {excess:.3g} beyond the nearest code"


@pytest.mark.parametrize(("dtype", "shape"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=CONFIG_IDS)
def test_8bit_matches_32bit_reference(name, kw, dtype, shape):
    _check_8bit(name, kw, shape, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=CONFIG_IDS)
def test_8bit_matches_32bit_reference_large(name, kw, dtype):
    _check_8bit(name, kw, (1024, 1024), dtype, steps=20)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=CONFIG_IDS)
def test_32bit_matches_reference(name, kw, dtype, shape=(4097,)):
    # 32-bit state: only float rounding differs; the parameter is stored in its dtype after every step.
    worst = 0.0
    for _, p_ref, p32 in run_pair(name, kw, shape, dtype, bits=32, steps=6, resync_every=1):
        worst = max(worst, ((p_ref.to(dtype).float() - p32).abs() / (p_ref.abs() + 1e-2)).max().item())
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]  # 1 ulp of 16-bit
    assert worst < tol


STRONG_DECAY = [
    ("lion", dict(lr=1e-2, weight_decay=0.5)),
    ("lamb", dict(lr=1e-2, weight_decay=0.5)),
    ("ademamix", dict(lr=1e-2, weight_decay=0.5)),
    ("sgd", dict(lr=1e-2, momentum=0.9, weight_decay=0.5)),
]


@pytest.mark.parametrize(("name", "kw"), STRONG_DECAY, ids=[n for n, _ in STRONG_DECAY])
def test_weight_decay_where_it_dominates(name, kw):
    """Parameters ~1 with lr * weight_decay = 5e-3 over 20 steps: the decay moves them far more than
    the tolerance, so a decay scaled wrongly (or dropped) fails; in the CONFIGS above it hides in 1e-6."""
    cls, make_ref = FAMILIES[name]

    def run(weight_decay):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(4097))
        start = p.detach().clone()
        opt = cls([p], optim_bits=32, **bnb8_kwargs(name, {**kw, "weight_decay": weight_decay}))
        ref = make_ref(p.detach().clone(), **{**kw, "weight_decay": weight_decay})
        for _ in range(20):
            g = torch.randn(4097) * 0.01
            p.grad = g
            opt.step()
            ref.step(g)
        return start, p.detach(), ref.p.detach()

    start, ours, ref = run(kw["weight_decay"])
    _, _, without_decay = run(0.0)
    change = (ref - start).norm()
    assert (ours - ref).norm() / change < 1e-5
    assert (without_decay - ref).norm() / change > 1e-2  # the decay is a visible part of the change


# -- native kernels vs the reference backend --------------------------------------------------------
STATE_SIGNS = {
    "sgd": [True],
    "rmsprop": [False],
    "rmsprop_momentum": [False, True],
    "rmsprop_centered": [False, True],
    "rmsprop_centered_momentum": [False, True, True],
    "adagrad": [False],
    "lion": [True],
    "lamb": [True, False],
    "ademamix": [True, False, True],
}
RULE_HYPER = dict(
    step_size=1e-2, lr=1e-2, decay=0.999, weight_decay=0.05, beta1=0.9, beta2=0.99, beta3=0.999, eps=1e-6,
    bias_correction2_sqrt=0.3, alpha=0.7, momentum=0.8, dampening=0.1, step=3, nesterov=1,
)  # fmt: skip


def test_every_native_rule_is_tested():
    assert set(STATE_SIGNS) == set(_native.RULES) - {"adam", "adam_amsgrad"}
    assert set(_native.RULES) | {"sgd_plain"} == set(reference.RULES)


def _rule_inputs(rule, dtype, eight_bit, sizes=(300, 4097)):
    params = [torch.randn(n).to(dtype) for n in sizes]
    grads = [torch.randn(n).to(dtype) for n in sizes]
    grads[1][7] = float("nan")  # a non-finite element is skipped and counted, its block unharmed
    states, absmaxes, qmaps, thresholds, buckets = [], [], [], [], []
    for signed in STATE_SIGNS[rule]:
        # second moments well above the squared first moments (centered RMSprop's variance > 0)
        values = [torch.randn(n) * 0.1 if signed else torch.rand(n) * 0.1 + 0.2 for n in sizes]
        if eight_bit:
            q = F.dynamic_map(signed)
            thr, bucket_table = F.code_search_tables(q)
            quant = [F.quantize_blockwise(v, code=q, blocksize=256) for v in values]
            states.append([c for c, _ in quant])
            absmaxes.append([s.absmax for _, s in quant])
            qmaps.append(q)
            thresholds.append(thr)
            buckets.append(bucket_table)
        else:
            states.append(values)
            absmaxes.append([])
    return params, grads, states, absmaxes, qmaps, thresholds, buckets


def _updated(rule, inputs, hyper, scales, native=True):
    """One update of a deep copy of ``inputs`` (from _rule_inputs) by the native op or by the reference
    backend: (params, states, absmaxes, nonfinite)."""
    params, grads, states, absmaxes, qmaps, thresholds, buckets = copy.deepcopy(inputs)
    nonfinite = torch.zeros(1, dtype=torch.int64)
    if native:
        pad = [[]] * (3 - len(states))
        _ops.optimizer_update_(
            rule, params, grads, *states, *pad, *absmaxes, *pad, qmaps, thresholds, buckets, hyper, scales,
            nonfinite,
        )  # fmt: skip
    else:
        reference.optimizer_update_(
            rule, params, grads, states, absmaxes, qmaps, thresholds, buckets, hyper, scales, nonfinite
        )
    return params, states, absmaxes, nonfinite


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bit", "32bit"])
@pytest.mark.parametrize("rule", sorted(STATE_SIGNS))
def test_native_rule_matches_reference_backend(rule, eight_bit, dtype):
    inputs = _rule_inputs(rule, dtype, eight_bit)
    hyper = _native.hyper_list(**RULE_HYPER)
    scales = torch.tensor([[1.0, 1.0], [0.5, 2.0]])
    params, grads, states, absmaxes, qmaps, _, _ = inputs  # the norms pass writes nothing
    pad = [[]] * (3 - len(states))
    norms_n = _ops.optimizer_norms(rule, params, grads, *states, *pad, *absmaxes, *pad, qmaps, hyper, scales)
    norms_r = reference.optimizer_norms(rule, params, grads, states, absmaxes, qmaps, hyper, scales)
    (p_n, s_n, a_n, nf_n), (p_r, s_r, a_r, nf_r) = [
        _updated(rule, inputs, hyper, scales, n) for n in (True, False)
    ]
    assert nf_n.item() == nf_r.item() == 1
    torch.testing.assert_close(norms_n, norms_r, rtol=1e-4, atol=0)
    for a, b in zip(p_n, p_r):
        torch.testing.assert_close(a, b, rtol=2e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)
    for k in range(len(s_n)):
        for a, b in zip(s_n[k], s_r[k]):
            if a.dtype == torch.uint8:  # the same nearest code, up to float ties (fused multiply-adds)
                assert (a.int() - b.int()).abs().max() <= 1 and (a != b).sum() <= max(1, a.numel() // 1000)
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(a_n[k], a_r[k]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bit", "32bit"])
@pytest.mark.parametrize("rule", sorted(STATE_SIGNS))
def test_blocks_without_skipped_elements_update_like_the_per_element_path(rule, eight_bit, dtype):
    """A block whose gradient is finite (and without skip_zeros) runs a loop with no per-element test;
    any other block runs the loop that tests and skips. Both must round alike: here skip_zeros=1 with
    no zero gradient forces every block through the testing loop, which must change nothing."""
    inputs = _rule_inputs(rule, dtype, eight_bit)
    inputs[1][1][7] = 0.5  # no NaN this time
    # nor a zero gradient (fp16 rounds one in ~10^7 normal draws to 0), which skip_zeros skips
    for g in inputs[1]:
        g[g == 0] = 0.25
    # gradient scales 0.5 and -1 (clipping, maximize) take the fast loop without skip_zeros; 1.5 takes
    # the testing one in both runs
    for scales in (torch.tensor([[0.5, 1.0], [-1.0, 2.0]]), torch.tensor([[1.5, 1.0], [1.5, 1.0]])):
        fast, tested = [
            _updated(rule, inputs, _native.hyper_list(**RULE_HYPER, skip_zeros=skip), scales)
            for skip in (0, 1)
        ]
        assert fast[3].item() == tested[3].item() == 0
        for a, b in zip(_flat(fast[:3]), _flat(tested[:3])):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", [0, 63, 64, 200, 255, 256 + 130, 4096])
def test_one_non_finite_gradient_element_anywhere_in_a_block_is_skipped(where, bad, dtype):
    """The per-block finiteness check reads a block in four interleaved 64-element chains and a tail:
    one NaN/Inf at any of those places (here: chain starts and ends, a block's last element, the
    one-element last block) sends its block through the testing loop, as the reference does."""
    inputs = _rule_inputs("rmsprop_momentum", dtype, True)
    grads = inputs[1]
    grads[1][7] = 0.5  # only `bad` is non-finite
    grads[1][where] = bad
    scales = torch.tensor([[1.0, 1.0], [0.5, 1.0]])
    hyper = _native.hyper_list(**RULE_HYPER)
    (p_n, s_n, a_n, nf_n), (p_r, s_r, a_r, nf_r) = [
        _updated("rmsprop_momentum", inputs, hyper, scales, n) for n in (True, False)
    ]
    assert nf_n.item() == nf_r.item() == 1
    assert p_n[1][where] == inputs[0][1][where]  # the skipped element keeps its parameter
    for a, b in zip(p_n, p_r):
        torch.testing.assert_close(a, b, rtol=2e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)
    for a, b in zip(_flat(a_n), _flat(a_r)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=0)


def test_state_block_turned_nan_is_stored_like_the_reference():
    """A state block whose values became NaN (after an overflow to Inf: code 0 * Inf) gets a NaN absmax
    and all-zero codes, as the reference's NaN-propagating amax gives — never a finite absmax over
    codes searched from NaN. The other block is untouched by it."""
    inputs = _rule_inputs("lamb", torch.float32, True, sizes=(300, 512))
    codes, absmaxes = inputs[2], inputs[3]
    # second moment of the 512-element tensor, first block: an Inf scale decodes code 0 (value 0) to NaN
    absmaxes[1][1][0] = float("inf")
    codes[1][1][:256:5] = 0
    hyper = _native.hyper_list(**RULE_HYPER)
    outs = []
    for native in (True, False):
        _, states, absmaxes, _ = _updated("lamb", inputs, hyper, None, native)
        outs.append((states[1][1], absmaxes[1][1]))
    (codes_n, absmax_n), (codes_r, absmax_r) = outs
    assert absmax_n[0].isnan() and absmax_r[0].isnan()
    assert torch.equal(codes_n[:256], codes_r[:256])
    torch.testing.assert_close(absmax_n[1], absmax_r[1], rtol=1e-5, atol=0)


# -- every CPU variant runs the same update ---------------------------------------------------------
_VARIANT_SCRIPT = """
import sys, torch, bnb8
from bnb8 import _native, _ops
cases = torch.load(sys.argv[1])
out = {"isa": bnb8._C.cpu_isa()}
for name, (rule, inputs, hyper, scales) in cases.items():
    params, grads, states, absmaxes, qmaps, thresholds, buckets = inputs
    pad = [[]] * (3 - len(states))
    nonfinite = torch.zeros(1, dtype=torch.int64)
    _ops.optimizer_update_(rule, params, grads, *states, *pad, *absmaxes, *pad, qmaps, thresholds, buckets,
                           hyper, scales, nonfinite)
    out[name] = (params, states, absmaxes)
torch.save(out, sys.argv[2])
"""


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_every_cpu_variant_updates_alike(isa, tmp_path):
    """The variants decode codes differently (VBMI byte planes, register permutes, gathers) and must
    still agree bit for bit where the CPU fuses multiply-adds (every variant but generic x86-64: the
    update math writes its fused multiply-adds out, optim.h)."""
    torch.manual_seed(5)
    hyper = _native.hyper_list(**RULE_HYPER)
    scales = torch.tensor([[1.0, 1.0], [0.5, 2.0], [2.0, 0.5]])  # one row per tensor
    cases = {
        f"{rule}-{DTYPE_IDS[dtype]}": (
            rule,
            _rule_inputs(rule, dtype, True, sizes=(300, 4097, 70_001)),
            hyper,
            scales,
        )
        for rule in sorted(STATE_SIGNS)
        for dtype in DTYPES
    }
    other = run_under_isa(isa, _VARIANT_SCRIPT, cases, tmp_path)
    for name, (rule, inputs, _, _) in cases.items():
        params, states, absmaxes, _ = _updated(rule, inputs, hyper, scales)
        # generic x86-64 has no FMA: it rounds products and sums apart (mul_add in common.h).
        exact = "generic" not in (isa, bnb8._C.cpu_isa())
        for a, b in zip(_flat(other[name]), _flat((params, states, absmaxes))):
            if exact:
                assert torch.equal(a, b), name
            elif a.dtype == torch.uint8:
                assert (a.int() - b.int()).abs().max() <= 1 and (a != b).sum() <= max(1, a.numel() // 1000), (
                    name
                )
            else:
                rtol = 2e-5 if a.dtype == torch.float32 else 1e-2
                torch.testing.assert_close(a, b, rtol=rtol, atol=1e-6, msg=name)


def _flat(nested):
    return [t for x in nested for t in (_flat(x) if isinstance(x, list) else [x])]


# -- coupled weight decay of 0 leaves the gradient alone, as in torch -------------------------------
@pytest.mark.parametrize(
    "make,make_torch",
    [
        (lambda ps: optim.Adam8bit(ps), lambda ps: torch.optim.Adam(ps)),
        (
            lambda ps: optim.Adam(ps, optim_bits=32, amsgrad=True),
            lambda ps: torch.optim.Adam(ps, amsgrad=True),
        ),
        (
            lambda ps: optim.SGD8bit(ps, lr=0.1, momentum=0.9),
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        ),
        (lambda ps: optim.RMSprop8bit(ps), lambda ps: torch.optim.RMSprop(ps)),
        (lambda ps: optim.Adagrad8bit(ps), lambda ps: torch.optim.Adagrad(ps)),
    ],
    ids=["adam8bit", "adam32bit-amsgrad", "sgd8bit", "rmsprop8bit", "adagrad8bit"],
)
def test_zero_weight_decay_keeps_an_infinite_parameter_infinite(make, make_torch):
    """torch skips the L2 term when weight_decay is 0; computing g + 0 * p would make p = inf NaN."""
    ours = torch.nn.Parameter(torch.randn(5000))
    with torch.no_grad():
        ours[17] = float("inf")
        ours[18] = float("-inf")
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt, ref = make([ours]), make_torch([theirs])
    for _ in range(2):
        g = torch.randn(5000)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.equal(ours[17:19], theirs[17:19]) and torch.isinf(ours[17:19]).all()
    assert torch.isfinite(ours[:17]).all() and torch.isfinite(ours[19:]).all()


# -- SGD without momentum, Adagrad's initial accumulator --------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_sgd_without_momentum_keeps_no_state_and_matches_torch(dtype):
    p = torch.nn.Parameter(torch.randn(5000).to(dtype))
    p_ref = p.detach().float().requires_grad_(True)  # torch in float32, rounded like bnb8's storage
    opt = optim.SGD8bit([p], lr=0.1, weight_decay=0.01)
    ref = torch.optim.SGD([p_ref], lr=0.1, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(5000).to(dtype)
        p.grad, p_ref.grad = g, g.float()
        opt.step()
        ref.step()
        ulp = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(p, p_ref.detach().to(dtype), rtol=ulp, atol=1e-6)
        p_ref.data.copy_(p.detach().float())
    assert set(opt.state[p]) == {"step"}
    opt.param_groups[0]["momentum"] = 0.9  # turning momentum on creates the buffer, as in torch
    p.grad = torch.randn(5000).to(dtype)
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.uint8


def test_adagrad_initial_accumulator_is_exact_in_8bit():
    p = torch.nn.Parameter(torch.randn(5000))
    opt = optim.Adagrad8bit([p], initial_accumulator_value=0.37)
    p.grad = torch.zeros(5000)
    opt.step()
    torch.testing.assert_close(dequantized(opt, p)[0], torch.full((5000,), 0.37))


def test_lamb_trust_ratio_in_8bit_differs_from_adam():
    # bitsandbytes' 8-bit LAMB is plain Adam; bnb8's scales every tensor by ||p|| / ||u||.
    p = torch.nn.Parameter(torch.randn(4096) * 3)
    q = torch.nn.Parameter(p.detach().clone())
    lamb, adam = optim.LAMB8bit([p], lr=1e-3), optim.Adam8bit([q], lr=1e-3)
    g = torch.randn(4096)
    p.grad, q.grad = g, g.clone()
    p0 = p.detach().clone()
    lamb.step()
    adam.step()
    step_lamb, step_adam = (p - p0).norm(), (q - p0).norm()
    assert torch.isclose(step_lamb, 1e-3 * p0.norm(), rtol=1e-3)  # ||update|| = lr * ||p||
    assert not torch.isclose(step_lamb, step_adam, rtol=0.1)


# -- arguments ---------------------------------------------------------------------------------------
def _p():
    return [torch.nn.Parameter(torch.randn(10))]


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (optim.SGD, dict(lr=-1.0), "Invalid learning rate"),
        (optim.SGD, dict(momentum=-0.1), "momentum=-0.1"),
        (optim.SGD, dict(nesterov=True), "Nesterov momentum requires a momentum"),
        (optim.SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
        (optim.SGD, dict(weight_decay=-1), "weight_decay=-1"),
        (optim.SGD, dict(differentiable=True), "differentiable"),
        (optim.SGD8bit, dict(optim_bits=32), "SGD8bit has optim_bits=8"),
        (optim.RMSprop, dict(alpha=-0.5), "alpha=-0.5"),
        (optim.RMSprop, dict(eps=-1e-8), "eps="),
        (optim.RMSprop, dict(momentum=-1), "momentum=-1"),
        (optim.RMSprop, dict(capturable=True), "capturable"),
        (optim.Adagrad, dict(lr_decay=-1), "lr_decay=-1"),
        (optim.Adagrad, dict(initial_accumulator_value=-1), "initial_accumulator_value=-1"),
        (optim.Adagrad, dict(percentile_clipping=0), "percentile_clipping"),
        (optim.Lion, dict(betas=(0.9, 1.0)), r"betas\[1\]=1.0"),
        (optim.Lion, dict(betas=(0.9,)), "betas: expected a tuple of 2"),
        (optim.Lion32bit, dict(optim_bits=8), "Lion32bit has optim_bits=32"),
        (optim.LAMB, dict(amsgrad=True), "amsgrad=True is not supported by LAMB"),
        (optim.LAMB, dict(block_wise=False), "block_wise=False"),
        (optim.LAMB, dict(max_unorm=-1.0), "max_unorm"),
        (optim.LARS, dict(lr=0.1, momentum=-1), "momentum=-1"),
        (optim.AdEMAMix, dict(betas=(0.9, 0.999)), "betas: expected a tuple of 3"),
        (optim.AdEMAMix, dict(alpha=-1.0), "alpha=-1.0"),
        (optim.AdEMAMix, dict(t_alpha=0), "t_alpha: expected None or a positive"),
        (optim.AdEMAMix, dict(t_beta3=1.5), "t_beta3: expected None or a positive"),
        (optim.AdEMAMix, dict(t_beta3=10, betas=(0.0, 0.999, 0.9999)), "betas\\[0\\]=0.0"),
        (optim.AdEMAMix, dict(optim_bits=4), "optim_bits: expected 8 or 32"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_bad_arguments(cls, kwargs, match):
    kwargs = {"lr": 0.1, **kwargs} if cls in (optim.LARS, optim.LARS8bit) and "lr" not in kwargs else kwargs
    with pytest.raises(ValueError, match=match):
        cls(_p(), **kwargs)


def test_bad_group_added_later_is_rejected():
    opt = optim.RMSprop8bit(_p())
    with pytest.raises(ValueError, match="alpha=-1"):
        opt.add_param_group({"params": _p(), "alpha": -1})


# -- common settings and checkpoints, per family ------------------------------------------------------
EIGHT_BIT = {
    "sgd": lambda ps, **kw: optim.SGD8bit(ps, lr=0.01, momentum=0.9, **kw),
    "rmsprop": lambda ps, **kw: optim.RMSprop8bit(ps, lr=1e-3, momentum=0.9, centered=True, **kw),
    "adagrad": lambda ps, **kw: optim.Adagrad8bit(ps, **kw),
    "lion": lambda ps, **kw: optim.Lion8bit(ps, weight_decay=0.1, **kw),
    "lamb": lambda ps, **kw: optim.LAMB8bit(ps, weight_decay=0.01, **kw),
    "lars": lambda ps, **kw: optim.LARS8bit(ps, lr=0.01, momentum=0.9, **kw),
    "ademamix": lambda ps, **kw: optim.AdEMAMix8bit(ps, t_alpha=10, t_beta3=10, **kw),
}


def _model():
    return [
        torch.nn.Parameter(torch.randn(64, 80)),
        torch.nn.Parameter(torch.randn(4097)),
        torch.nn.Parameter(torch.randn(7)),
    ]


def _grads(params, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(steps)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("name", sorted(EIGHT_BIT))
def test_checkpoint_resume_is_bit_exact(name):
    params = _model()
    grads = _grads(params, 6, seed=1)
    opt = EIGHT_BIT[name](params, percentile_clipping=90)
    _run(opt, params, grads[:3])
    buf = io.BytesIO()
    torch.save({"p": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    _run(opt, params, grads[3:])
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["p"]]
    opt2 = EIGHT_BIT[name](resumed, percentile_clipping=90)
    opt2.load_state_dict(saved["opt"])
    _run(opt2, resumed, grads[3:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)
    assert opt.state[params[1]]["state1"].dtype == torch.uint8  # 4097 >= min_8bit_size
    assert opt.state[params[2]]["state1"].dtype == torch.float32  # 7 < min_8bit_size


@pytest.mark.parametrize("name", sorted(EIGHT_BIT))
def test_common_settings(name):
    params = _model()
    opt = EIGHT_BIT[name](params, min_8bit_size=10_000, skip_zeros=True)
    g = [torch.randn(p.shape) for p in params]
    g[1][:100] = 0.0
    g[1][200] = float("inf")
    before = [p.detach().clone() for p in params]
    for p, gi in zip(params, g):
        p.grad = gi
    opt.step()
    assert all(opt.state[p]["state1"].dtype == torch.float32 for p in params)  # all under min_8bit_size
    assert torch.equal(params[1][:100], before[1][:100]) and params[1][200] == before[1][200]
    assert not torch.equal(params[1][300:], before[1][300:])
    assert opt.nonfinite_count == 1
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("name", sorted(EIGHT_BIT))
def test_override_to_32bit(name):
    params = _model()
    mng = optim.GlobalOptimManager.get_instance()
    mng.override_config(params[1], "optim_bits", 32)
    try:
        opt = EIGHT_BIT[name](params)
        _run(opt, params, _grads(params, 2, seed=3))
        assert opt.state[params[1]]["state1"].dtype == torch.float32
        assert opt.state[params[0]]["state1"].dtype == torch.uint8
    finally:
        mng.initialize()


# -- bitsandbytes interoperability --------------------------------------------------------------------
BNB_CLASSES = {
    "sgd": ("SGD8bit", dict(lr=0.01, momentum=0.9)),
    "rmsprop": ("RMSprop8bit", dict(lr=1e-3)),
    "adagrad": ("Adagrad8bit", dict(lr=1e-2)),
    "lion": ("Lion8bit", dict(lr=1e-4)),
    "lamb": ("LAMB8bit", dict(lr=1e-3)),
    "ademamix": ("AdEMAMix8bit", dict(lr=1e-3)),
}
BNB8_CLASSES = {
    "sgd": lambda ps: optim.SGD8bit(ps, lr=0.01, momentum=0.9),
    "rmsprop": lambda ps: optim.RMSprop8bit(ps, lr=1e-3),
    "adagrad": lambda ps: optim.Adagrad8bit(ps),
    "lion": lambda ps: optim.Lion8bit(ps),
    "lamb": lambda ps: optim.LAMB8bit(ps),
    "ademamix": lambda ps: optim.AdEMAMix8bit(ps),
}


def _bnb():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("bitsandbytes")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(BNB_CLASSES))
def test_loads_bitsandbytes_state_dict(name):
    bnb = _bnb()
    cls_name, kw = BNB_CLASSES[name]
    p = torch.nn.Parameter(torch.randn(4097) * 0.1)
    theirs = getattr(bnb.optim, cls_name)([p], **kw)
    for _ in range(2):
        p.grad = torch.randn(4097) * 0.01
        theirs.step()
    sd = theirs.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    ours = BNB8_CLASSES[name]([q])
    ours.load_state_dict(sd)
    assert ours.state[q]["step"] == 2
    st = theirs.state[p]
    expected = [st["state1"], st["state2"]] if "state2" in st else [st["state1"]]
    if name == "ademamix":  # (m1, m2) stacked in state1 -> bnb8's state1 and state3
        expected = [st["state1"][0], st["state2"], st["state1"][1]]
        absmax = [st["absmax1"][0], st["absmax2"], st["absmax1"][1]]
    else:
        absmax = [st["absmax1"], st["absmax2"]] if "state2" in st else [st["absmax1"]]
    for k, (codes, a) in enumerate(zip(expected, absmax), start=1):
        assert torch.equal(ours.state[q][f"state{k}"], codes.view(q.shape))
        assert torch.equal(ours.state[q][f"absmax{k}"], a)
    q.grad = torch.randn(4097) * 0.01
    ours.step()  # and it keeps training
    assert torch.isfinite(q).all()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(BNB_CLASSES))
@pytest.mark.parametrize("size", [4097, 100])  # 8-bit state, and float32 state below min_8bit_size
def test_bitsandbytes_loads_bnb8_state_dict(name, size):
    """The other way round: bitsandbytes loads bnb8's state dict (state_dict() itself, or for AdEMAMix,
    whose momenta bitsandbytes stacks, bitsandbytes_state_dict()) and continues within quantization
    noise of bnb8."""
    bnb = _bnb()
    cls_name, kw = BNB_CLASSES[name]
    torch.manual_seed(0)
    q = torch.nn.Parameter(torch.randn(size) * 0.1)
    ours = BNB8_CLASSES[name]([q])
    grads = [torch.randn(size) * 0.01 for _ in range(4)]
    for g in grads[:2]:
        q.grad = g.clone()
        ours.step()
    p = torch.nn.Parameter(q.detach().clone())
    theirs = getattr(bnb.optim, cls_name)([p], **kw)
    theirs.load_state_dict(ours.bitsandbytes_state_dict() if name == "ademamix" else ours.state_dict())
    for g in grads[2:]:
        p.grad, q.grad = g.clone(), g.clone()
        theirs.step()
        ours.step()
    assert torch.isfinite(p).all()
    if name not in ("lamb", "lars"):  # bitsandbytes' 8-bit LAMB/LARS are other updates (README)
        torch.testing.assert_close(p.detach(), q.detach(), atol=5e-3, rtol=0)


def assert_state_dicts_equal(a, b) -> None:
    """Same keys, values and tensors (dtype, shape and contents), all the way down."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_state_dicts_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_dicts_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("name", sorted(BNB8_CLASSES))
def test_bitsandbytes_layout_resumes_bit_exactly_and_leaves_the_optimizer_as_it_was(name):
    """bitsandbytes_state_dict() loads back into bnb8 and continues exactly like the optimizer it came
    from; making it changes nothing in that optimizer. Only AdEMAMix's layout differs from state_dict()."""
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(4097) * 0.1), torch.nn.Parameter(torch.randn(100) * 0.1)]
    ours = BNB8_CLASSES[name](params)
    grads = [[torch.randn_like(p) * 0.01 for p in params] for _ in range(4)]

    def step(opt, ps, gs):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()

    for gs in grads[:2]:
        step(ours, params, gs)
    before = copy.deepcopy(ours.state_dict())
    bnb_sd = copy.deepcopy(ours.bitsandbytes_state_dict())
    assert_state_dicts_equal(ours.state_dict(), before)
    quant = bnb_sd["state"][0][QUANT_STATE_KEY]
    if name == "ademamix":
        assert quant["state1"].shape == (2, 4097) and quant["absmax1"].shape[0] == 2
        assert not {"state3", "absmax3", "qmap3"} & quant.keys()
        assert bnb_sd["state"][1][QUANT_STATE_KEY]["state1"].shape == (2, 100)
    else:
        assert_state_dicts_equal(bnb_sd, before)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = BNB8_CLASSES[name](copies)
    resumed.load_state_dict(bnb_sd)
    for gs in grads[2:]:
        step(ours, params, gs)
        step(resumed, copies, gs)
    for p, c in zip(params, copies):
        assert torch.equal(p, c)


def test_ademamix_loads_bitsandbytes_32bit_layout():
    p = torch.nn.Parameter(torch.randn(100))
    opt = optim.AdEMAMix([p])
    m1, nu, m2 = torch.randn(100), torch.rand(100), torch.randn(100)
    sd = opt.state_dict()
    sd["state"] = {0: {"step": 5, "state1": torch.stack([m1, m2]), "state2": nu}}
    opt.load_state_dict(sd)
    st = opt.state[p]
    assert torch.equal(st["state1"], m1) and torch.equal(st["state2"], nu) and torch.equal(st["state3"], m2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adagrad", "lion", "lamb", "lars", "ademamix"])
def test_accumulated_error_no_worse_than_bitsandbytes(name):
    """60 steps, no re-sync: relative error of the total parameter change against the 32-bit reference,
    bnb8 8-bit vs bitsandbytes 8-bit of the same family (its CPU path; 256x1024 to keep it minutes)."""
    bnb = _bnb()
    kw = dict(CONFIGS[[n for n, _ in CONFIGS].index(name)][1])
    bnb_cls = {"sgd": "SGD8bit", "rmsprop": "RMSprop8bit", "adagrad": "Adagrad8bit", "lion": "Lion8bit",
               "lamb": "LAMB8bit", "lars": "LARS8bit", "ademamix": "AdEMAMix8bit"}[name]  # fmt: skip
    cls, make_ref = FAMILIES[name]
    shape = (256, 1024)
    p0 = torch.randn(shape) * 0.1
    ours = torch.nn.Parameter(p0.clone())
    theirs = torch.nn.Parameter(p0.clone())
    o_ours = cls([ours], optim_bits=8, **bnb8_kwargs(name, kw))
    o_theirs = getattr(bnb.optim, bnb_cls)([theirs], **kw)
    ref = make_ref(p0, **kw)
    for _ in range(60):
        g = torch.randn(shape) * 0.01
        ours.grad, theirs.grad = g.clone(), g.clone()
        o_ours.step()
        o_theirs.step()
        ref.step(g)
    delta = ref.p.detach() - p0
    err_ours = ((ours.detach() - p0) - delta).norm() / delta.norm()
    err_theirs = ((theirs.detach() - p0) - delta).norm() / delta.norm()
    print(f"{name}: bnb8 8-bit {err_ours:.4g}, bitsandbytes 8-bit {err_theirs:.4g}")
    assert err_ours <= err_theirs * 1.05 + 1e-4
