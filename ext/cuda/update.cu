// bnb8 — CUDA entry points of the optimizer update and norms pass: device guard, dtype dispatch, and
// the float64 accumulators of the norms (stream-ordered allocation, no host synchronisation).
#include "cuda/kernels.h"
#include "cuda/update.cuh"

namespace bnb8::cuda {

namespace {

// The first tensor with elements: its address names the device (an empty tensor may have none).
const TensorSlot* first_nonempty(const UpdateArgs& a) {
  for (int64_t t = 0; t < a.num_tensors; ++t)
    if (a.slots[t].n > 0) return &a.slots[t];
  return nullptr;
}

__global__ void finish_norms(const double* __restrict__ acc, float* __restrict__ out, int64_t count) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = float(acc[i]);
}

// float64 scratch on the stream: freed in stream order even when a launch throws.
struct StreamScratch {
  double* ptr = nullptr;
  cudaStream_t stream;
  StreamScratch(size_t count, cudaStream_t s) : stream(s) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&ptr), count * sizeof(double), stream), "cudaMallocAsync");
  }
  ~StreamScratch() {
    if (ptr) cudaFreeAsync(ptr, stream);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
};

}  // namespace

void optimizer_update(const UpdateArgs& a) {
  const TensorSlot* first = first_nonempty(a);
  if (first == nullptr) return;
  DeviceGuard guard(first->p, "optimizer_update: params");
  switch (a.dtype) {
    case DType::f32: return update_f32(a, guard.device());
    case DType::f16: return update_f16(a, guard.device());
    case DType::bf16: return update_bf16(a, guard.device());
  }
  throw std::invalid_argument("bnb8 CUDA: optimizer_update: unknown dtype code");
}

void optimizer_norms(const UpdateArgs& a) {
  if (a.num_tensors == 0) return;
  if (a.norms == nullptr) throw std::invalid_argument("bnb8 CUDA: optimizer_norms: norms output is null");
  const TensorSlot* first = first_nonempty(a);
  DeviceGuard guard(first ? first->p : reinterpret_cast<uintptr_t>(a.norms), "optimizer_norms: params");
  const cudaStream_t stream = stream_of(a.stream);
  const int64_t count = 2 * a.num_tensors;
  StreamScratch acc(size_t(count), stream);
  check(cudaMemsetAsync(acc.ptr, 0, size_t(count) * sizeof(double), stream), "cudaMemsetAsync");
  if (first != nullptr) {
    switch (a.dtype) {
      case DType::f32: norms_f32(a, acc.ptr, guard.device()); break;
      case DType::f16: norms_f16(a, acc.ptr, guard.device()); break;
      case DType::bf16: norms_bf16(a, acc.ptr, guard.device()); break;
      default: throw std::invalid_argument("bnb8 CUDA: optimizer_norms: unknown dtype code");
    }
  }
  const int grid = int((count + kThreads - 1) / kThreads < 1024 ? (count + kThreads - 1) / kThreads : 1024);
  finish_norms<<<grid, kThreads, 0, stream>>>(acc.ptr, a.norms, count);
  check_launch("optimizer_norms finish kernel launch");
}

}  // namespace bnb8::cuda
