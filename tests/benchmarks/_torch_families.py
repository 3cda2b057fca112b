"""LARS, LAMB and AdEMAMix written with torch's multi-tensor (``torch._foreach_*``) in-place ops: the
fastest 32-bit torch implementation of these families we know how to write, as the yardstick for the
8-bit steps where torch ships no optimizer of the family (tests/benchmarks/test_bench_families.py).

Each computes the same update as bnb8's class of the family with the default arguments used there
(tests/test_bench_yardsticks.py checks them against bnb8's 32-bit classes), in as few passes over
memory as torch's ops allow: ``lerp_``/``addcmul_``/``torch.add(out=)`` for the moving averages, one
temporary per parameter reused in place, ``_foreach_norm`` for the trust ratios.
"""

from __future__ import annotations

import torch


class _ForeachOptimizer(torch.optim.Optimizer):
    """Parameters with gradients, their grads and their states (zeros on the first step) per group."""

    state_names: tuple[str, ...] = ()

    def _gather(self, group):
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        states = []
        for p in params:
            st = self.state[p]
            if not st:
                st["step"] = 0
                for name in self.state_names:
                    st[name] = torch.zeros_like(p)
            st["step"] += 1
            states.append(st)
        step = states[0]["step"] if states else 0
        return params, grads, [[st[n] for st in states] for n in self.state_names], step


class ForeachLARS(_ForeachOptimizer):
    """SGD with momentum (torch semantics) whose update norm is capped at ``max_unorm * ||p||``."""

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.9, max_unorm=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, max_unorm=max_unorm))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, grads, (bufs,), step = self._gather(group)
            if not params:
                continue
            for buf, g in zip(bufs, grads):  # buf = momentum * buf + g in one pass (torch.add writes out=)
                if step == 1:
                    buf.copy_(g)
                else:
                    torch.add(g, buf, alpha=group["momentum"], out=buf)
            p_norms, u_norms = torch._foreach_norm(params), torch._foreach_norm(bufs)
            for p, u, pn, un in zip(params, bufs, p_norms, u_norms):
                limit = group["max_unorm"] * pn.item()
                scale = limit / un.item() if un.item() > limit else 1.0
                p.add_(u, alpha=-group["lr"] * scale)


class ForeachLAMB(_ForeachOptimizer):
    """Adam's bias-corrected direction scaled per tensor by the trust ratio ``||p|| / ||u||``."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, grads, (ms, vs), step = self._gather(group)
            if not params:
                continue
            b1, b2 = group["betas"]
            torch._foreach_lerp_(ms, grads, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, 1 - b2)
            # The trust ratio makes the step invariant to the scale of u, so u = (m / bc1) / (sqrt(v) /
            # sqrt(bc2) + eps) may drop its constant factor sqrt(bc2) / bc1: w = m / (sqrt(v) + eps sqrt(bc2)).
            w = torch._foreach_sqrt(vs)
            torch._foreach_add_(w, group["eps"] * (1 - b2**step) ** 0.5)
            for m, d in zip(ms, w):
                torch.div(m, d, out=d)
            p_norms, w_norms = torch._foreach_norm(params), torch._foreach_norm(w)
            for p, d, pn, wn in zip(params, w, p_norms, w_norms):
                trust = pn.item() / wn.item() if pn.item() > 0 and wn.item() > 0 else 1.0
                p.add_(d, alpha=-group["lr"] * trust)


class ForeachAdEMAMix(_ForeachOptimizer):
    """Two EMAs of the gradient (beta1 fast, beta3 slow) over Adam's second moment, decoupled decay."""

    state_names = ("m1", "nu", "m2")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, grads, (m1s, nus, m2s), step = self._gather(group)
            if not params:
                continue
            b1, b2, b3 = group["betas"]
            bc1, bc2_sqrt = 1 - b1**step, (1 - b2**step) ** 0.5
            torch._foreach_lerp_(m1s, grads, 1 - b1)
            torch._foreach_lerp_(m2s, grads, 1 - b3)
            torch._foreach_mul_(nus, b2)
            torch._foreach_addcmul_(nus, grads, grads, 1 - b2)
            # (m1 / bc1 + alpha m2) / (sqrt(nu) / sqrt(bc2) + eps)
            #     = sqrt(bc2) / bc1 * (m1 + alpha bc1 m2) / (sqrt(nu) + eps sqrt(bc2))
            denom = torch._foreach_sqrt(nus)
            torch._foreach_add_(denom, group["eps"] * bc2_sqrt)
            num = torch._foreach_add(m1s, m2s, alpha=group["alpha"] * bc1)
            for d, q in zip(denom, num):
                torch.div(q, d, out=q)
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, num, alpha=-group["lr"] * bc2_sqrt / bc1)
