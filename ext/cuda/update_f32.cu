// bnb8 — the optimizer update and norms kernels for F32 parameters, every rule of BNB8_FOR_EACH_RULE
// (one file per dtype, so the kernel instantiations compile in parallel).
#include "cuda/update.cuh"

namespace bnb8::cuda {

void update_f32(const UpdateArgs& a, int device) { update_dtype<F32>(a, device); }
void norms_f32(const UpdateArgs& a, double* acc, int device) { norms_dtype<F32>(a, acc, device); }

}  // namespace bnb8::cuda
