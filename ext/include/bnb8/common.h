// bnb8 — definitions shared by the CPU and CUDA kernels. No torch headers: tensors arrive as raw
// pointers, so the native module builds in seconds and serves every torch version.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define BNB8_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#define BNB8_HD inline __attribute__((always_inline))
#endif

// A load of a lookup table that no kernel writes: through the read-only data cache on the device,
// a plain load on the host. Only for pointers into global memory (never shared memory).
#if defined(__CUDA_ARCH__)
#define BNB8_LDG(ptr) __ldg(ptr)
#else
#define BNB8_LDG(ptr) (*(ptr))
#endif

namespace bnb8 {

// Element types of parameters and gradients (the numbering is shared with bnb8/_native.py).
enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2 };

BNB8_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, 4);
  return f;
#endif
}

BNB8_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

// a * b + c, rounded once where the hardware fuses it (CUDA, x86 with FMA, ARM64) and twice elsewhere:
// an x86-64 build without FMA would run fmaf in software, element by element.
BNB8_HD float mul_add(float a, float b, float c) {
#if defined(__CUDACC__) || defined(__FMA__) || defined(__aarch64__)
  return fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// Storage types: how one element of a parameter or gradient is read as and written from fp32.
// Math is always fp32; stores round to nearest even.
struct F32 {
  using storage = float;
  BNB8_HD static float load(float v) { return v; }
  BNB8_HD static float store(float v) { return v; }
};

struct BF16 {
  using storage = uint16_t;
  BNB8_HD static float load(uint16_t v) { return bits_to_float(uint32_t(v) << 16); }
  BNB8_HD static uint16_t store(float v) {
    uint32_t u = float_to_bits(v);
    // NaN stays NaN (quiet bit set); everything else rounds to nearest even.
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return uint16_t(((u & 0x7FFFFFFFu) > 0x7F800000u) ? nan : rounded);
  }
};

// IEEE half. On the host the conversions are written with integer and float ops that vectorise
// (GCC cannot vectorise _Float16 conversions without AVX512-FP16); they are exact, round to nearest
// even, and keep Inf/NaN — tests/test_functional.py checks every half value against torch.
struct F16 {
  using storage = uint16_t;
  BNB8_HD static float load(uint16_t v) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(v));
#else
    const uint32_t h = v;
    const uint32_t em = h & 0x7FFFu;  // exponent and mantissa
    // Shifted into float position and scaled by 2^112 this is exact for normals and subnormals alike.
    float mag = bits_to_float(em << 13) * bits_to_float(0x77800000u);
    mag = em >= 0x7C00u ? bits_to_float((em << 13) | 0x7F800000u) : mag;  // Inf, NaN
    return bits_to_float(float_to_bits(mag) | ((h & 0x8000u) << 16));
#endif
  }
  BNB8_HD static uint16_t store(float v) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(v));
#else
    const uint32_t bits = float_to_bits(v);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const uint32_t f = bits & 0x7FFFFFFFu;
    // |v| >= 65520 rounds to Inf; NaN stays a (quiet) NaN.
    const uint32_t big = f > 0x7F800000u ? 0x7E00u : 0x7C00u;
    // Below the smallest normal half: let a float addition do the rounding to a multiple of 2^-24.
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const uint32_t small = float_to_bits(bits_to_float(f) + bits_to_float(denorm_magic)) - denorm_magic;
    // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
    const uint32_t normal = (f + ((15u - 127u) << 23) + 0xFFFu + ((f >> 13) & 1u)) >> 13;
    const uint32_t out = f >= (143u << 23) ? big : (f < (113u << 23) ? small : normal);
    return uint16_t(out | sign);
#endif
  }
};

BNB8_HD bool is_finite(float v) { return (float_to_bits(v) & 0x7F800000u) != 0x7F800000u; }

// max(m, |x|) for a magnitude m, on the bit patterns: they order like the values, Inf and NaN above every
// finite value, so a NaN propagates like torch's amax (fmaxf would drop it). The absmax of a block
// (the CPU kernels reduce a whole block at once the same way: block_absmax, ext/cpu/kernels.cpp).
BNB8_HD float max_magnitude(float m, float x) {
  const uint32_t a = float_to_bits(m), b = float_to_bits(x) & 0x7FFFFFFFu;
  return bits_to_float(a > b ? a : b);
}

}  // namespace bnb8
