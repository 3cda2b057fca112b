// bnb8 — the code-table work of ext/include/bnb8/quantize.h with AVX-512 and no gathers (a 16-lane
// gather costs ~20 register operations on the CPUs measured): every table sits in registers and is
// read with permutes. Three parts:
//   SearchTree16     the exact nearest-code search for any table (below);
//   SegmentSearch16  the same count in fewer operations for tables whose thresholds run in equal
//                    steps, as the dynamic maps' do; its unsure lanes go back to the tree;
//   CodeTable        decode (code[c] * absmax), 64 codes at a time with VBMI.
//
// SearchTree16's result is the same number as nearest_code_bisect / nearest_code_bucketed: the count
// of thresholds below y (quantize.h). The walk is that bisection in two parts:
//   levels 1-5  (steps 128..8): an implicit binary tree (node n has children 2n, 2n+1) whose 31 nodes
//               live in two registers; after five levels node - 32 = j = idx / 8;
//   levels 6-8  (steps 4, 2, 1): idx lies in [8j, 8j + 7], so it is 8j plus the number of
//               thr[8j + r], r = 0..6, below y — seven independent 32-entry lookups (vpermt2ps).
// Comparisons are `thr < y`, as in nearest_code_bisect, so NaN never moves an index; permutes read
// only the low index bits, so no input can make them read outside the tables.
#pragma once

#include "bnb8/quantize.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define BNB8_SIMD_SEARCH 1
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

// Inside the variant's own namespace: the avx512 and avx512vbmi builds define these differently,
// and one shared (weak) definition would hand one variant the other's code.
namespace bnb8::cpu::BNB8_ISA {

struct SearchTree16 {
  __m512 top;       // tree nodes 1..15 (levels 1-4) at lanes 1..15
  __m512 level5;    // tree nodes 16..31 at lanes 0..15
  __m512 leaf[7][2];  // leaf[r][h] lane l = thr[8 * (16h + l) + r]

  explicit SearchTree16(const float* thr) {
    alignas(64) float top_v[16] = {0.0f}, l5[16], lv[7][32];
    for (int level = 1; level <= 5; ++level) {
      const int first = 1 << (level - 1), span = 256 >> (level - 1), step = span / 2;
      for (int n = first; n < 2 * first; ++n) {
        const float t = thr[(n - first) * span + step - 1];
        if (level < 5) top_v[n] = t;
        else l5[n - 16] = t;
      }
    }
    for (int r = 0; r < 7; ++r)
      for (int j = 0; j < 32; ++j) lv[r][j] = thr[8 * j + r];
    top = _mm512_load_ps(top_v);
    level5 = _mm512_load_ps(l5);
    for (int r = 0; r < 7; ++r) {
      leaf[r][0] = _mm512_load_ps(lv[r]);
      leaf[r][1] = _mm512_load_ps(lv[r] + 16);
    }
  }

  // Count of thresholds below each lane of y (in [-1, 1], never NaN: see normalize16).
  __attribute__((always_inline)) inline __m512i index(__m512 y) const {
    const __m512i one = _mm512_set1_epi32(1);
    __m512i node = one;
    for (int level = 1; level <= 5; ++level) {
      const __m512 t = _mm512_permutexvar_ps(node, level < 5 ? top : level5);  // low 4 bits of node
      const __mmask16 below = _mm512_cmp_ps_mask(t, y, _CMP_LT_OQ);
      node = _mm512_add_epi32(node, node);
      node = _mm512_mask_add_epi32(node, below, node, one);
    }
    // node in [32, 64): its low 5 bits are j; idx = 8j + #{r : thr[8j + r] < y}.
    __m512i idx = _mm512_slli_epi32(_mm512_sub_epi32(node, _mm512_set1_epi32(32)), 3);
    for (int r = 0; r < 7; ++r) {
      const __m512 t = _mm512_permutex2var_ps(leaf[r][0], node, leaf[r][1]);
      idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(t, y, _CMP_LT_OQ), idx, one);
    }
    return idx;
  }
};

