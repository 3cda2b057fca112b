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

struct F16 {
  using storage = uint16_t;
  BNB8_HD static float load(uint16_t v) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(v));
#else
    _Float16 h;
    memcpy(&h, &v, 2);
    return float(h);
#endif
  }
  BNB8_HD static uint16_t store(float v) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(v));
#else
    _Float16 h = _Float16(v);
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
#endif
  }
};

BNB8_HD bool is_finite(float v) { return (float_to_bits(v) & 0x7F800000u) != 0x7F800000u; }

}  // namespace bnb8
