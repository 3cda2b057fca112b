// bnb8 — the bucketed nearest-code search of ext/include/bnb8/quantize.h, 8 lanes at a time with AVX2,
// for the variant without AVX-512 (which searches in registers instead: simd_search.h).
// Left to GCC, the `omp simd` loop over encode<true> computes each bucket's address in 64-bit lanes
// (sign extensions, 64-bit multiplies, two 4-lane gathers per 8 values); here the bucket index stays
// 32-bit and the lookup is one 8-lane gather: the 8-bit AVX2 Adam step took 0.62-0.75x the time of
// GCC's loop over the same table (harness, Zen 4). Same results: tested bit-exact against the scalar
// search and swept over every float32 in [-1, 1] (tests/full_sweep.py).
#pragma once

#include "bnb8/quantize.h"

#if defined(__AVX2__) && !defined(BNB8_SIMD_SEARCH)
#define BNB8_AVX2_SEARCH 1
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

namespace bnb8::cpu::BNB8_ISA {

// 8 elements of storage type T (the first `count`, the rest zero) as float32.
template <class T>
inline __m256 load8(const typename T::storage* p, int count) {
  alignas(32) typename T::storage part[8] = {};
  const typename T::storage* src = p;
  if (count < 8) {
    std::copy(p, p + count, part);
    src = part;
  }
  if constexpr (sizeof(typename T::storage) == 4) {
    return _mm256_loadu_ps(src);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    if constexpr (std::is_same_v<T, F16>) return _mm256_cvtph_ps(h);
    else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// normalize() of quantize.h: max/min return their second operand when the first is NaN, like
// normalize's comparisons. Clamp = false when absmax is finite and the block's largest |x|.
template <bool Clamp>
inline __m256 normalize8(__m256 x, float absmax) {
  if (!(absmax > 0.0f)) return _mm256_setzero_ps();
  const __m256 y = _mm256_div_ps(x, _mm256_set1_ps(absmax));
  if constexpr (!Clamp) return y;
  return _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-1.0f)), _mm256_set1_ps(1.0f));
}

// bucket_of() of quantize.h for 8 lanes of y in [-1, 1].
inline __m256i bucket_of8(__m256 y) {
  const __m256i bits = _mm256_castps_si256(y);
  const __m256i magnitude = _mm256_srli_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF)), kBucketShift);
  const __m256i negative = _mm256_and_si256(_mm256_srai_epi32(bits, 31), _mm256_set1_epi32(kHalfBuckets));
  return _mm256_add_epi32(magnitude, negative);
}

// bucket_place() of quantize.h for 8 lanes.
inline __m256i bucket_place8(__m256 y) {
  const __m256i bits = _mm256_castps_si256(y);
  return _mm256_and_si256(_mm256_xor_si256(bits, _mm256_srai_epi32(bits, 31)), _mm256_set1_epi32(0xFFFF));
}

// codes[i] = encode<true>(x[i], absmax, thresholds, bucket_table), i < len: one 8-lane gather per 8 values.
template <class T, bool Clamp>
inline void encode_bucketed8(const typename T::storage* x, uint8_t* codes, int64_t len, float absmax,
                             const int32_t* bucket_table) {
  const __m256i place_bits = _mm256_set1_epi32(0xFFFF);
  // Bytes 0, 4, 8, 12 of each 128-bit half, then both halves' four bytes side by side.
  const __m256i pick_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                              0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i join_halves = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
  for (int64_t i = 0; i < len; i += 8) {
    const int count = int(std::min<int64_t>(8, len - i));
    const __m256 y = normalize8<Clamp>(load8<T>(x + i, count), absmax);
    const __m256i entry = _mm256_i32gather_epi32(bucket_table, bucket_of8(y), 4);
    // (entry >> 16) + (place > entry's place): the comparison's true lanes are -1. Places are 16-bit,
    // so the signed comparison orders them.
    const __m256i above = _mm256_cmpgt_epi32(bucket_place8(y), _mm256_and_si256(entry, place_bits));
    const __m256i idx = _mm256_sub_epi32(_mm256_srli_epi32(entry, 16), above);
    const __m128i bytes = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(idx, pick_bytes), join_halves));
    if (count == 8) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), bytes);
    } else {
      alignas(16) uint8_t part[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(part), bytes);
      std::copy(part, part + count, codes + i);
    }
  }
}

// encode_bucketed8 with the clamp only where it can matter: a finite absmax that is the block's
// largest |x| puts every x / absmax in [-1, 1] already.
template <class T>
inline void encode_block8(const typename T::storage* x, uint8_t* codes, int64_t len, float absmax,
                          const int32_t* bucket_table) {
  if (is_finite(absmax)) encode_bucketed8<T, false>(x, codes, len, absmax, bucket_table);
  else encode_bucketed8<T, true>(x, codes, len, absmax, bucket_table);
}

}  // namespace bnb8::cpu::BNB8_ISA
#endif