// The same count in fewer steps when the thresholds fall in runs of equal spacing, as the dynamic maps'
// do (one run per decade of each sign): within a run [lo, hi] of codes, the thresholds lie on a line, so
// the index is that line's value at y, rounded and clamped to [lo, hi].
// The line is shifted into the binade [256, 512), where a float32's ulp u is 2^-15 of a code step and
// its mantissa is fixed point: bits 15-22 hold the integer part and bits 0-14 the fraction. One
// multiply-add B(y) = y * inv_step + bias puts threshold k of the run at kBase + k + 1 + kTieOffset, so
// bits 15-22 of B are the count (one shift, no float-to-int conversion) and B's fraction, less
// kTieOffset, is the distance past the nearest threshold (one bit test, no rounding). The line fits
// every threshold within kFitTolerance (checked when the table is built) and the multiply-add rounds
// by u/2, so whenever the fraction is at least 2 * kTieOffset the count is exact; a vector with a lane
// closer than that (1 in 265 on normally distributed data, every one on exact midpoints) is recomputed with
// the tree.
// The run holding y is found without a search: |y|'s float exponent, two binades per bucket, picks the
// run at the bucket's low end and the one threshold where the bucket crosses into the next run.
struct SegmentSearch16 {
  // One register per run table: single-source permutes (vpermps) leave their table intact, where the
  // two-register ones overwrite an operand and cost a register copy per lookup (8-bit steps ~2 % slower).
  // The dynamic maps have 14 (signed), 8 (unsigned) and 1 (linear) runs; a table with more uses the tree.
  static constexpr int kMaxRuns = 16;
  static constexpr int kBuckets = 16;       // per sign: |y| in [2^(2b-31), 2^(2b-29)), b = 0 also holds 0
  static constexpr double kBase = 256.0;         // B = kBase + count + fraction, in [256, 512)
  static constexpr int kTieOffset = 4;           // ulps (2^-15 of a step) from a threshold's image to B's integer
  static constexpr double kUlp = 1.0 / 32768;    // of B, in units of one code step
  static constexpr double kFitTolerance = 3 * kUlp;  // < kTieOffset - 1/2 ulps: see index()

  bool usable = false;
  int num_runs = 0;        // when usable
  bool one_sided = false;  // no threshold below 0 (the unsigned maps): see index<true>
  __m512 run_lo, run_hi;     // per run: kBase + first and last code index + 1/2 (B's clamp, mid-code)
  __m512 inv_step, bias;     // per run: the line B(y) = y * inv_step + bias
  __m512i first_run[2];  // per bucket, [0] for y >= 0 and [1] for y < 0: the run at the bucket's low end
  __m512 crossing[2];    // per bucket: the threshold where the next run starts (+inf if none inside)

