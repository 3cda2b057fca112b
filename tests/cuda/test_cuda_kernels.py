"""The CUDA kernels against the CPU kernels on the same inputs (skipped without a GPU; `make gpu-check`).

Both devices run the per-element math of ext/include/bnb8/, so quantization must agree bit for bit.
Optimizer updates may differ where nvcc and the host compiler contract a*b+c into an FMA differently:
parameters then differ in the last bits, and a re-quantized state element whose fp32 value lies
within an ulp of a decision threshold may land on the neighbouring code (at most 1 apart, and rare).
"""

from __future__ import annotations

import math

import pytest
import torch

import bnb8
import bnb8.functional as F
from bnb8 import _native

pytestmark = pytest.mark.cuda

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
SIZES = {"1": (1,), "197": (197,), "4097": (4097,), "1000x1001": (1000, 1001)}
BLOCK = 256


@pytest.fixture(autouse=True)
def _native_cuda():
    assert _native.C.HAS_CUDA, "bnb8._C was built without CUDA: build with BNB8_CUDA=ON (make gpu-check does)"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def heavy_tailed(shape, seed: int) -> torch.Tensor:
    """float32 values spanning many decades, with exact zeros: hits every region of the code table."""
    g = gen(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 3)
    x.view(-1)[:: max(1, x.numel() // 7)] = 0.0
    return x.clamp(-6e4, 6e4)  # finite in float16 too


def bisection_map() -> torch.Tensor:
    """Codes outside [-1, 1]: the search tables fall back to bisection (no bucket table)."""
    return torch.linspace(-1.5, 1.5, 256, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------
# quantization


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("blocksize", F.BLOCKSIZES)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_quantize_matches_cpu_exactly(dtype, blocksize, size):
    x = heavy_tailed(size, seed=blocksize + x_seed(size)).to(dtype)
    codes_cpu, state_cpu = F.quantize_blockwise(x, blocksize=blocksize)
    codes_gpu, state_gpu = F.quantize_blockwise(x.cuda(), blocksize=blocksize)
    assert torch.equal(state_gpu.absmax.cpu(), state_cpu.absmax)
    assert torch.equal(codes_gpu.cpu(), codes_cpu)


def x_seed(size) -> int:
    return int(math.prod(size)) % 1000


@pytest.mark.parametrize("blocksize", [64, 256, 4096])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_quantize_bisection_path_matches_cpu(dtype, blocksize):
    code = bisection_map()
    assert F.code_search_tables(code)[1] is None
    x = heavy_tailed((5000,), seed=3).to(dtype)
    codes_cpu, state_cpu = F.quantize_blockwise(x, code=code, blocksize=blocksize)
    codes_gpu, state_gpu = F.quantize_blockwise(x.cuda(), code=code.cuda(), blocksize=blocksize)
    assert torch.equal(state_gpu.absmax.cpu(), state_cpu.absmax)
    assert torch.equal(codes_gpu.cpu(), codes_cpu)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("blocksize", F.BLOCKSIZES)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_dequantize_matches_cpu_exactly(dtype, blocksize, size):
    n = math.prod(size)
    codes = torch.randint(0, 256, size, dtype=torch.uint8, generator=gen(n))
    absmax = torch.rand((n + blocksize - 1) // blocksize, generator=gen(n + 1)) * 10
    code = F.create_dynamic_map(signed=True)
    out_cpu = F.dequantize_blockwise(codes, absmax=absmax, code=code, blocksize=blocksize,
                                     out=torch.empty(size, dtype=dtype))  # fmt: skip
    out_gpu = F.dequantize_blockwise(codes.cuda(), absmax=absmax.cuda(), code=code.cuda(), blocksize=blocksize,
                                     out=torch.empty(size, dtype=dtype, device="cuda"))  # fmt: skip
    assert torch.equal(out_gpu.cpu(), out_cpu)


def test_quantize_unaligned_input_and_output():
    """A view that starts 1 element into its storage takes the scalar (unvectorised) path."""
    base = heavy_tailed((4097 + 1,), seed=11)
    x_cpu, x_gpu = base[1:], base.cuda()[1:]
    thresholds, bucket_table = F.code_search_tables(F.create_dynamic_map(signed=True))
    results = []
    for x, dev in ((x_cpu, "cpu"), (x_gpu, "cuda")):
        codes = torch.empty(4097 + 1, dtype=torch.uint8, device=dev)[1:]
        absmax = torch.empty((4097 + 255) // 256, device=dev)
        torch.ops.bnb8.quantize_blockwise_(x, thresholds.to(dev), bucket_table.to(dev), 256, codes, absmax)
        results.append((codes.cpu(), absmax.cpu()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_quantize_nonfinite_block_gets_nan_absmax():
    """A block holding NaN or Inf: NaN absmax and every element the code of 0, exactly as the CPU op."""
    x = torch.randn(10 * 256, generator=gen(5))
    x[256 + 3] = float("nan")
    x[3 * 256 + 200] = float("inf")
    thresholds, bucket_table = F.code_search_tables(F.create_dynamic_map(signed=True))
    results = []
    for dev in ("cpu", "cuda"):
        codes = torch.empty(x.numel(), dtype=torch.uint8, device=dev)
        absmax = torch.empty(10, device=dev)
        torch.ops.bnb8.quantize_blockwise_(
            x.to(dev), thresholds.to(dev), bucket_table.to(dev), 256, codes, absmax
        )
        results.append((codes.cpu(), absmax.cpu()))
    (codes_cpu, absmax_cpu), (codes_gpu, absmax_gpu) = results
    assert torch.isnan(absmax_gpu[1]) and torch.isnan(absmax_gpu[3])
    finite_blocks = [b for b in range(10) if b not in (1, 3)]
    expected = x.view(10, 256).abs().amax(dim=1)
    assert torch.equal(absmax_gpu[finite_blocks], expected[finite_blocks])
    zero_code = int(torch.searchsorted(thresholds, torch.tensor([0.0])))
    assert (codes_gpu.view(10, 256)[[1, 3]] == zero_code).all()
    assert torch.equal(codes_gpu, codes_cpu)
    assert torch.equal(absmax_gpu.isnan(), absmax_cpu.isnan())


# A side stream that first sleeps, then writes the input: a kernel launched on any other stream would
# run before the write and read the stale contents (zeros), so these tests fail unless the op uses the
# current stream. torch's streams do not synchronise with the legacy default stream.
SLEEP_CYCLES = 200_000_000  # ~0.1 s on a 2 GHz GPU clock


def test_quantize_on_a_side_stream():
    source = heavy_tailed((1 << 20,), seed=9)
    x = torch.zeros_like(source, device="cuda")
    source_gpu = source.cuda()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(SLEEP_CYCLES)
        x.copy_(source_gpu)
        codes, state = F.quantize_blockwise(x, blocksize=256)
        back = F.dequantize_blockwise(codes, state)
    torch.cuda.current_stream().wait_stream(stream)
    codes_cpu, state_cpu = F.quantize_blockwise(source, blocksize=256)
    assert torch.equal(codes.cpu(), codes_cpu)
    assert torch.equal(back.cpu(), F.dequantize_blockwise(codes_cpu, state_cpu))


@pytest.mark.slow
def test_quantize_more_than_2_31_elements():
    """64-bit indexing: blocks past element 2**31 are quantized where they belong."""
    blocksize = 256
    n = 2**31 + 3 * blocksize + 5
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * 2**30:
        pytest.skip(f"needs 16 GiB of free GPU memory, has {free / 2**30:.1f}")
    x = torch.randn(n, dtype=torch.float16, device="cuda")
    codes, state = F.quantize_blockwise(x, blocksize=blocksize)
    out = F.dequantize_blockwise(codes, state)
    boundary = 2**31 // blocksize
    last = (n + blocksize - 1) // blocksize
    for first_block, end in ((boundary - 4, (boundary + 4) * blocksize), (last - 4, n)):
        start = first_block * blocksize
        ref_codes, ref_state = F.quantize_blockwise(x[start:end].cpu(), blocksize=blocksize)
        assert torch.equal(codes[start:end].cpu(), ref_codes)
        assert torch.equal(
            state.absmax[first_block : first_block + ref_state.absmax.numel()].cpu(), ref_state.absmax
        )
        assert torch.equal(out[start:end].cpu(), F.dequantize_blockwise(ref_codes, ref_state))


# ----------------------------------------------------------------------------------------------------
# optimizer updates


def hyper(**overrides: float) -> list[float]:
    """Plausible values for every hyper-parameter field (each rule reads the ones it uses)."""
    values = {
        "step_size": 1e-3 / (1 - 0.9**3),
        "decay": 1 - 1e-3 * 0.01,
        "weight_decay": 0.01,
        "beta1": 0.9,
        "beta2": 0.999,
        "beta3": 0.9999,
        "eps": 1e-8,
        "bias_correction2_sqrt": math.sqrt(1 - 0.999**3),
        "alpha": 0.99,
        "momentum": 0.9,
        "dampening": 0.1,
        "lr": 1e-3,
        "step": 3,
        "nesterov": 1,
    }
    values.update(overrides)
    return _native.hyper_list(**{k: v for k, v in values.items() if k in _native.HYPER_FIELDS})


class Problem:
    """One multi-tensor update: parameters, gradients (with a few NaN/Inf), states, and the tables."""

    def __init__(self, rule: str, dtype: torch.dtype, quantized: bool, shapes, seed: int = 0):
        self.rule, self.quantized = rule, quantized
        n_states = _native.RULES[rule][1]
        g = gen(seed)
        self.params = [torch.randn(s, generator=g).to(dtype) for s in shapes]
        self.grads = [(torch.randn(s, generator=g) * 1e-2).to(dtype) for s in shapes]
        big = max(range(len(shapes)), key=lambda i: self.grads[i].numel())
        if self.grads[big].numel() > 600:  # non-finite gradients in two different blocks
            flat = self.grads[big].view(-1)
            flat[5], flat[300], flat[-2] = float("nan"), float("inf"), float("-inf")
        # Every state non-negative (so rules that take square roots of a state stay finite); state 1
        # uses the signed map, later states the unsigned one, as Adam does.
        self.qmaps = [F.create_dynamic_map(signed=(k == 0)) for k in range(n_states)] if quantized else []
        self.states, self.absmaxes = [], []
        for k in range(n_states):
            values = [(torch.rand(s, generator=g) * (0.1 if k == 0 else 1e-4)) for s in shapes]
            if quantized:
                pairs = [F.quantize_blockwise(v, code=self.qmaps[k], blocksize=BLOCK) for v in values]
                self.states.append([c for c, _ in pairs])
                self.absmaxes.append([st.absmax for _, st in pairs])
            else:
                self.states.append(values)
                self.absmaxes.append([])
        tables = [F.code_search_tables(q) for q in self.qmaps]
        self.thresholds = [t for t, _ in tables]
        self.bucket_table = [b for _, b in tables]
        self.scales = torch.rand(len(shapes), 2, generator=g) + 0.5
        self.nonfinite = torch.zeros(1, dtype=torch.int64)

    def to(self, device: str) -> Problem:
        out = object.__new__(Problem)
        out.rule, out.quantized = self.rule, self.quantized

        def move(x):
            if isinstance(x, list):
                return [move(t) for t in x]
            return None if x is None else x.to(device, copy=True)

        for name in ("params", "grads", "states", "absmaxes", "qmaps", "thresholds", "bucket_table", "scales",
                     "nonfinite"):  # fmt: skip
            setattr(out, name, move(getattr(self, name)))
        return out

    def _lists(self):
        states = self.states + [[] for _ in range(3 - len(self.states))]
        absmaxes = self.absmaxes + [[] for _ in range(3 - len(self.absmaxes))]
        return states, absmaxes

    def update(self, with_scales: bool = True, skip_zeros: bool = False) -> None:
        states, absmaxes = self._lists()
        bucket_table = [b if b is not None else torch.empty(0, dtype=torch.int32, device=t.device)
                        for b, t in zip(self.bucket_table, self.thresholds)]  # fmt: skip
        torch.ops.bnb8.optimizer_update_(
            self.rule, self.params, self.grads, *states, *absmaxes, self.qmaps, self.thresholds, bucket_table,
            hyper(skip_zeros=int(skip_zeros)), self.scales if with_scales else None, self.nonfinite,
        )  # fmt: skip

    def norms(self) -> torch.Tensor:
        states, absmaxes = self._lists()
        return torch.ops.bnb8.optimizer_norms(
            self.rule, self.params, self.grads, *states, *absmaxes, self.qmaps, hyper(), self.scales
        )


def float_tolerance(dtype: torch.dtype) -> dict:
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-6}
    return {"rtol": 2 * torch.finfo(dtype).eps, "atol": 1e-5}


def assert_codes_close(gpu: torch.Tensor, cpu: torch.Tensor, what: str) -> None:
    diff = (gpu.cpu().int() - cpu.int()).abs()
    if diff.numel() == 0:
        return
    assert int(diff.max()) <= 1, f"{what}: codes differ by {int(diff.max())}"
    mismatches = int((diff > 0).sum())
    assert mismatches <= max(4, cpu.numel() // 1000), f"{what}: {mismatches} of {cpu.numel()} codes differ"


def assert_params_close(gpu: torch.Tensor, cpu: torch.Tensor, what: str) -> None:
    """Within last-bit noise, except for rare elements where a sign-like rule (Lion) sees a value
    within an ulp of 0 and the FMA difference flips its sign: a few, each at most a few steps off."""
    a, b = gpu.cpu().float(), cpu.float()
    tol = float_tolerance(cpu.dtype)
    off = ~torch.isclose(a, b, rtol=tol["rtol"], atol=tol["atol"])
    count = int(off.sum())
    assert count <= max(2, b.numel() // 100_000), f"{what}: {count} of {b.numel()} elements differ"
    if count:
        assert float((a - b)[off].abs().max()) <= 0.05, f"{what}: elements differ by more than a few steps"


def assert_same_update(gpu: Problem, cpu: Problem) -> None:
    for i, (pg, pc) in enumerate(zip(gpu.params, cpu.params)):
        assert_params_close(pg, pc, f"params[{i}]")
    for k, (sg, sc) in enumerate(zip(gpu.states, cpu.states)):
        for i, (a, b) in enumerate(zip(sg, sc)):
            if cpu.quantized:
                assert_codes_close(a, b, f"state{k + 1}[{i}]")
                torch.testing.assert_close(gpu.absmaxes[k][i].cpu(), cpu.absmaxes[k][i], rtol=1e-5, atol=0.0)
            else:
                atol = 1e-6 * float(b.abs().max()) if b.numel() else 0.0
                torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=atol)
    assert int(gpu.nonfinite) == int(cpu.nonfinite)


UPDATE_SHAPES = [(1,), (4097,), (1000, 1001), (256,), (3, 300)]


@pytest.mark.parametrize("quantized", [True, False], ids=["8bit", "32bit"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("rule", sorted(_native.RULES))
def test_update_matches_cpu(rule, dtype, quantized):
    cpu = Problem(rule, dtype, quantized, UPDATE_SHAPES, seed=len(rule))
    gpu = cpu.to("cuda")
    original = [p.clone() for p in cpu.params]
    cpu.update()
    gpu.update()
    assert_same_update(gpu, cpu)
    assert int(cpu.nonfinite) == 3
    # Elements with a non-finite gradient keep their parameter exactly.
    flat_grad = gpu.grads[2].view(-1).cpu()
    bad = ~torch.isfinite(flat_grad)
    assert torch.equal(gpu.params[2].view(-1).cpu()[bad], original[2].view(-1)[bad])


MANY_SHAPES = [(1 + 37 * i % 700,) for i in range(100)] + [(0,), (5000,)]


@pytest.mark.parametrize("with_scales", [True, False], ids=["scales", "no-scales"])
@pytest.mark.parametrize("quantized", [True, False], ids=["8bit", "32bit"])
@pytest.mark.parametrize("rule", sorted(_native.RULES))
def test_update_many_small_tensors_in_one_call(rule, quantized, with_scales):
    """More tensors than one launch's slot table holds (and empty ones): every one is updated once,
    with its own row of the per-tensor scales in every launch."""
    cpu = Problem(rule, torch.float32, quantized, MANY_SHAPES, seed=1)
    gpu = cpu.to("cuda")
    cpu.update(with_scales=with_scales)
    gpu.update(with_scales=with_scales)
    assert_same_update(gpu, cpu)


@pytest.mark.parametrize("with_scales", [True, False], ids=["scales", "no-scales"])
@pytest.mark.parametrize("rule", ["adam", "sgd", "lion"])
def test_norms_many_small_tensors_in_one_call(rule, with_scales):
    cpu = Problem(rule, torch.float32, True, MANY_SHAPES, seed=3)
    gpu = cpu.to("cuda")
    if not with_scales:
        cpu.scales = gpu.scales = None
    torch.testing.assert_close(gpu.norms().cpu(), cpu.norms(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["adam", "sgd", "rmsprop"])
def test_update_skip_zeros(rule):
    """skip_zeros: elements whose gradient is exactly 0 keep parameter and states, as on the CPU."""
    cpu = Problem(rule, torch.float32, True, [(4097,), (1000,)], seed=7)
    for g in cpu.grads:
        g.view(-1)[::3] = 0.0
    gpu = cpu.to("cuda")
    original = [p.clone() for p in cpu.params]
    cpu.update(skip_zeros=True)
    gpu.update(skip_zeros=True)
    assert_same_update(gpu, cpu)
    zero = cpu.grads[0].view(-1) == 0
    assert torch.equal(gpu.params[0].view(-1).cpu()[zero], original[0].view(-1)[zero])


@pytest.mark.parametrize("rule", ["adam", "lion"])
def test_update_unaligned_views(rule):
    """Tensors that start one element into their storage take the unvectorised path of whole blocks."""
    cpu = Problem(rule, torch.float32, True, [(4097,), (2048,)], seed=8)
    gpu = cpu.to("cuda")

    def unaligned(t):
        out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
        return out.copy_(t)

    gpu.params = [unaligned(t) for t in gpu.params]
    gpu.grads = [unaligned(t) for t in gpu.grads]
    gpu.states = [[unaligned(t) for t in ts] for ts in gpu.states]
    cpu.update()
    gpu.update()
    assert_same_update(gpu, cpu)


@pytest.mark.parametrize("rule", sorted(_native.RULES))
def test_update_bisection_tables_match_bucketed(rule):
    """Without bucket tables (bisection search) the GPU computes exactly what it does with them."""
    a = Problem(rule, torch.float32, True, [(4097,), (3000,)], seed=2).to("cuda")
    b = a.to("cuda")
    b.bucket_table = [None for _ in b.bucket_table]
    a.update()
    b.update()
    for x, y in zip(a.params + sum(a.states, []), b.params + sum(b.states, [])):
        assert torch.equal(x, y)


@pytest.mark.parametrize("rule", sorted(_native.RULES))
def test_update_on_a_side_stream(rule):
    """The gradients are written on the side stream after a sleep (see SLEEP_CYCLES): an update
    launched on another stream would read zeros and leave every parameter where it was."""
    cpu = Problem(rule, torch.float32, True, [(4097,), (1000, 1001)], seed=4)
    gpu = cpu.to("cuda")
    grads = gpu.grads
    gpu.grads = [torch.zeros_like(g) for g in grads]
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(SLEEP_CYCLES)
        for zeros, g in zip(gpu.grads, grads):
            zeros.copy_(g)
        gpu.update()
    torch.cuda.current_stream().wait_stream(stream)
    cpu.update()
    assert_same_update(gpu, cpu)


@pytest.mark.slow
def test_update_more_than_2_31_elements():
    """64-bit indexing in the update: blocks past element 2**31 of one bf16 parameter are updated
    where they belong. Blocks are independent, so the CPU reference runs on slices around the
    2**31 boundary and at the end (no per-tensor scales, which would couple them)."""
    n = 2**31 + 3 * BLOCK + 5
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip(f"needs 24 GiB of free GPU memory, has {free / 2**30:.1f}")
    gpu = Problem("adam", torch.bfloat16, True, [(1,)], seed=9).to("cuda")
    gpu.params = [torch.randn(n, dtype=torch.bfloat16, device="cuda")]
    gpu.grads = [torch.randn(n, dtype=torch.bfloat16, device="cuda") * 1e-2]
    gpu.states = [[torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda")] for _ in range(2)]
    gpu.absmaxes = [[torch.rand((n + BLOCK - 1) // BLOCK, device="cuda")] for _ in range(2)]
    boundary, last = 2**31 // BLOCK, (n + BLOCK - 1) // BLOCK
    windows = [(boundary - 4, boundary + 4), (last - 4, last)]

    def cut(problem: Problem, first: int, end: int) -> Problem:
        """Blocks [first, end) of the one parameter, copied to the CPU."""
        out = object.__new__(Problem)
        out.rule, out.quantized, out.scales = problem.rule, problem.quantized, None
        for name in ("qmaps", "thresholds", "bucket_table"):
            setattr(out, name, [None if t is None else t.cpu() for t in getattr(problem, name)])
        stop = min(end * BLOCK, n)
        out.params = [problem.params[0][first * BLOCK : stop].to("cpu", copy=True)]
        out.grads = [problem.grads[0][first * BLOCK : stop].to("cpu", copy=True)]
        out.states = [[s[0][first * BLOCK : stop].to("cpu", copy=True)] for s in problem.states]
        out.absmaxes = [[a[0][first:end].to("cpu", copy=True)] for a in problem.absmaxes]
        out.nonfinite = torch.zeros(1, dtype=torch.int64)
        return out

    references = [cut(gpu, first, end) for first, end in windows]
    gpu.update(with_scales=False)
    for (first, end), ref in zip(windows, references):
        ref.update(with_scales=False)
        assert_same_update(cut(gpu, first, end), ref)


@pytest.mark.parametrize("quantized", [True, False], ids=["8bit", "32bit"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("rule", sorted(_native.RULES))
def test_norms_match_cpu(rule, dtype, quantized):
    cpu = Problem(rule, dtype, quantized, UPDATE_SHAPES + [(0,)], seed=6)
    gpu = cpu.to("cuda")
    norms_gpu = gpu.norms()
    assert norms_gpu.device.type == "cuda"
    torch.testing.assert_close(norms_gpu.cpu(), cpu.norms(), rtol=1e-4, atol=1e-6)


def test_update_rejects_tensors_on_another_device():
    p = Problem("adam", torch.float32, True, [(4097,)]).to("cuda")
    p.grads = [p.grads[0].cpu()]
    with pytest.raises((ValueError, RuntimeError), match="grads"):
        p.update()


OPTIMIZERS = {
    "Adam8bit": lambda optim, ps: optim.Adam8bit(ps, lr=1e-3),
    "AdamW8bit-percentile": lambda optim, ps: optim.AdamW8bit(ps, lr=1e-3, percentile_clipping=90),
    "Adam8bit-max_unorm": lambda optim, ps: optim.Adam8bit(ps, lr=1e-3, max_unorm=0.5),
    "Lion8bit": lambda optim, ps: optim.Lion8bit(ps, lr=1e-4),
    "LAMB8bit": lambda optim, ps: optim.LAMB8bit(ps, lr=1e-3),
    "LARS8bit": lambda optim, ps: optim.LARS8bit(ps, lr=1e-3, momentum=0.9),
    "PagedAdamW8bit": lambda optim, ps: optim.PagedAdamW8bit(ps, lr=1e-3),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_optimizer_class_matches_cpu(make):
    """The public optimizers step identically (within FMA noise) on both devices, fed the same
    gradients (computed once on the CPU), including the paths that need norms on the device."""
    optim = pytest.importorskip("bnb8.optim")
    torch.manual_seed(0)
    model_cpu = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 7))
    model_gpu = torch.nn.Sequential(
        torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 7)
    ).cuda()
    model_gpu.load_state_dict(model_cpu.state_dict())
    opts = [make(optim, m.parameters()) for m in (model_cpu, model_gpu)]
    x = torch.randn(32, 256)
    for _ in range(3):
        opts[0].zero_grad()
        model_cpu(x).square().mean().backward()
        for a, b in zip(model_gpu.parameters(), model_cpu.parameters()):
            a.grad = b.grad.cuda()
        for opt in opts:
            opt.step()
    for a, b in zip(model_gpu.parameters(), model_cpu.parameters()):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-4, atol=1e-4)
    assert bnb8.__version__
