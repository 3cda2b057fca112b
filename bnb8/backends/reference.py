"""Pure-torch implementation of every bnb8 op: the fallback for devices without a native kernel and
the oracle the tests compare the native kernels against. Clear, not fast.

Update rules mirror ext/include/bnb8/optim.h one to one (fp32 math, same formula order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

BLOCK = 256  # optimizer-state quantization block (bnb8::kOptimBlock)

Rule = Callable[[Tensor, Tensor, list[Tensor], dict], tuple[Tensor, list[Tensor]]]


def _adam_moments(g: Tensor, m: Tensor, v: Tensor, h: dict) -> tuple[Tensor, Tensor]:
    return h["beta1"] * m + (1.0 - h["beta1"]) * g, h["beta2"] * v + (1.0 - h["beta2"]) * g * g


def _with_l2(g: Tensor, p: Tensor, h: dict) -> Tensor:
    """Coupled weight decay; skipped at 0 as torch does (0 * inf would be NaN)."""
    return g + h["weight_decay"] * p if h["weight_decay"] != 0 else g


def _f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def _adam_direction(m: Tensor, v: Tensor, h: dict) -> Tensor:
    # The kernels' form of m / (sqrt(v) / bc2 + eps): one division; eps * bc2 rounded as in float32.
    bc2 = _f32(h["bias_correction2_sqrt"])
    return (m * bc2) / (v.sqrt() + _f32(_f32(h["eps"]) * bc2))


def _adam(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    m, v = _adam_moments(_with_l2(g, p, h), s[0], s[1], h)
    return _adam_direction(m, v, h), [m, v]


def _adam_amsgrad(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    m, v = _adam_moments(_with_l2(g, p, h), s[0], s[1], h)
    vmax = torch.maximum(s[2], v)
    return _adam_direction(m, vmax, h), [m, v, vmax]


def _sgd(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    g = _with_l2(g, p, h)
    buf = h["momentum"] * s[0] + (1.0 - h["dampening"]) * g  # step 1: s = 0 and dampening = 0, so buf = g
    return (g + h["momentum"] * buf if h["nesterov"] else buf), [buf]


def _sgd_plain(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    """SGD without momentum: no state, so no native kernel (a rule needs at least one state)."""
    return _with_l2(g, p, h), []


def _rmsprop_rule(centered: bool, momentum: bool) -> Rule:
    def rule(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
        g = _with_l2(g, p, h)
        v = h["alpha"] * s[0] + (1.0 - h["alpha"]) * g * g
        new, var = [v], v
        if momentum:
            new.append(s[1])
        if centered:
            ga = h["alpha"] * s[-1] + (1.0 - h["alpha"]) * g
            new.append(ga)
            var = (v - ga * ga).clamp(min=0.0)
        d = g / (var.sqrt() + h["eps"])
        if momentum:
            new[1] = h["momentum"] * s[1] + d
            d = new[1]
        return d, new

    return rule


def _adagrad(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    g = _with_l2(g, p, h)
    acc = s[0] + g * g
    return g / (acc.sqrt() + h["eps"]), [acc]


def _lion(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    c = h["beta1"] * s[0] + (1.0 - h["beta1"]) * g
    m = h["beta2"] * s[0] + (1.0 - h["beta2"]) * g
    return torch.sign(c), [m]


def _lamb(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    m, v = _adam_moments(_with_l2(g, p, h), s[0], s[1], h)
    return _adam_direction(m, v, h) + h["alpha"] * p, [m, v]


def _ademamix(g: Tensor, p: Tensor, s: list[Tensor], h: dict) -> tuple[Tensor, list[Tensor]]:
    m1, nu = _adam_moments(g, s[0], s[1], h)
    m2 = h["beta3"] * s[2] + (1.0 - h["beta3"]) * g
    return _adam_direction(m1 + h["alpha"] * m2, nu, h), [m1, nu, m2]


# Rule name (as in ext/include/bnb8/optim.h kName) -> reference implementation.
RULES: dict[str, Rule] = {
    "adam": _adam,
    "adam_amsgrad": _adam_amsgrad,
    "sgd": _sgd,
    "sgd_plain": _sgd_plain,
    "rmsprop": _rmsprop_rule(centered=False, momentum=False),
    "rmsprop_momentum": _rmsprop_rule(centered=False, momentum=True),
    "rmsprop_centered": _rmsprop_rule(centered=True, momentum=False),
    "rmsprop_centered_momentum": _rmsprop_rule(centered=True, momentum=True),
    "adagrad": _adagrad,
    "lion": _lion,
    "lamb": _lamb,
    "ademamix": _ademamix,
}


def _block_scale(x: Tensor, blocksize: int) -> Tensor:
    """absmax of every block of flat ``x``, repeated per element (and the per-block values)."""
    n = x.numel()
    nblocks = (n + blocksize - 1) // blocksize
    padded = torch.zeros(nblocks * blocksize, dtype=torch.float32, device=x.device)
    padded[:n] = x.abs()
    absmax = padded.view(nblocks, blocksize).amax(dim=1)
    return absmax.repeat_interleave(blocksize)[:n], absmax


def _encode(x: Tensor, per_element_absmax: Tensor, thresholds: Tensor) -> Tensor:
    y = torch.where(per_element_absmax > 0, x / per_element_absmax, torch.zeros_like(x)).clamp(-1.0, 1.0)
    return torch.searchsorted(thresholds, y).to(torch.uint8)  # number of thresholds below y


def quantize_blockwise_(
    A: Tensor, thresholds: Tensor, bucket_table: Tensor | None, blocksize: int, codes: Tensor, absmax: Tensor
) -> None:
    x = A.reshape(-1).float()
    per_element, per_block = _block_scale(x, blocksize)
    finite = torch.isfinite(x)
    if x.numel():
        bad_blocks = torch.zeros_like(per_block, dtype=torch.bool)
        bad_blocks.index_fill_(0, torch.nonzero(~finite).flatten() // blocksize, True)
        per_block = torch.where(bad_blocks, torch.full_like(per_block, float("nan")), per_block)
    absmax.copy_(per_block)
    codes.view(-1).copy_(_encode(torch.where(finite, x, 0.0), per_element, thresholds))


def dequantize_blockwise_(codes: Tensor, absmax: Tensor, code: Tensor, blocksize: int, out: Tensor) -> None:
    c = codes.reshape(-1).long()
    scale = absmax.repeat_interleave(blocksize)[: c.numel()]
    out.view(-1).copy_(code[c] * scale)


def _states_in(states: Sequence[Sequence[Tensor]], absmaxes, qmaps, i: int, n_states: int) -> list[Tensor]:
    out = []
    for k in range(n_states):
        s = states[k][i].reshape(-1)
        if s.dtype == torch.uint8:
            scale = absmaxes[k][i].repeat_interleave(BLOCK)[: s.numel()]
            out.append(qmaps[k][s.long()] * scale)
        else:
            out.append(s.clone())
    return out


def _updates(g: Tensor, h: dict) -> Tensor:
    """Elements that are updated (bnb8::updates_element): finite, and non-zero under skip_zeros."""
    ok = torch.isfinite(g)
    return ok & (g != 0) if h["skip_zeros"] else ok


def _hyper(values: Sequence[float]) -> dict:
    from bnb8._native import HYPER_FIELDS

    return dict(zip(HYPER_FIELDS, values))


def optimizer_update_(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[list[Tensor]],
    absmaxes: list[list[Tensor]],
    qmaps: list[Tensor],
    thresholds: list[Tensor],
    bucket_table: list[Tensor],
    hyper: list[float],
    scales: Tensor | None,
    nonfinite: Tensor,
) -> None:
    h = _hyper(hyper)
    fn = RULES[rule]
    n_states = sum(1 for s in states if len(s))
    for i, (param, grad) in enumerate(zip(params, grads)):
        gscale, uscale = (1.0, 1.0) if scales is None else (scales[i, 0], scales[i, 1])
        g = grad.reshape(-1).float() * gscale
        p = param.reshape(-1).float()
        old = _states_in(states, absmaxes, qmaps, i, n_states)
        u, new = fn(g, p, old, h)
        ok = _updates(g, h)
        updated = (p * h["decay"] - h["step_size"] * uscale * u).to(param.dtype)
        param.view(-1).copy_(torch.where(ok, updated, param.view(-1)))
        nonfinite += (~torch.isfinite(g)).sum()
        for k in range(n_states):
            value = torch.where(ok, new[k], old[k])
            target = states[k][i]
            if target.dtype == torch.uint8:
                per_element, per_block = _block_scale(value, BLOCK)
                absmaxes[k][i].copy_(per_block)
                target.view(-1).copy_(_encode(value, per_element, thresholds[k]))
            else:
                target.view(-1).copy_(value)


def optimizer_norms(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[list[Tensor]],
    absmaxes: list[list[Tensor]],
    qmaps: list[Tensor],
    hyper: list[float],
    scales: Tensor | None,
) -> Tensor:
    h = _hyper(hyper)
    fn = RULES[rule]
    n_states = sum(1 for s in states if len(s))
    device = params[0].device if params else torch.device("cpu")
    out = torch.zeros((len(params), 2), dtype=torch.float32, device=device)
    for i, (param, grad) in enumerate(zip(params, grads)):
        gscale = 1.0 if scales is None else scales[i, 0]
        g = grad.reshape(-1).float() * gscale
        p = param.reshape(-1).float()
        u, _ = fn(g, p, _states_in(states, absmaxes, qmaps, i, n_states), h)
        u = torch.where(_updates(g, h), u, 0.0)
        out[i, 0] = (u.double() ** 2).sum()
        out[i, 1] = (p.double() ** 2).sum()
    return out
