"""torch's fused Adam alone, one thread: median step time per parameter at 4M..64M parameters."""

import statistics
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
for n in [4 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20]:
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    for _ in range(3):
        opt.step()
    times = []
    for _ in range(11):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{n >> 20:3d}M {median * 1e3:7.2f} ms {median / n * 1e9:.3f} ns/param")
    del opt, p
