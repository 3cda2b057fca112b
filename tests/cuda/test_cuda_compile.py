"""torch.compile(fullgraph=True) traces bnb8's CUDA ops and an 8-bit optimizer step without graph breaks."""

from __future__ import annotations

import pytest
import torch

import bnb8.functional as F
from bnb8 import _native

# Inductor itself touches torch.jit.script_method (deprecated in torch 2.13): torch's warning, not ours.
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


def test_compiled_update_op_matches_eager():
    torch.manual_seed(0)
    n = 5000
    qmaps = [F.create_dynamic_map(signed=True).cuda(), F.create_dynamic_map(signed=False).cuda()]
    tables = [F.code_search_tables(q) for q in qmaps]
    thresholds = [t for t, _ in tables]
    bucket_table = [b for _, b in tables]
    hyper = _native.hyper_list(step_size=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)

    def fresh():
        p = torch.randn(n, device="cuda")
        g = torch.randn(n, device="cuda") * 1e-2
        s1 = torch.zeros(n, dtype=torch.uint8, device="cuda")
        s2 = torch.zeros(n, dtype=torch.uint8, device="cuda")
        a1 = torch.zeros((n + 255) // 256, device="cuda")
        a2 = torch.zeros((n + 255) // 256, device="cuda")
        return p, g, s1, s2, a1, a2, torch.zeros(1, dtype=torch.int64, device="cuda")

    def step(p, g, s1, s2, a1, a2, nonfinite):
        g = g * 2.0  # some traced torch work around the op
        torch.ops.bnb8.optimizer_update_(
            "adam",
            [p],
            [g],
            [s1],
            [s2],
            [],
            [a1],
            [a2],
            [],
            qmaps,
            thresholds,
            bucket_table,
            hyper,
            None,
            nonfinite,
        )

    torch.manual_seed(1)
    eager = fresh()
    torch.manual_seed(1)
    compiled = fresh()
    compiled_step = torch.compile(step, fullgraph=True)
    for _ in range(3):
        step(*eager)
        compiled_step(*compiled)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_compiled_optimizer_step_has_no_graph_breaks():
    optim = pytest.importorskip("bnb8.optim")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)).cuda()
    opt = optim.Adam8bit(model.parameters(), lr=1e-3)
    x = torch.randn(64, 128, device="cuda")

    def train_step():
        loss = model(x).square().mean()
        loss.backward()
        return loss

    @torch.compile(fullgraph=True, backend="aot_eager")
    def opt_step():
        opt.step()

    losses = []
    for i in range(4):
        opt.zero_grad()
        losses.append(float(train_step().detach()))
        if i == 0:
            opt.step()  # the first step creates the state (code tables are built on the host)
        else:
            opt_step()
    assert opt.state[model[0].weight]["state1"].dtype == torch.uint8
    assert losses[-1] < losses[0]
