// bnb8 — CPU block walks around the shared math in ext/include/bnb8/. This file is compiled once per
// instruction set (BNB8_ISA = avx512vbmi | avx512 | avx2 | generic); dispatch.cpp picks one at run
// time. OpenMP spreads blocks over threads; `omp simd` loops over the elements of a block vectorise
// (vectorised sqrt/div: built with -fno-math-errno). AVX-512 builds decode and search the code tables
// in registers (simd_search.h); the others gather from the tables in memory.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "bnb8/api.h"
#include "cpu/kernels.h"
#include "cpu/simd_search.h"
#include "cpu/simd_avx2.h"  // after simd_search.h: only for builds without its AVX-512 search

namespace bnb8::cpu::BNB8_ISA {

namespace {

// Work below this many blocks (128K elements) runs on the calling thread: waking a thread pool —
// and competing with torch's own OpenMP workers, which spin after each torch op — costs more.
constexpr int64_t kMinParallelBlocks = 512;

// Blocks per chunk of a parallel loop. Chunks go to whichever thread is free (schedule(dynamic)), so
// a thread slowed by other work on its core (a shared VM, an efficiency core) does not hold up the
// call as with an even split: on this 2-core VM, 16M-parameter 8-bit Adam steps on 2 threads took
// 0.73-0.83x the time of static scheduling while the host was busy and 0.97-0.99x while it was quiet
// (0.78-1.00x timed end to end from Python).
// About 8 chunks per thread, and at most 256K elements each: shorter runs (16K) per thread cost 7-9 %
// even on a quiet host (each thread's memory streams break up).
inline int64_t chunk_blocks(int64_t blocks, int64_t block_elements, int threads) {
  const int64_t most = std::max<int64_t>(1, (int64_t(1) << 18) / block_elements);
  return std::clamp<int64_t>(blocks / (8 * int64_t(std::max(threads, 1))), 1, most);
}

// max_magnitude (common.h) over a block: the largest |x|, NaN when the block holds a NaN. AVX-512
// builds run it on integer vectors (simd_search.h); elsewhere the same integer maximum, which
// vectorises where a float one that must also propagate NaN does not.
template <class T>
float block_absmax(const typename T::storage* x, int64_t len) {
#if defined(BNB8_SIMD_SEARCH)
  return block_absmax16<T>(x, len);
#else
  uint32_t bits = 0;
#pragma omp simd reduction(max : bits)
  for (int64_t i = 0; i < len; ++i) bits = std::max(bits, float_to_bits(T::load(x[i])) & 0x7FFFFFFFu);
  return bits_to_float(bits);
#endif
}

// codes[i] = encode(x[i], absmax) for one block, searching the tables in memory (builds without
// AVX-512, which search in registers: encode_block16). absmax must be the block's largest |x|, or NaN.
template <class T, bool Bucketed>
void encode_block_from_tables(const typename T::storage* x, uint8_t* codes, int64_t len, float absmax,
                              const CodeSearch& search) {
#if defined(BNB8_AVX2_SEARCH)
  if constexpr (Bucketed) return encode_block8<T>(x, codes, len, absmax, search.bucket_table);
#endif
  const float* thr = search.thresholds;  // locals: vectorisers need loop-invariant pointers
  const int32_t* table = search.bucket_table;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) codes[i] = encode<Bucketed>(T::load(x[i]), absmax, thr, table);
}

template <class T, bool Bucketed>
void quantize_impl(const QuantizeArgs& a) {
  using S = typename T::storage;
  const S* x = reinterpret_cast<const S*>(a.x);
  uint8_t* codes = reinterpret_cast<uint8_t*>(a.codes);
  float* absmax = reinterpret_cast<float*>(a.absmax);
  const int64_t bs = a.blocksize, nblocks = (a.n + bs - 1) / bs;
  const CodeSearch cs = a.search;
#if defined(BNB8_SIMD_SEARCH)
  const Search16 search(cs.thresholds);  // tables in registers: no gathers (simd_search.h)
#endif
  const int64_t chunk = chunk_blocks(nblocks, bs, a.num_threads);
#pragma omp parallel for num_threads(a.num_threads) schedule(dynamic, chunk) if (nblocks >= kMinParallelBlocks)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t start = b * bs, len = std::min(bs, a.n - start);
    const S* xb = x + start;
    uint8_t* cb = codes + start;
    // A block holding NaN/Inf gets a NaN absmax and encodes as all zeros (normalize), as the reference does.
    const float largest = block_absmax<T>(xb, len);
    const float m = is_finite(largest) ? largest : nan_absmax();
    absmax[b] = m;
#if defined(BNB8_SIMD_SEARCH)
    // Fetch the next block (when whole) while this one computes: the absmax pass above then reads
    // cache instead of memory (64M fp32 with 2 threads: 27 -> 22 ms).
    const bool next_whole = (b + 2) * bs <= a.n;
    encode_block16<T>(xb, cb, len, m, search, next_whole ? xb + bs : nullptr);
#else
    encode_block_from_tables<T, Bucketed>(xb, cb, len, m, cs);
#endif
  }
}