  explicit SegmentSearch16(const float* thr) {
    alignas(64) float lo_v[kMaxRuns] = {}, hi_v[kMaxRuns] = {}, inv_v[kMaxRuns] = {}, bias_v[kMaxRuns] = {};
    alignas(64) int32_t first_v[2 * kBuckets];
    alignas(64) float cross_v[2 * kBuckets];
    // Runs of codes whose interior thresholds are equally spaced; a code with an empty range
    // (t[k-1] == t[k], repeated codes) is never the answer and gets no run.
    int runs_last[256];
    auto lower = [&](int k) { return k > 0 ? double(thr[k - 1]) : -INFINITY; };
    for (int k = 0; k < 256;) {
      int lo = k, hi = k;
      if (k < 255 && std::isfinite(thr[k])) {
        hi = k + 1;
        const double s0 = double(thr[k + 1]) - double(thr[k]);
        if (k + 1 < 255 && std::isfinite(thr[k + 1]) && s0 > 0)
          while (hi < 255 && std::isfinite(thr[hi]) &&
                 std::fabs(double(thr[hi]) - (double(thr[lo]) + (hi - lo) * s0)) <= s0 / 64)
            ++hi;
      }
      k = hi + 1;
      if (!(lower(lo) < double(thr[hi]))) continue;  // empty range
      if (num_runs == kMaxRuns) return;
      runs_last[num_runs] = hi;
      // The line through the interior thresholds t[lo..hi-1]; a run with one interior threshold takes
      // the step of its narrower neighbour gap (any slope fits one point; a sane one keeps ties rare).
      // A run without interior thresholds is the constant kBase + lo + 1/2.
      double inv = 0.0, bias = kBase + lo + 0.5;
      if (hi > lo) {
        double step = hi - lo >= 2 ? (double(thr[hi - 1]) - double(thr[lo])) / (hi - 1 - lo) : INFINITY;
        if (hi - lo == 1) {
          if (lo > 0) step = std::min(step, double(thr[lo]) - double(thr[lo - 1]));
          if (std::isfinite(thr[hi])) step = std::min(step, double(thr[hi]) - double(thr[lo]));
        }
        if (!(step > 1e-30) || !std::isfinite(step)) return;
        const float inv_f = float(1.0 / step);
        const auto image = [&](int j) { return kBase + j + 1 + kTieOffset * kUlp; };  // where B puts t[j]
        const float bias_f = float(image(lo) - double(thr[lo]) * double(inv_f));
        for (int j = lo; j < hi; ++j)  // products of two floats are exact in double
          if (std::fabs(double(thr[j]) * double(inv_f) + double(bias_f) - image(j)) > kFitTolerance) return;
        inv = inv_f;
        bias = bias_f;
      }
      lo_v[num_runs] = float(kBase + lo + 0.5);
      hi_v[num_runs] = float(kBase + hi + 0.5);
      inv_v[num_runs] = float(inv);
      bias_v[num_runs] = float(bias);
      ++num_runs;
    }
    // The run holding y: the one whose code range contains #{thresholds below y}.
    auto run_of = [&](float y) {
      const int idx = int(std::lower_bound(thr, thr + 255, y) - thr);
      int r = 0;
      while (runs_last[r] < idx) ++r;
      return r;
    };
    for (int sign = 0; sign < 2; ++sign) {
      for (int b = 0; b < kBuckets; ++b) {
        const float low = b == 0 ? 0.0f : std::ldexp(1.0f, 2 * b - 31);
        const float high = b == kBuckets - 1 ? 1.0f : std::nextafter(std::ldexp(1.0f, 2 * b - 29), 0.0f);
        const int r0 = run_of(sign ? -high : low), r1 = run_of(sign ? -low : high);
        if (r1 - r0 > 1) return;
        first_v[sign * kBuckets + b] = r0;
        cross_v[sign * kBuckets + b] = r1 > r0 ? thr[runs_last[r0]] : INFINITY;
      }
    }
    // Every y < 0 has count 0, the count of +0: index<true> sends the negative lanes to bucket 0 of the
    // positive side, and reads the positive side's tables from the upper half (a key with bit 4 set).
    one_sided = thr[0] >= 0.0f;
    if (one_sided)
      for (int b = 0; b < kBuckets; ++b) {
        first_v[kBuckets + b] = first_v[b];
        cross_v[kBuckets + b] = cross_v[b];
      }
    run_lo = _mm512_load_ps(lo_v);
    run_hi = _mm512_load_ps(hi_v);
    inv_step = _mm512_load_ps(inv_v);
    bias = _mm512_load_ps(bias_v);
    for (int h = 0; h < 2; ++h) {
      first_run[h] = _mm512_load_si512(first_v + 16 * h);
      crossing[h] = _mm512_load_ps(cross_v + 16 * h);
    }
    usable = true;
  }

