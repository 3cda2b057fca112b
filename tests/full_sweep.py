"""Every float32 in [-1, 1] (2.13e9 values: both signs, zeros, denormals) through bnb8's quantize,
against the definition the kernels implement, torch.searchsorted(thresholds, y). About a minute per
map on 2 cores; the tests run strided versions of the same sweep.

    python tests/full_sweep.py [MAP,...]             # the CPU's own kernels
    BNB8_CPU_ISA=avx2 python tests/full_sweep.py     # another compiled variant (avx2, generic, ...)

Prints, per map, how many values were encoded to another code than the definition's (0 expected)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bnb8  # noqa: E402
import bnb8.functional as F  # noqa: E402
from tests.test_functional import MAPS, SEARCH_MAPS, float32_sweep  # noqa: E402

CHUNK = 1 << 24  # magnitude bit patterns per pass: 2 x 16M values, ~0.4 GB of temporaries


def mismatches(code: torch.Tensor) -> int:
    thresholds, _ = F.code_search_tables(code)
    wrong = 0
    for start in range(0, 0x3F800001, CHUNK):
        x = float32_sweep(stride=1, offset=start, stop=start + CHUNK)
        codes, state = F.quantize_blockwise(x, code=code, blocksize=4096)
        assert bool((state.absmax == 1).all())
        wrong += int((codes.long() != torch.searchsorted(thresholds, x)).sum())
    return wrong


def main() -> None:
    maps = {**MAPS, **SEARCH_MAPS}
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(maps)
    unknown = sorted(set(names) - maps.keys())
    if unknown:
        sys.exit(f"unknown map(s) {unknown}: choose from {', '.join(maps)}")
    for name in names:
        code = maps[name]()
        started = time.perf_counter()
        wrong = mismatches(code)
        bucketed = F.code_search_tables(code)[1] is not None
        print(
            f"{bnb8._C.cpu_isa()} {name}: {wrong} of 2130706434 values wrong "
            f"(bucket table: {bucketed}; {time.perf_counter() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