template <class T>
void dequantize_impl(const QuantizeArgs& a) {
  using S = typename T::storage;
  S* out = reinterpret_cast<S*>(a.x);
  const uint8_t* codes = reinterpret_cast<const uint8_t*>(a.codes);
  const float* absmax = reinterpret_cast<const float*>(a.absmax);
  const float* qmap = a.qmap;
  const int64_t bs = a.blocksize, nblocks = (a.n + bs - 1) / bs;
  const int64_t chunk = chunk_blocks(nblocks, bs, a.num_threads);
#pragma omp parallel for num_threads(a.num_threads) schedule(dynamic, chunk) if (nblocks >= kMinParallelBlocks)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t start = b * bs, len = std::min(bs, a.n - start);
    const float m = absmax[b];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) out[start + i] = T::store(decode(codes[start + i], m, qmap));
  }
}

// Runs fn(tensor_index, block_index_in_tensor) for every block of every tensor, in chunks handed to
// the threads as they come free (chunk_blocks); returns the sum of what fn returns.
template <class Fn>
int64_t for_each_block(const UpdateArgs& a, Fn fn) {
  std::vector<int64_t> first_block(a.num_tensors + 1, 0);
  for (int64_t t = 0; t < a.num_tensors; ++t)
    first_block[t + 1] = first_block[t] + (a.slots[t].n + kOptimBlock - 1) / kOptimBlock;
  const int64_t total = first_block[a.num_tensors];
  int64_t sum = 0;
  const int64_t chunk = chunk_blocks(total, kOptimBlock, a.num_threads);
#pragma omp parallel num_threads(a.num_threads) reduction(+ : sum) if (total >= kMinParallelBlocks)
  {
    int64_t t = -1;  // a thread's chunks come in increasing order, so t only moves forward
#pragma omp for schedule(dynamic, chunk)
    for (int64_t gb = 0; gb < total; ++gb) {
      if (t < 0 || gb >= first_block[t + 1])
        t = std::upper_bound(first_block.begin(), first_block.end(), gb) - first_block.begin() - 1;
      sum += fn(t, gb - first_block[t]);
    }
  }
  return sum;
}

// Whether x[0..len) holds no NaN or Inf. AVX-512 builds: x * 0 + acc, which stays 0 for finite x
// and turns NaN otherwise, in four chains (simd_search.h); elsewhere the integer maximum of the
// magnitudes (block_absmax), whose short latency keeps it off the update's critical path.
template <class T>
bool all_finite(const typename T::storage* x, int64_t len) {
#if defined(BNB8_SIMD_SEARCH)
  return block_all_finite16<T>(x, len);
#else
  return is_finite(block_absmax<T>(x, len));
#endif
}

