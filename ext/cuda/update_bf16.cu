// bnb8 — the optimizer update and norms kernels for BF16 parameters, every rule of BNB8_FOR_EACH_RULE
// (one file per dtype, so the kernel instantiations compile in parallel).
#include "cuda/update.cuh"

namespace bnb8::cuda {

void update_bf16(const UpdateArgs& a, int device) { update_dtype<BF16>(a, device); }
void norms_bf16(const UpdateArgs& a, double* acc, int device) { norms_dtype<BF16>(a, acc, device); }

}  // namespace bnb8::cuda