  // The count for each lane of y (in [-1, 1], never NaN) in the low 8 bits of each lane (the bits
  // above are not zero: callers store the low byte); `unsure` marks lanes within 4 ulps of a
  // threshold's image, whose result must not be used.
  // Why a sure lane is exact: the multiply-add B is within u/2 of the true line, which is within
  // kFitTolerance = 3u of every threshold's image kBase + k + 1 + 4u. A sure lane's fraction is at
  // least 8u, so B is at least 4u past the last image at or below it and more than 4u short of the next:
  // both farther than 3u + u/2, so the line and y agree on every threshold of the run. A lane clamped
  // to a run end sits at mid-code (fraction 1/2): the run holds y, so the count cannot leave [lo, hi].
  // OneSided (tables with one_sided set) finds the bucket in two operations instead of five.
  template <bool OneSided>
  __attribute__((always_inline)) inline __m512i index(__m512 y, __mmask16* unsure) const {
    const __m512i bits = _mm512_castps_si512(y);
    __m512i key;
    if constexpr (OneSided) {
      // The exponent's top 7 bits clamped to 48..63 (bit 4 set), from a signed shift: a negative lane's
      // key is negative and clamps to 48, bucket 0.
      key = _mm512_max_epi32(_mm512_srai_epi32(bits, 24), _mm512_set1_epi32(48));
    } else {
      // Sign in bit 4, and the bucket in bits 0-3 from the exponent's top 7 bits clamped to 48..63
      // (|y| <= 1 has exponent <= 127; everything below 2^-29 joins bucket 0).
      const __m512i exp_half = _mm512_max_epu32(
          _mm512_and_si512(_mm512_srli_epi32(bits, 24), _mm512_set1_epi32(0x7F)), _mm512_set1_epi32(48));
      key = _mm512_ternarylogic_epi32(exp_half, _mm512_srli_epi32(bits, 27), _mm512_set1_epi32(16),
                                      0xD8);  // bit 4 from the sign, the rest from exp_half
    }
    __m512i run = _mm512_permutex2var_epi32(first_run[0], key, first_run[1]);
    const __m512 cross = _mm512_permutex2var_ps(crossing[0], key, crossing[1]);
    run = _mm512_mask_add_epi32(run, _mm512_cmp_ps_mask(cross, y, _CMP_LT_OQ), run, _mm512_set1_epi32(1));
    const __m512 b = _mm512_fmadd_ps(y, _mm512_permutexvar_ps(run, inv_step), _mm512_permutexvar_ps(run, bias));
    // Clamp into the run: y = -1 sits half a step below the first code, and the last threshold of a run
    // lies off its line; neither decides anything.
    const __m512i fixed = _mm512_castps_si512(
        _mm512_min_ps(_mm512_max_ps(b, _mm512_permutexvar_ps(run, run_lo)), _mm512_permutexvar_ps(run, run_hi)));
    *unsure = _mm512_testn_epi32_mask(fixed, _mm512_set1_epi32(0x7FFF & ~(2 * kTieOffset - 1)));
    return _mm512_srli_epi32(fixed, 15);
  }
};

// The search the kernels use: the run arithmetic where the table allows it, the tree otherwise.
struct Search16 {
  SearchTree16 tree;
  SegmentSearch16 runs;

  explicit Search16(const float* thr) : tree(thr), runs(thr) {}
};

// decode() of quantize.h for a block, code[c] * absmax, without gathers (a 16-lane gather costs
// about as much as 16 loads on the CPUs measured, ~20 register operations).
#if defined(__AVX512VBMI__)
// With VBMI, 64 codes at a time: the 256 float32 of the table are split into four byte planes of
// 256 bytes (four registers each); two 128-entry byte lookups (vpermi2b) and a blend on bit 7 read
// one plane for 64 codes, and unpacks interleave the four planes back into 64 floats — 22 operations
// for 64 values.
struct CodeTable {
  static constexpr int kLanes = 64;
  __m512i plane[4][4];  // plane[b][q] byte l = byte b of code[64q + l]
  __m512i order;        // the byte order that makes the unpacks below produce values in order

  explicit CodeTable(const float* code) {
    alignas(64) uint8_t bytes[4][256];
    for (int i = 0; i < 256; ++i) {
      const uint32_t u = float_to_bits(code[i]);
      for (int b = 0; b < 4; ++b) bytes[b][i] = uint8_t(u >> (8 * b));
    }
    for (int b = 0; b < 4; ++b)
      for (int q = 0; q < 4; ++q) plane[b][q] = _mm512_load_si512(bytes[b] + 64 * q);
    // The unpacks leave value 16j + 4l + r of a 64-value group at float lane 4l + r of output j when
    // the codes sit at byte 16l + 4j + r: gather them there first.
    alignas(64) uint8_t ord[64];
    for (int l = 0; l < 4; ++l)
      for (int j = 0; j < 4; ++j)
        for (int r = 0; r < 4; ++r) ord[16 * l + 4 * j + r] = uint8_t(16 * j + 4 * l + r);
    order = _mm512_load_si512(ord);
  }

  // out[0..63] = code[c[0..63]] * scale.
  __attribute__((always_inline)) inline void lookup64(__m512i c, __m512 scale, float* out) const {
    c = _mm512_permutexvar_epi8(order, c);
    const __mmask64 high = _mm512_movepi8_mask(c);
    __m512i b[4];
    for (int k = 0; k < 4; ++k)
      b[k] = _mm512_mask_blend_epi8(high, _mm512_permutex2var_epi8(plane[k][0], c, plane[k][1]),
                                    _mm512_permutex2var_epi8(plane[k][2], c, plane[k][3]));
    const __m512i lo01 = _mm512_unpacklo_epi8(b[0], b[1]), hi01 = _mm512_unpackhi_epi8(b[0], b[1]);
    const __m512i lo23 = _mm512_unpacklo_epi8(b[2], b[3]), hi23 = _mm512_unpackhi_epi8(b[2], b[3]);
    const __m512i v[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                          _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(_mm512_castsi512_ps(v[j]), scale));
  }
};
#else
// Without VBMI, 16 codes at a time from the table in 16 registers: eight 32-entry lookups (vpermt2ps)
// on the low 5 bits, then bits 5-7 pick among them — 18 operations for 16 values.
struct CodeTable {
  static constexpr int kLanes = 16;
  __m512 part[16];  // part[j] lane l = code[16j + l]