// ok ? a : b in bit operations, for the stores of the update loop without AVX-512: GCC turns a
// ternary there into a masked store, which AVX2 executes slowly (vmaskmovps: the 32-bit AVX2 Adam step
// took 1.23 ns per element in cache, 0.70 this way). With AVX-512 the loop keeps the plain ternary:
// masked stores are cheap, bit operations measured slower (8-bit step 1.70 -> 2.33 ns), and even a
// helper returning the ternary kept GCC from vectorising the bf16/fp16 loops (bf16 Adam32bit 5x slower).
BNB8_HD float bit_select(bool ok, float a, float b) {
  const uint32_t mask = 0u - uint32_t(ok);
  return bits_to_float((float_to_bits(a) & mask) | (float_to_bits(b) & ~mask));
}

// Per-state tables built once per call: with AVX-512, the code tables and their searches in registers
// (simd_search.h); elsewhere the loops below gather from memory.
#if defined(BNB8_SIMD_SEARCH)
using CodeTables = const CodeTable*;  // [state]
using Searches = const Search16*;     // [state]
constexpr bool kDecodeAhead = true;   // decode a block's codes with permutes before the update loop
constexpr bool kMaximaInLoop = true;  // see update_elements
#else
using CodeTables = const void*;
using Searches = const void*;
// Not with AVX2 either: decoding a block ahead with 8-lane gathers made the 8-bit AVX2 step 1.23x
// slower on Zen 4 than GCC's loads of single codes inside the update loop.
constexpr bool kDecodeAhead = false;
constexpr bool kMaximaInLoop = false;
#endif

// One block's optimizer states, set up the same way for update_block and norms_block: per state the
// block's codes (8-bit) or floats (32-bit), its absmax entry and old value, and the code table. With
// kDecodeAhead the constructor decodes the block into the caller's `decoded` (update_block then
// overwrites it with the new values before requantizing). `decoded` is a separate local array, not a
// member: stores into a member array kept GCC from keeping the pointers in registers (step +11 %).
template <int NS, bool Quantized>
struct BlockStates {
  uint8_t* codes[NS];
  float* fstate[NS];
  float* absmax[NS];
  float old_absmax[NS];
  const float* qmap[NS];

  BlockStates(const UpdateArgs& a, const TensorSlot& slot, int64_t blk, int64_t len, [[maybe_unused]] CodeTables code,
              [[maybe_unused]] float (&decoded)[NS][kOptimBlock]) {
    const int64_t start = blk * kOptimBlock;
    for (int k = 0; k < NS; ++k) {
      codes[k] = reinterpret_cast<uint8_t*>(slot.state[k]) + start;
      fstate[k] = reinterpret_cast<float*>(slot.state[k]) + start;
      absmax[k] = reinterpret_cast<float*>(slot.absmax[k]);
      old_absmax[k] = Quantized ? absmax[k][blk] : 0.0f;
      qmap[k] = a.qmap[k];
    }
#if defined(BNB8_SIMD_SEARCH)
    if constexpr (Quantized)
      for (int k = 0; k < NS; ++k) decode_block(codes[k], len, old_absmax[k], code[k], decoded[k]);
#else
    (void)len;
#endif
  }

  // State k of element i as the update reads it.
  float operator()(int k, int64_t i, const float (&decoded)[NS][kOptimBlock]) const {
    return !Quantized ? fstate[k][i] : kDecodeAhead ? decoded[k][i] : decode(codes[k][i], old_absmax[k], qmap[k]);
  }
};

