// bnb8 — CUDA entry points (ext/cuda/*.cu). Same arguments as the CPU ones; each launches on
// args.stream with the device guard of the tensors and never synchronises the host.
#pragma once

#include "bnb8/api.h"

namespace bnb8::cuda {

void quantize_blockwise(const QuantizeArgs& a);
void dequantize_blockwise(const QuantizeArgs& a);
void optimizer_update(const UpdateArgs& a);
void optimizer_norms(const UpdateArgs& a);

}  // namespace bnb8::cuda
