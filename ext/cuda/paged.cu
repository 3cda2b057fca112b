// bnb8 — allocation in CUDA unified memory for paged optimizers, and prefetching.
//
// bnb8_managed_alloc / bnb8_managed_free are plain C functions with default visibility so that
// torch.cuda.memory.CUDAPluggableAllocator can load them from the _C module itself (bnb8/paged.py
// routes a private torch.cuda.MemPool through them). An allocation never asks for more than the
// device's free memory plus the host's available RAM: past that, unified memory would thrash or the
// kernel's OOM killer would end the process; returning null makes torch raise its OutOfMemoryError.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include <atomic>

#include "cuda/common.cuh"
#include "cuda/paged.h"

namespace bnb8::cuda {

namespace {

std::atomic<int64_t> g_managed_bytes{0};

// Makes `device` current for the guard's lifetime (no exceptions: used from the C allocator too).
class QuietDeviceGuard {
 public:
  explicit QuietDeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (device >= 0 && device != previous_) {
      ok_ = cudaSetDevice(device) == cudaSuccess;
      switched_ = ok_;
    }
  }
  ~QuietDeviceGuard() {
    if (switched_ && previous_ >= 0) cudaSetDevice(previous_);
  }
  bool ok() const { return ok_; }

 private:
  int previous_ = -1;
  bool ok_ = true, switched_ = false;
};

}  // namespace

int64_t host_available_bytes() {
  FILE* f = fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  long long kib = 0;
  while (fgets(line, sizeof line, f) != nullptr) {
    if (sscanf(line, "MemAvailable: %lld kB", &kib) == 1) break;
  }
  fclose(f);
  return int64_t(kib) * 1024;
}

void device_memory(int device, int64_t* free_bytes, int64_t* total_bytes) {
  QuietDeviceGuard guard(device);
  if (!guard.ok()) check(cudaSetDevice(device), "cudaSetDevice");
  size_t free = 0, total = 0;
  check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  *free_bytes = int64_t(free);
  *total_bytes = int64_t(total);
}

int64_t managed_bytes() { return g_managed_bytes.load(); }

bool is_managed(uintptr_t address) {
  if (address == 0) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(address)) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeManaged;
}

void prefetch(uintptr_t address, int64_t nbytes, int device, uintptr_t stream, int stream_device) {
  if (nbytes <= 0) return;
  QuietDeviceGuard guard(stream_device);
  if (!guard.ok()) check(cudaSetDevice(stream_device), "cudaSetDevice");
  const void* ptr = reinterpret_cast<const void*>(address);
#if CUDART_VERSION >= 13000
  // CUDA 13 takes a location (and flags) instead of a device ordinal.
  cudaMemLocation location{};
  location.type = device < 0 ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  location.id = device < 0 ? 0 : device;
  check(cudaMemPrefetchAsync(ptr, size_t(nbytes), location, 0, stream_of(stream)), "cudaMemPrefetchAsync");
#else
  check(cudaMemPrefetchAsync(ptr, size_t(nbytes), device < 0 ? cudaCpuDeviceId : device, stream_of(stream)),
        "cudaMemPrefetchAsync");
#endif
}

}  // namespace bnb8::cuda

extern "C" {

__attribute__((visibility("default"))) void* bnb8_managed_alloc(ssize_t size, int device, cudaStream_t stream) {
  (void)stream;  // managed memory is not stream-ordered
  if (size <= 0) return nullptr;
  bnb8::cuda::QuietDeviceGuard guard(device);
  if (!guard.ok()) return nullptr;
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  if (int64_t(size) > int64_t(free) + bnb8::cuda::host_available_bytes()) return nullptr;
  void* ptr = nullptr;
  if (cudaMallocManaged(&ptr, size_t(size), cudaMemAttachGlobal) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  bnb8::cuda::g_managed_bytes += int64_t(size);
  return ptr;
}

__attribute__((visibility("default"))) void bnb8_managed_free(void* ptr, ssize_t size, int device,
                                                              cudaStream_t stream) {
  (void)stream;
  if (ptr == nullptr) return;
  bnb8::cuda::QuietDeviceGuard guard(device);
  // cudaFree waits for the device's work that may still use the memory.
  if (cudaFree(ptr) == cudaSuccess) bnb8::cuda::g_managed_bytes -= int64_t(size);
  else cudaGetLastError();
}

}  // extern "C"