// The element loop of update_block. A non-finite (or, with skip_zeros, zero) gradient element leaves its
// parameter and states as they were; returns how many were non-finite. AllUpdate: the caller checked
// that every element updates, so the loop drops the per-element test, the selects and the count. Those
// cost the 8-bit Adam step ~8 % (GCC branches around masked stores and keeps the count in memory), the
// check ~3 %; both loops round alike (optim.h). AllUpdate with 8-bit states in AVX-512 builds also
// keeps each new state's largest magnitude bits (block_absmax's maximum) in `largest`, sparing the
// encode a pass over the block (step 2-3 % faster); GCC's AVX2 loop with that reduction ran 1.5x slower.
template <class Rule, class T, bool Quantized, bool AllUpdate, int NS>
int32_t update_elements(typename T::storage* p, const typename T::storage* g, int64_t len, float gscale,
                        float uscale, const Hyper& h, const BlockStates<NS, Quantized>& st,
                        float (&fresh)[NS][kOptimBlock], uint32_t (&largest)[NS]) {
  int32_t skipped = 0;  // 32-bit: a 64-bit count took GCC ~9 extra vector operations per 16 elements
  // One scalar per state (rules have at most three), not an array section: an unused array reduction
  // still cost the 32-bit-state loop 4 %.
  static_assert(NS <= 3, "update_elements keeps the maxima of at most three states");
  uint32_t largest0 = 0, largest1 = 0, largest2 = 0;
#if defined(BNB8_SIMD_SEARCH)
#pragma omp simd reduction(+ : skipped) reduction(max : largest0, largest1, largest2)
#else
#pragma omp simd reduction(+ : skipped)
#endif
  for (int64_t i = 0; i < len; ++i) {
    const float gi = T::load(g[i]) * gscale;
    const float pi = T::load(p[i]);
    float s[NS], s_old[NS];
    for (int k = 0; k < NS; ++k) s_old[k] = s[k] = st(k, i, fresh);
    const float u = Rule::direction(gi, pi, s, h);
    const bool ok = AllUpdate || updates_element(gi, h);
    // Select in fp32, then store: a 16-bit select would keep GCC from vectorising. A skipped element
    // is stored back unchanged (load/store round-trips every finite and infinite value exactly).
#if defined(__AVX512F__)
    p[i] = T::store(ok ? apply_update(pi, u, uscale, h) : pi);
#else
    p[i] = T::store(bit_select(ok, apply_update(pi, u, uscale, h), pi));
#endif
    for (int k = 0; k < NS; ++k) {
#if defined(__AVX512F__)
      const float v = ok ? s[k] : s_old[k];
#else
      const float v = bit_select(ok, s[k], s_old[k]);
#endif
      if constexpr (Quantized) fresh[k][i] = v;
      else st.fstate[k][i] = v;
      if constexpr (Quantized && AllUpdate && kMaximaInLoop) {
        uint32_t& largest_k = k == 0 ? largest0 : k == 1 ? largest1 : largest2;
        largest_k = std::max(largest_k, float_to_bits(v) & 0x7FFFFFFFu);
      }
    }
    if constexpr (!AllUpdate) skipped += int32_t(!is_finite(gi));
  }
  const uint32_t maxima[3] = {largest0, largest1, largest2};
  for (int k = 0; k < NS; ++k) largest[k] = maxima[k];
  return skipped;
}

