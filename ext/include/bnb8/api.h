// bnb8 — the arguments of the native entry points, shared by the CPU and CUDA launchers and the
// pybind11 bindings. Host-side only: kernels receive these values, never these structs by pointer.
#pragma once

#include "bnb8/common.h"
#include "bnb8/optim.h"
#include "bnb8/quantize.h"

namespace bnb8 {

constexpr int64_t kOptimBlock = 256;  // quantization block of optimizer states
constexpr int kMaxStates = 3;

// One parameter of a multi-tensor update: raw addresses (0 where a state is absent).
// state[k] points at uint8 codes (8-bit) or float32 values (32-bit); absmax[k] at float32 per block.
struct TensorSlot {
  uintptr_t p, g;
  uintptr_t state[kMaxStates];
  uintptr_t absmax[kMaxStates];
  int64_t n;
};
constexpr int kSlotWords = 2 + 2 * kMaxStates + 1;  // the flat int64 layout Python sends

struct UpdateArgs {
  int32_t rule = 0;          // index into BNB8_FOR_EACH_RULE
  DType dtype = DType::f32;  // of params and grads
  bool quantized = true;     // 8-bit states (uint8 codes + absmax) or float32 states
  const TensorSlot* slots = nullptr;
  int64_t num_tensors = 0;
  Hyper hyper;
  const float* qmap[kMaxStates] = {nullptr, nullptr, nullptr};
  CodeSearch search[kMaxStates] = {};
  const float* scales = nullptr;   // [num_tensors][2]: gradient scale, update scale; null = all 1
  int64_t* nonfinite = nullptr;    // += number of gradient elements skipped as NaN/Inf
  float* norms = nullptr;          // optimizer_norms output [num_tensors][2]: sum u^2, sum p^2
  int32_t num_threads = 1;         // CPU only
  uintptr_t stream = 0;            // CUDA only: cudaStream_t of the tensors' device
};

struct QuantizeArgs {
  DType dtype = DType::f32;
  uintptr_t x = 0;       // input (quantize) or output (dequantize) of dtype
  uintptr_t codes = 0;   // uint8
  uintptr_t absmax = 0;  // float32, one per block
  int64_t n = 0;
  int64_t blocksize = 256;
  const float* qmap = nullptr;  // dequantize
  CodeSearch search = {};       // quantize
  int32_t num_threads = 1;
  uintptr_t stream = 0;
};

}  // namespace bnb8
