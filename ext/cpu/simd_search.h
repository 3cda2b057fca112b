// bnb8 — the nearest-code search of ext/include/bnb8/quantize.h for 16 lanes at once with AVX-512,
// without gathers: every threshold it compares against sits in a register and is picked by a permute.
//
// The result is the same number as nearest_code_bisect / nearest_code_bucketed: the count of
// thresholds below y (quantize.h). The walk is that bisection in two parts:
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

#include <type_traits>

namespace bnb8::cpu {

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

  // Count of thresholds below each lane of y (y never NaN here: normalize16 maps it into [-1, 1]).
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

// normalize() of quantize.h for 16 lanes: max/min return their second operand when the first is NaN,
// exactly like normalize's `y >= -1 ? y : -1` and `y <= 1 ? y : 1`.
inline __m512 normalize16(__m512 x, float absmax) {
  if (!(absmax > 0.0f)) return _mm512_setzero_ps();
  const __m512 y = _mm512_div_ps(x, _mm512_set1_ps(absmax));
  return _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-1.0f)), _mm512_set1_ps(1.0f));
}

// codes[i] = encode(x[i], absmax) for one block.
template <class T>
inline void encode_block16(const typename T::storage* x, uint8_t* codes, int64_t len, float absmax,
                           const SearchTree16& tree) {
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512i idx = tree.index(normalize16(load16<T>(x + i, 16), absmax));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(idx));
  }
  if (i < len) {
    const int rest = int(len - i);
    const __m512i idx = tree.index(normalize16(load16<T>(x + i, rest), absmax));
    _mm512_mask_cvtepi32_storeu_epi8(codes + i, __mmask16((1u << rest) - 1u), idx);
  }
}

}  // namespace bnb8::cpu
#endif