template <class Rule, class T, bool Quantized, bool Bucketed>
int64_t update_block(const UpdateArgs& a, int64_t t, int64_t blk, CodeTables code_tables,
                     [[maybe_unused]] Searches searches) {
  constexpr int NS = Rule::kStates;
  using S = typename T::storage;
  const TensorSlot& slot = a.slots[t];
  const Hyper h = a.hyper;
  const float gscale = a.scales ? a.scales[2 * t] : 1.0f;
  const float uscale = a.scales ? a.scales[2 * t + 1] : 1.0f;
  const int64_t start = blk * kOptimBlock, len = std::min(kOptimBlock, slot.n - start);
  S* p = reinterpret_cast<S*>(slot.p) + start;
  const S* g = reinterpret_cast<const S*>(slot.g) + start;
  float fresh[NS][kOptimBlock];  // the decoded states, then the new ones
  const BlockStates<NS, Quantized> st(a, slot, blk, len, code_tables, fresh);
  // Every element updates when skip_zeros is off and the gradient is finite: |gscale| <= 1 (clipping,
  // maximize) keeps it finite after scaling. A larger scale is left to the per-element test.
  const bool all_update = !h.skip_zeros && std::fabs(gscale) <= 1.0f && all_finite<T>(g, len);
  uint32_t largest[NS];
  const int32_t skipped =
      all_update ? update_elements<Rule, T, Quantized, true>(p, g, len, gscale, uscale, h, st, fresh, largest)
                 : update_elements<Rule, T, Quantized, false>(p, g, len, gscale, uscale, h, st, fresh, largest);

  if constexpr (Quantized) {
    for (int k = 0; k < NS; ++k) {
      const float* f = fresh[k];
      const float m = all_update && kMaximaInLoop ? bits_to_float(largest[k]) : block_absmax<F32>(f, len);
      st.absmax[k][blk] = m;
      uint8_t* c = st.codes[k];
#if defined(BNB8_SIMD_SEARCH)
      encode_block16<F32>(f, c, len, m, searches[k]);
#else
      encode_block_from_tables<F32, Bucketed>(f, c, len, m, a.search[k]);
#endif
    }
  }
  return skipped;
}

// Sum of u^2 and p^2 over one block, from the same arithmetic as update_block, writing nothing.
template <class Rule, class T, bool Quantized>
void norms_block(const UpdateArgs& a, int64_t t, int64_t blk, CodeTables code_tables, double* uu, double* pp) {
  constexpr int NS = Rule::kStates;
  using S = typename T::storage;
  const TensorSlot& slot = a.slots[t];
  const Hyper h = a.hyper;
  const float gscale = a.scales ? a.scales[2 * t] : 1.0f;
  const int64_t start = blk * kOptimBlock, len = std::min(kOptimBlock, slot.n - start);
  const S* p = reinterpret_cast<const S*>(slot.p) + start;
  const S* g = reinterpret_cast<const S*>(slot.g) + start;
  float decoded[NS][kOptimBlock];
  const BlockStates<NS, Quantized> st(a, slot, blk, len, code_tables, decoded);
  float su = 0.0f, sp = 0.0f;
#pragma omp simd reduction(+ : su, sp)
  for (int64_t i = 0; i < len; ++i) {
    const float gi = T::load(g[i]) * gscale;
    const float pi = T::load(p[i]);
    float s[NS];
    for (int k = 0; k < NS; ++k) s[k] = st(k, i, decoded);
    const float u = Rule::direction(gi, pi, s, h);
    su += updates_element(gi, h) ? u * u : 0.0f;
    sp += pi * pi;
  }
  *uu = su;
  *pp = sp;
}

// The per-state tables of one call (AVX-512 builds; nothing elsewhere).
struct CallTables {
#if defined(BNB8_SIMD_SEARCH)
  std::vector<CodeTable> code;
  std::vector<Search16> search;
  CallTables(const UpdateArgs& a, int states, bool with_search) {
    if (!a.quantized) return;
    for (int k = 0; k < states; ++k) {
      code.emplace_back(a.qmap[k]);
      if (with_search) search.emplace_back(a.search[k].thresholds);
    }
  }
  CodeTables codes() const { return code.data(); }
  Searches searches() const { return search.data(); }
#else
  CallTables(const UpdateArgs&, int, bool) {}
  CodeTables codes() const { return nullptr; }
  Searches searches() const { return nullptr; }
#endif
};

template <class Rule, class T>
void update_typed(const UpdateArgs& a) {
  const bool bucketed = a.search[0].bucket_table != nullptr;
  const CallTables tables(a, Rule::kStates, /*with_search=*/true);
  const CodeTables code = tables.codes();
  const Searches search = tables.searches();
  int64_t skipped;
  if (!a.quantized)
    skipped = for_each_block(a, [&](int64_t t, int64_t b) { return update_block<Rule, T, false, false>(a, t, b, code, search); });
  else if (bucketed)
    skipped = for_each_block(a, [&](int64_t t, int64_t b) { return update_block<Rule, T, true, true>(a, t, b, code, search); });
  else
    skipped = for_each_block(a, [&](int64_t t, int64_t b) { return update_block<Rule, T, true, false>(a, t, b, code, search); });
  if (a.nonfinite) *a.nonfinite += skipped;
}

