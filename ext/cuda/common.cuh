// bnb8 — what every CUDA launcher shares: error checks that become C++ exceptions, the device guard
// taken from a tensor's address, launch sizing, warp reductions and 4-element vector loads/stores.
// The per-element math is never here: it comes from ext/include/bnb8/.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "bnb8/api.h"

namespace bnb8::cuda {

constexpr int kThreads = 256;                // threads per CTA of every kernel
constexpr int kWarps = kThreads / 32;        // warps per CTA
constexpr int kVec = 4;                      // elements per vector load of one thread
constexpr int kMaxDevices = 64;

// Throws std::runtime_error (RuntimeError in Python) when a CUDA call failed, naming the call.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call does not report it again
    throw std::runtime_error(std::string("bnb8 CUDA: ") + what + " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

// After a launch: a bad configuration or a missing kernel image shows up here, not at the next sync.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Makes the device that owns `address` current for the lifetime of the guard (and restores the
// previous one). Native code shares no runtime state with torch, so the device must come from the
// tensor itself; managed (paged) memory reports the device it was allocated for.
class DeviceGuard {
 public:
  explicit DeviceGuard(uintptr_t address, const char* what) {
    cudaPointerAttributes attr{};
    check(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(address)), "cudaPointerGetAttributes");
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
      throw std::invalid_argument(std::string("bnb8 CUDA: ") + what + " is not CUDA device or managed memory");
    device_ = attr.device;
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device_) check(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  int device() const { return device_; }

 private:
  int device_ = 0;
  int previous_ = -1;
};

inline cudaStream_t stream_of(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// Streaming multiprocessors of `device`, asked once per device.
inline int sm_count(int device) {
  static int cache[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) device = 0;
  if (cache[device] == 0) {
    int n = 0;
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    cache[device] = n > 0 ? n : 1;
  }
  return cache[device];
}

// Grid of a persistent (grid-stride) kernel: enough CTAs to fill every SM at the occupancy the kernel
// reaches, never more than the work needs. Each CTA then loads its code tables once.
template <auto Kernel>
int persistent_grid(int device, int64_t ctas_needed) {
  static int per_sm = 0;  // one value per kernel (every device of a process runs the same binary)
  if (per_sm == 0) {
    int n = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, kThreads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    per_sm = n > 0 ? n : 1;
  }
  const int64_t full = int64_t(per_sm) * sm_count(device);
  return int(ctas_needed < full ? (ctas_needed > 0 ? ctas_needed : 1) : full);
}

#if defined(__CUDACC__)

// Butterfly reduction over Width lanes (a power of two, at most 32): every lane ends with op over all.
template <int Width = 32, class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = Width / 2; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <int Width = 32>
__device__ __forceinline__ float warp_max(float v) {
  return warp_reduce<Width>(v, [](float a, float b) { return fmaxf(a, b); });
}

// warp_max of magnitudes with max_magnitude (NaN propagates).
__device__ __forceinline__ float warp_max_magnitude(float v) {
  return warp_reduce(v, [](float m, float x) { return max_magnitude(m, x); });
}

template <int Width = 32, class T>
__device__ __forceinline__ T warp_sum(T v) {
  return warp_reduce<Width>(v, [](T a, T b) { return a + b; });
}

// kVec consecutive elements as one aligned access (LDG.32/64/128 for 1/2/4-byte elements).
template <class S>
struct alignas(kVec * sizeof(S)) Pack {
  S v[kVec];
};

template <class S>
__device__ __forceinline__ bool aligned_for_pack(const void* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) % sizeof(Pack<S>)) == 0;
}

// Loads elements [i, i + kVec) of ptr: one vector load when `whole`, else element by element with the
// ones at or past `len` set to `fill`.
template <class S>
__device__ __forceinline__ void load_pack(const S* ptr, int64_t i, int64_t len, bool whole, S fill, S (&out)[kVec]) {
  if (whole) {
    const Pack<S> pk = *reinterpret_cast<const Pack<S>*>(ptr + i);
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = pk.v[j];
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = (i + j < len) ? ptr[i + j] : fill;
  }
}

template <class S>
__device__ __forceinline__ void store_pack(S* ptr, int64_t i, int64_t len, bool whole, const S (&in)[kVec]) {
  if (whole) {
    Pack<S> pk;
#pragma unroll
    for (int j = 0; j < kVec; ++j) pk.v[j] = in[j];
    *reinterpret_cast<Pack<S>*>(ptr + i) = pk;
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      if (i + j < len) ptr[i + j] = in[j];
  }
}

#endif  // __CUDACC__

}  // namespace bnb8::cuda
