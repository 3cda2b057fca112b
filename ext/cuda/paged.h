// bnb8 — unified (managed) memory for paged optimizer state: see paged.cu and bnb8/paged.py.
// Host-side declarations only (no CUDA types), so ext/bindings.cpp includes it like kernels.h.
#pragma once

#include <stdint.h>

namespace bnb8::cuda {

// Starts migrating [address, address + nbytes) of managed memory to `device` (-1 = host memory),
// ordered on `stream`, which belongs to device `stream_device`. Never synchronises the host.
void prefetch(uintptr_t address, int64_t nbytes, int device, uintptr_t stream, int stream_device);

// Whether `address` lies in CUDA managed memory.
bool is_managed(uintptr_t address);

// Bytes currently held by bnb8_managed_alloc (all devices): NVML does not attribute managed memory
// to the process, so this counter is how the profiler and tests see it.
int64_t managed_bytes();

// MemAvailable of /proc/meminfo in bytes (0 where it cannot be read).
int64_t host_available_bytes();

// (free, total) bytes of `device` as cudaMemGetInfo reports them.
void device_memory(int device, int64_t* free_bytes, int64_t* total_bytes);

}  // namespace bnb8::cuda
