// bnb8 — CPU entry points. kernels.cpp is built once per instruction set into its own namespace;
// dispatch.cpp exposes the bnb8::cpu:: functions and routes each call to the best one this CPU runs.
#pragma once

#include "bnb8/api.h"

namespace bnb8::cpu {

#define BNB8_CPU_DECLARE(ISA)                      \
  namespace ISA {                                  \
  void quantize_blockwise(const QuantizeArgs& a);   \
  void dequantize_blockwise(const QuantizeArgs& a); \
  void optimizer_update(const UpdateArgs& a);       \
  void optimizer_norms(const UpdateArgs& a);        \
  int search_runs(const float* thresholds);         \
  }
BNB8_CPU_DECLARE(generic)
#if defined(BNB8_HAVE_X86_VARIANTS)
BNB8_CPU_DECLARE(avx2)
BNB8_CPU_DECLARE(avx512)
BNB8_CPU_DECLARE(avx512vbmi)
#endif
#undef BNB8_CPU_DECLARE

// The instruction set the dispatcher uses: "avx512vbmi", "avx512", "avx2" or "generic".
// BNB8_CPU_ISA=avx512|avx2|generic in the environment forces a lesser one (benchmarks, tests).
const char* isa();

void quantize_blockwise(const QuantizeArgs& a);
void dequantize_blockwise(const QuantizeArgs& a);
void optimizer_update(const UpdateArgs& a);
void optimizer_norms(const UpdateArgs& a);

// How the variant in use searches this threshold table (256 float32 on the host): the number of
// equal-spacing runs of the AVX-512 run search (simd_search.h), 0 when that search falls back to its
// tree for this table, -1 when the variant has no run search. For tests and benchmarks.
int search_runs(const float* thresholds);

}  // namespace bnb8::cpu