template <class Rule, class T>
void norms_typed(const UpdateArgs& a) {
  std::vector<double> acc(2 * a.num_tensors, 0.0);
  const CallTables tables(a, Rule::kStates, /*with_search=*/false);
  const CodeTables code = tables.codes();
  for_each_block(a, [&](int64_t t, int64_t blk) -> int64_t {
    double uu, pp;
    if (a.quantized) norms_block<Rule, T, true>(a, t, blk, code, &uu, &pp);
    else norms_block<Rule, T, false>(a, t, blk, code, &uu, &pp);
#pragma omp atomic
    acc[2 * t] += uu;
#pragma omp atomic
    acc[2 * t + 1] += pp;
    return 0;
  });
  for (int64_t i = 0; i < 2 * a.num_tensors; ++i) a.norms[i] = float(acc[i]);
}

template <template <class, class> class Fn, class... Args>
void by_rule_and_dtype(int32_t rule, DType dtype, Args&&... args) {
  int32_t index = 0;
  bool done = false;
  auto one = [&](auto rule_tag) {
    using Rule = decltype(rule_tag);
    if (done || index++ != rule) return;
    done = true;
    switch (dtype) {
      case DType::f32: Fn<Rule, F32>::run(args...); break;
      case DType::f16: Fn<Rule, F16>::run(args...); break;
      case DType::bf16: Fn<Rule, BF16>::run(args...); break;
    }
  };
#define BNB8_VISIT(R) one(R{});
  BNB8_FOR_EACH_RULE(BNB8_VISIT)
#undef BNB8_VISIT
}

template <class Rule, class T>
struct Update {
  static void run(const UpdateArgs& a) { update_typed<Rule, T>(a); }
};
template <class Rule, class T>
struct Norms {
  static void run(const UpdateArgs& a) { norms_typed<Rule, T>(a); }
};

template <template <class, bool> class Fn>
void by_dtype(const QuantizeArgs& a) {
  const bool bucketed = a.search.bucket_table != nullptr;
  switch (a.dtype) {
    case DType::f32: bucketed ? Fn<F32, true>::run(a) : Fn<F32, false>::run(a); break;
    case DType::f16: bucketed ? Fn<F16, true>::run(a) : Fn<F16, false>::run(a); break;
    case DType::bf16: bucketed ? Fn<BF16, true>::run(a) : Fn<BF16, false>::run(a); break;
  }
}
template <class T, bool Bucketed>
struct Quantize {
  static void run(const QuantizeArgs& a) { quantize_impl<T, Bucketed>(a); }
};
template <class T, bool Unused>
struct Dequantize {
  static void run(const QuantizeArgs& a) { dequantize_impl<T>(a); }
};

}  // namespace

void quantize_blockwise(const QuantizeArgs& a) { by_dtype<Quantize>(a); }
void dequantize_blockwise(const QuantizeArgs& a) { by_dtype<Dequantize>(a); }
void optimizer_update(const UpdateArgs& a) { by_rule_and_dtype<Update>(a.rule, a.dtype, a); }
void optimizer_norms(const UpdateArgs& a) { by_rule_and_dtype<Norms>(a.rule, a.dtype, a); }
#if defined(BNB8_SIMD_SEARCH)
int search_runs(const float* thresholds) {
  const SegmentSearch16 runs(thresholds);
  return runs.usable ? runs.num_runs : 0;
}
#else
int search_runs(const float*) { return -1; }
#endif

}  // namespace bnb8::cpu::BNB8_ISA