  explicit CodeTable(const float* code) {
    for (int j = 0; j < 16; ++j) part[j] = _mm512_loadu_ps(code + 16 * j);
  }

  __attribute__((always_inline)) inline void lookup16(__m512i idx, __m512 scale, float* out) const {
    __m512 by_low5[8];
    for (int j = 0; j < 8; ++j) by_low5[j] = _mm512_permutex2var_ps(part[2 * j], idx, part[2 * j + 1]);
    for (int bit = 5, n = 8; bit < 8; ++bit, n /= 2) {
      const __mmask16 high = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1 << bit));
      for (int j = 0; j < n / 2; ++j) by_low5[j] = _mm512_mask_blend_ps(high, by_low5[2 * j], by_low5[2 * j + 1]);
    }
    _mm512_storeu_ps(out, _mm512_mul_ps(by_low5[0], scale));
  }
};
#endif

// out[i] = decode(codes[i], absmax), i < len; out has room for len rounded up to CodeTable::kLanes.
inline void decode_block(const uint8_t* codes, int64_t len, float absmax, const CodeTable& code, float* out) {
  const CodeTable table = code;  // a local copy: the float stores below could alias `code`
  const __m512 scale = _mm512_set1_ps(absmax);
  for (int64_t i = 0; i < len; i += CodeTable::kLanes) {
    const int64_t rest = len - i;
#if defined(__AVX512VBMI__)
    const __mmask64 k = rest >= 64 ? ~__mmask64(0) : (__mmask64(1) << rest) - 1;
    table.lookup64(_mm512_maskz_loadu_epi8(k, codes + i), scale, out + i);
#else
    const __mmask16 k = rest >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rest) - 1u);
    table.lookup16(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, codes + i)), scale, out + i);
#endif
  }
}

// 16 elements of storage type T (all 16, or the first `count` with the rest zero) as float32.
template <class T>
inline __m512 load16(const typename T::storage* p, int count) {
  const __mmask16 k = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
  if constexpr (sizeof(typename T::storage) == 4) {
    return _mm512_maskz_loadu_ps(k, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(k, p);
    if constexpr (std::is_same_v<T, F16>) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// The largest |x| of a block, NaN-propagating (max_magnitude of common.h): integer maxima of the
// magnitude bits (two accumulators, so consecutive maxima overlap). Faster than GCC's float reduction.
template <class T>
inline float block_absmax16(const typename T::storage* x, int64_t len) {
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  const auto bits = [&](int64_t i, int count) { return _mm512_and_si512(_mm512_castps_si512(load16<T>(x + i, count)), magnitude); };
  __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= len; i += 32) {
    m0 = _mm512_max_epu32(m0, bits(i, 16));
    m1 = _mm512_max_epu32(m1, bits(i + 16, 16));
  }
  for (; i < len; i += 16) m0 = _mm512_max_epu32(m0, bits(i, int(std::min<int64_t>(16, len - i))));  // zero-filled
  return bits_to_float(_mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1)));
}

// Whether a block holds no NaN or Inf: x * 0 is +-0 for finite x and NaN otherwise, and sums of
// +-0 stay +-0. One multiply-add per 16 values, in four independent chains.
template <class T>
inline bool block_all_finite16(const typename T::storage* x, int64_t len) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 a[4] = {zero, zero, zero, zero};
  int64_t i = 0;
  for (; i + 64 <= len; i += 64)
    for (int k = 0; k < 4; ++k) a[k] = _mm512_fmadd_ps(load16<T>(x + i + 16 * k, 16), zero, a[k]);
  for (; i < len; i += 16) a[0] = _mm512_fmadd_ps(load16<T>(x + i, int(std::min<int64_t>(16, len - i))), zero, a[0]);
  const __m512 sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
  return _mm512_cmp_ps_mask(sum, zero, _CMP_EQ_OQ) == 0xFFFF;
}

