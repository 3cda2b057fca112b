// bnb8 — block-wise quantization on CUDA: the walk around encode/decode of ext/include/bnb8/quantize.h.
//
// quantize: a group of min(blocksize / 4, 256) threads owns one quantization block, each thread 4
// consecutive elements per step (one vector load); a CTA of 256 threads holds 256 / group blocks.
// The group reduces the block's absmax (warp shuffles, plus shared memory past 32 threads), then
// every thread encodes its elements. The thresholds (for the bisection) live in shared memory, the
// bucket table (127 KiB, of which a block touches a few buckets) is read through the read-only cache
// (BNB8_LDG in the header). CTAs are persistent: each loads the tables
// once and strides over blocks, with 64-bit indices throughout.
#include "bnb8/quantize.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace bnb8::cuda {

namespace {

// Max over the `TPB` threads of one group (all threads of the CTA must call it together).
template <int TPB>
__device__ __forceinline__ float group_max(float v, float* scratch) {
  v = warp_max<(TPB < 32 ? TPB : 32)>(v);
  if constexpr (TPB > 32) {
    __syncthreads();  // the previous use of scratch is finished
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    const int first = (threadIdx.x / TPB) * (TPB / 32);
    v = scratch[first];
#pragma unroll
    for (int w = 1; w < TPB / 32; ++w) v = fmaxf(v, scratch[first + w]);
  }
  return v;
}

template <class T, bool Bucketed, int BS>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const typename T::storage* __restrict__ x, uint8_t* __restrict__ codes,
                    float* __restrict__ absmax, int64_t n, const float* __restrict__ thresholds,
                    const int32_t* __restrict__ bucket_table) {
  using S = typename T::storage;
  constexpr int TPB = (BS / kVec < kThreads) ? BS / kVec : kThreads;  // threads per block
  constexpr int kGroups = kThreads / TPB;                              // blocks per CTA step
  constexpr int kSteps = BS / (TPB * kVec);                            // vector loads per thread
  __shared__ float s_thr[256];
  __shared__ float s_scratch[kWarps];
  for (int i = threadIdx.x; i < 256; i += kThreads) s_thr[i] = thresholds[i];
  __syncthreads();

  const int t = threadIdx.x % TPB;
  const int64_t nblocks = (n + BS - 1) / BS;
  const bool vec_ok = aligned_for_pack<S>(x) && aligned_for_pack<uint8_t>(codes);
  for (int64_t first = int64_t(blockIdx.x) * kGroups; first < nblocks; first += int64_t(gridDim.x) * kGroups) {
    const int64_t b = first + threadIdx.x / TPB;
    const int64_t start = b * BS;
    const int64_t len = b < nblocks ? (n - start < BS ? n - start : BS) : 0;
    const bool whole = vec_ok && len == BS;
    float v[kSteps][kVec];
    float m = 0.0f, bad = 0.0f;
#pragma unroll
    for (int c = 0; c < kSteps; ++c) {
      S raw[kVec];
      load_pack(x + start, int64_t(c * TPB + t) * kVec, len, whole, S(0), raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        v[c][j] = T::load(raw[j]);
        m = fmaxf(m, fabsf(v[c][j]));  // fmaxf skips NaN, as std::max(m, NaN) on the CPU
        bad = is_finite(v[c][j]) ? bad : 1.0f;
      }
    }
    m = group_max<TPB>(m, s_scratch);
    bad = group_max<TPB>(bad, s_scratch);
    // A block holding NaN/Inf gets a NaN absmax and encodes as the code of 0 (normalize), as on the CPU.
    const float scale = bad != 0.0f ? nan_absmax() : m;
    if (t == 0 && len > 0) absmax[b] = scale;
#pragma unroll
    for (int c = 0; c < kSteps; ++c) {
      uint8_t out[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) out[j] = encode<Bucketed>(v[c][j], scale, s_thr, bucket_table);
      store_pack(codes + start, int64_t(c * TPB + t) * kVec, len, whole, out);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(typename T::storage* __restrict__ out, const uint8_t* __restrict__ codes,
                      const float* __restrict__ absmax, int64_t n, int log2_blocksize,
                      const float* __restrict__ qmap) {
  using S = typename T::storage;
  __shared__ float s_qmap[256];
  for (int i = threadIdx.x; i < 256; i += kThreads) s_qmap[i] = qmap[i];
  __syncthreads();
  const bool vec_ok = aligned_for_pack<S>(out) && aligned_for_pack<uint8_t>(codes);
  const int64_t packs = (n + kVec - 1) / kVec;
  for (int64_t k = int64_t(blockIdx.x) * kThreads + threadIdx.x; k < packs; k += int64_t(gridDim.x) * kThreads) {
    const int64_t i = k * kVec;  // a block holds a whole number of packs (blocksize >= 64)
    const bool whole = vec_ok && i + kVec <= n;
    uint8_t c[kVec];
    load_pack(codes, i, n, whole, uint8_t(0), c);
    const float scale = absmax[i >> log2_blocksize];
    S o[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) o[j] = T::store(decode(c[j], scale, s_qmap));
    store_pack(out, i, n, whole, o);
  }
}

int log2_blocksize(int64_t blocksize) {
  for (int k = 6; k <= 12; ++k)
    if (blocksize == (int64_t(1) << k)) return k;
  throw std::invalid_argument("bnb8 CUDA: blocksize must be a power of two in 64..4096, got " +
                              std::to_string(blocksize));
}

template <class T, bool Bucketed, int BS>
void launch_quantize(const QuantizeArgs& a, int device) {
  constexpr auto kernel = quantize_kernel<T, Bucketed, BS>;
  constexpr int kGroups = kThreads / ((BS / kVec < kThreads) ? BS / kVec : kThreads);
  const int64_t nblocks = (a.n + BS - 1) / BS;
  const int grid = persistent_grid<kernel>(device, (nblocks + kGroups - 1) / kGroups);
  kernel<<<grid, kThreads, 0, stream_of(a.stream)>>>(
      reinterpret_cast<const typename T::storage*>(a.x), reinterpret_cast<uint8_t*>(a.codes),
      reinterpret_cast<float*>(a.absmax), a.n, a.search.thresholds, a.search.bucket_table);
  check_launch("quantize_blockwise kernel launch");
}

template <class T, bool Bucketed>
void quantize_typed(const QuantizeArgs& a, int device) {
  switch (log2_blocksize(a.blocksize)) {
    case 6: return launch_quantize<T, Bucketed, 64>(a, device);
    case 7: return launch_quantize<T, Bucketed, 128>(a, device);
    case 8: return launch_quantize<T, Bucketed, 256>(a, device);
    case 9: return launch_quantize<T, Bucketed, 512>(a, device);
    case 10: return launch_quantize<T, Bucketed, 1024>(a, device);
    case 11: return launch_quantize<T, Bucketed, 2048>(a, device);
    default: return launch_quantize<T, Bucketed, 4096>(a, device);
  }
}

template <class T>
void quantize_dtype(const QuantizeArgs& a, int device) {
  if (a.search.bucket_table != nullptr) quantize_typed<T, true>(a, device);
  else quantize_typed<T, false>(a, device);
}

template <class T>
void dequantize_dtype(const QuantizeArgs& a, int device) {
  constexpr auto kernel = dequantize_kernel<T>;
  const int log2_bs = log2_blocksize(a.blocksize);
  const int64_t packs = (a.n + kVec - 1) / kVec;
  const int grid = persistent_grid<kernel>(device, (packs + kThreads - 1) / kThreads);
  kernel<<<grid, kThreads, 0, stream_of(a.stream)>>>(reinterpret_cast<typename T::storage*>(a.x),
                                                     reinterpret_cast<const uint8_t*>(a.codes),
                                                     reinterpret_cast<const float*>(a.absmax), a.n, log2_bs,
                                                     a.qmap);
  check_launch("dequantize_blockwise kernel launch");
}

}  // namespace

void quantize_blockwise(const QuantizeArgs& a) {
  if (a.n <= 0) return;
  log2_blocksize(a.blocksize);  // validates before touching the device
  DeviceGuard guard(a.x, "quantize_blockwise: A");
  switch (a.dtype) {
    case DType::f32: return quantize_dtype<F32>(a, guard.device());
    case DType::f16: return quantize_dtype<F16>(a, guard.device());
    case DType::bf16: return quantize_dtype<BF16>(a, guard.device());
  }
  throw std::invalid_argument("bnb8 CUDA: quantize_blockwise: unknown dtype code");
}

void dequantize_blockwise(const QuantizeArgs& a) {
  if (a.n <= 0) return;
  log2_blocksize(a.blocksize);
  DeviceGuard guard(a.x, "dequantize_blockwise: out");
  switch (a.dtype) {
    case DType::f32: return dequantize_dtype<F32>(a, guard.device());
    case DType::f16: return dequantize_dtype<F16>(a, guard.device());
    case DType::bf16: return dequantize_dtype<BF16>(a, guard.device());
  }
  throw std::invalid_argument("bnb8 CUDA: dequantize_blockwise: unknown dtype code");
}

}  // namespace bnb8::cuda
