// bnb8 — picks the CPU kernel variant once, from what the processor supports.
#include <stdlib.h>
#include <string.h>

#include "cpu/kernels.h"

namespace bnb8::cpu {

namespace {

enum class Isa { generic, avx2, avx512, avx512vbmi };

Isa detect() {
  Isa best = Isa::generic;
#if defined(BNB8_HAVE_X86_VARIANTS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    best = Isa::avx2;
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = Isa::avx512;
  if (best == Isa::avx512 && __builtin_cpu_supports("avx512vbmi")) best = Isa::avx512vbmi;
#endif
  // An explicit request may only lower the level: asking for more than the CPU has would crash.
  if (const char* want = getenv("BNB8_CPU_ISA")) {
    if (strcmp(want, "generic") == 0) best = Isa::generic;
    else if (strcmp(want, "avx2") == 0 && best >= Isa::avx2) best = Isa::avx2;
    else if (strcmp(want, "avx512") == 0 && best >= Isa::avx512) best = Isa::avx512;
  }
  return best;
}

Isa chosen() {
  static const Isa isa = detect();
  return isa;
}

}  // namespace

const char* isa() {
  switch (chosen()) {
    case Isa::avx512vbmi: return "avx512vbmi";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

#if defined(BNB8_HAVE_X86_VARIANTS)
#define BNB8_ROUTE(fn, arg)                          \
  switch (chosen()) {                                \
    case Isa::avx512vbmi: return avx512vbmi::fn(arg); \
    case Isa::avx512: return avx512::fn(arg);        \
    case Isa::avx2: return avx2::fn(arg);            \
    default: return generic::fn(arg);                \
  }
#else
#define BNB8_ROUTE(fn, arg) return generic::fn(arg);
#endif

void quantize_blockwise(const QuantizeArgs& a) { BNB8_ROUTE(quantize_blockwise, a) }
void dequantize_blockwise(const QuantizeArgs& a) { BNB8_ROUTE(dequantize_blockwise, a) }
void optimizer_update(const UpdateArgs& a) { BNB8_ROUTE(optimizer_update, a) }
void optimizer_norms(const UpdateArgs& a) { BNB8_ROUTE(optimizer_norms, a) }
int search_runs(const float* thresholds) { BNB8_ROUTE(search_runs, thresholds) }

}  // namespace bnb8::cpu