// normalize() of quantize.h for 16 lanes: max/min return their second operand when the first is NaN,
// exactly like normalize's `y >= -1 ? y : -1` and `y <= 1 ? y : 1`.
// Clamp = false skips the clamp, for callers whose absmax is finite and the largest |x| of the block
// (every caller computes it so): then a correctly rounded x / absmax already lies in [-1, 1].
template <bool Clamp = true>
inline __m512 normalize16(__m512 x, float absmax) {
  if (!(absmax > 0.0f)) return _mm512_setzero_ps();
  const __m512 y = _mm512_div_ps(x, _mm512_set1_ps(absmax));
  if constexpr (!Clamp) return y;
  return _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-1.0f)), _mm512_set1_ps(1.0f));
}

// The run search over one block (see encode_block16), for a normalize16 with or without its clamp.
// The lanes the runs are unsure of are redone with the tree in a second pass: a call or the tree's 16
// registers inside the first loop would slow every vector, not just the rare unsure ones.
template <class T, bool Clamp, bool OneSided>
inline void encode_runs(const typename T::storage* x, uint8_t* codes, int64_t len, float absmax,
                        const Search16& search, const typename T::storage* prefetch) {
  const auto y_at = [&](int64_t i) {
    return normalize16<Clamp>(load16<T>(x + i, int(std::min<int64_t>(16, len - i))), absmax);
  };
  const auto store = [&](int64_t i, __m512i idx) {
    const int64_t rest = len - i;
    if (rest >= 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(idx));
    else _mm512_mask_cvtepi32_storeu_epi8(codes + i, __mmask16((1u << rest) - 1u), idx);
  };
  const SegmentSearch16 runs = search.runs;  // a local copy: the uint8 stores could alias `search`
  constexpr int64_t kChunk = 4096;             // the largest quantization block
  __mmask16 unsure[kChunk / 16];
  for (int64_t c0 = 0; c0 < len; c0 += kChunk) {
    const int64_t c1 = std::min(len, c0 + kChunk);
    __mmask16 any = 0;
    int64_t i = c0;
    for (; i + 16 <= c1; i += 16) {
      if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(prefetch + i), _MM_HINT_T0);
      __mmask16& u = unsure[(i - c0) / 16];
      const __m512i idx = runs.template index<OneSided>(normalize16<Clamp>(load16<T>(x + i, 16), absmax), &u);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(idx));
      any |= u;
    }
    if (i < c1) {
      __mmask16& u = unsure[(i - c0) / 16];
      store(i, runs.template index<OneSided>(y_at(i), &u));
      any |= u;
    }
    if (any) [[unlikely]]
      for (i = c0; i < c1; i += 16)
        if (unsure[(i - c0) / 16]) store(i, search.tree.index(y_at(i)));
  }
}

// codes[i] = encode(x[i], absmax) for one block; absmax must be the block's largest |x| (NaN for a
// block holding NaN/Inf, which encodes as zeros).
// `prefetch`, when given, is the next block of the caller's input (len elements of the same type): it
// is fetched into cache while this block computes, so the caller's next pass over memory does not wait
// with the vector units idle.
template <class T>
inline void encode_block16(const typename T::storage* x, uint8_t* codes, int64_t len, float absmax,
                           const Search16& search, const typename T::storage* prefetch = nullptr) {
  if (!search.runs.usable) {
    for (int64_t i = 0; i < len; i += 16) {
      const int count = int(std::min<int64_t>(16, len - i));
      const __m512i idx = search.tree.index(normalize16(load16<T>(x + i, count), absmax));
      _mm512_mask_cvtepi32_storeu_epi8(codes + i, __mmask16((1u << count) - 1u), idx);
    }
    return;
  }
  // A non-finite absmax (an optimizer state that overflowed) keeps the clamp: inf / inf is NaN.
  const bool one_sided = search.runs.one_sided;
  if (is_finite(absmax) && one_sided) encode_runs<T, false, true>(x, codes, len, absmax, search, prefetch);
  else if (is_finite(absmax)) encode_runs<T, false, false>(x, codes, len, absmax, search, prefetch);
  else if (one_sided) encode_runs<T, true, true>(x, codes, len, absmax, search, prefetch);
  else encode_runs<T, true, false>(x, codes, len, absmax, search, prefetch);
}

}  // namespace bnb8::cpu::BNB8_ISA
#endif
