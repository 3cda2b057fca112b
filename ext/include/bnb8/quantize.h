// bnb8 — block-wise quantization: the per-element math shared by every CPU and CUDA kernel.
//
// A value x in a block with scale absmax is stored as the index of the code nearest to
// y = fl32(x / absmax), where code is a sorted table of 256 float32 values in [-1, 1].
// "Nearest" is exact: ties go to the lower index, and the search never misses.
//
// The search counts the decision thresholds below y. Threshold j separates code j and code j+1:
// it is the midpoint m_j = (code[j] + code[j+1]) / 2 (exact in float64), stored rounded *down* to
// float32. For a float32 y,  y > m_j  <=>  y > rounddown32(m_j),  so one float32 comparison per
// threshold decides exactly, including exact midpoints. thresholds[255] = +inf pads the table.
//
// Equivalently: the code index is the number of thresholds below y (torch.searchsorted(thresholds, y)),
// which is what every search below computes — nearest_code_bucketed, nearest_code_bisect, and the
// gather-free AVX-512 walk in ext/cpu/simd_search.h (tested bit-exact against these on all inputs).
//
// Counting all 255 thresholds is too slow, so y's top 16 bits (sign, exponent, 7 mantissa bits) pick a
// bucket, and bnb8.functional.code_search_tables precomputes each bucket's entry in bucket_table: lo,
// the number of thresholds below the bucket, in bits 16-23, and in bits 0-15 the place of threshold lo
// inside the bucket. The values of a bucket differ only in their low 16 bits, which order them
// (reversed for negatives, hence the flip in bucket_place), and for the dynamic and linear maps at
// most one threshold falls inside any bucket:
//     index = lo + (bucket_place(y) > place of threshold lo)     — one table load, no branches.
// A bucket that no threshold crosses has place 0xFFFF. Tables with two thresholds in a bucket use the
// branchless 8-step bisection instead.
#pragma once

#include "bnb8/common.h"

namespace bnb8 {

constexpr int kBucketShift = 16;                                 // a bucket: one value of the top 16 bits
constexpr int kHalfBuckets = (0x3F800000 >> kBucketShift) + 1;  // magnitudes 0..1 (0x3F800000 is 1.0f)
constexpr int kNumBuckets = 2 * kHalfBuckets;

// Lookup tables for one code table; all pointers live on the device of the kernel using them.
struct CodeSearch {
  const float* thresholds;     // 256 float32: rounded-down midpoints, thresholds[255] = +inf
  const int32_t* bucket_table; // kNumBuckets entries (lo << 16 | place), or null: bisection
};

// Bucket of y in [-1, 1]: magnitude buckets 0..kHalfBuckets-1, negative values offset by kHalfBuckets.
BNB8_HD int32_t bucket_of(float y) {
  const uint32_t bits = float_to_bits(y);
  return int32_t((bits & 0x7FFFFFFFu) >> kBucketShift) + int32_t(bits >> 31) * kHalfBuckets;
}

// Where y lies inside its bucket, in the order of the values: the low 16 bits, flipped for negatives.
// Signed 32-bit arithmetic throughout (places are 16-bit): SSE2 has no unsigned 32-bit comparison.
BNB8_HD int32_t bucket_place(float y) {
  const int32_t bits = int32_t(float_to_bits(y));
  return (bits ^ (bits >> 31)) & 0xFFFF;
}

BNB8_HD int32_t nearest_code_bucketed(float y, const int32_t* bucket_table) {
  const int32_t entry = BNB8_LDG(bucket_table + bucket_of(y));  // global memory on a GPU
  return (entry >> 16) + int32_t(bucket_place(y) > (entry & 0xFFFF));
}

BNB8_HD int32_t nearest_code_bisect(float y, const float* thresholds) {
  int32_t idx = 0;
  for (int32_t step = 128; step > 0; step >>= 1) idx += (thresholds[idx + step - 1] < y) ? step : 0;
  return idx;
}

// y = x / absmax, clamped into the code range [-1, 1]; an all-zero block (absmax 0) maps to 0.
// Comparisons, not fminf/fmaxf: their NaN rules keep GCC from vectorising them (a libm call each).
// The AVX-512 search (ext/cpu/simd_search.h) computes the same y with vdivps, vmaxps and vminps.
BNB8_HD float normalize(float x, float absmax) {
  // Written so that NaN fails both tests and lands on -1: the bucket index must stay in bounds.
  float y = absmax > 0.0f ? x / absmax : 0.0f;
  y = y >= -1.0f ? y : -1.0f;
  return y <= 1.0f ? y : 1.0f;
}

// Takes the table pointers by value (not a CodeSearch&): vectorisers need loop-invariant pointers.
template <bool Bucketed>
BNB8_HD uint8_t encode(float x, float absmax, const float* thresholds, const int32_t* bucket_table) {
  const float y = normalize(x, absmax);
  if constexpr (Bucketed) return uint8_t(nearest_code_bucketed(y, bucket_table));
  else return uint8_t(nearest_code_bisect(y, thresholds));
}

BNB8_HD float decode(uint8_t code, float absmax, const float* qmap) { return qmap[code] * absmax; }

// The absmax of a block that holds a NaN or an infinity: NaN, which the Python side reports as an
// error — it never becomes a silently wrong scale.
BNB8_HD float nan_absmax() { return bits_to_float(0x7FC00000u); }

}  // namespace bnb8
