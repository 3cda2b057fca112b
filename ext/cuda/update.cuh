// bnb8 — the fused optimizer update and the norms pass on CUDA: the walk around Rule::direction,
// apply_update, decode and encode of ext/include/bnb8/.
//
// One warp owns one 256-element quantization block: each lane holds 2 x 4 consecutive elements (two
// fully coalesced vector loads per tensor), so the new absmax of a block is a 5-step warp shuffle
// and no __syncthreads is needed. A CTA of 8 warps is persistent: it loads the code tables (qmap and
// thresholds, 256 float32 each per state) into shared memory once and then strides over blocks; the
// bucket table (127 KiB per state, of which a block touches a few buckets) is read through the
// read-only cache (BNB8_LDG in the header).
//
// Multi-tensor: one launch covers up to kSlotsPerLaunch parameters, passed by value in the kernel's
// parameter space (< 4 KiB, no copy to the device and no allocation); a warp finds its tensor by
// binary search over the chunk's block prefix sums. Only this header's includers instantiate kernels:
// update_f32.cu, update_f16.cu and update_bf16.cu, one dtype each, so they compile in parallel.
#pragma once

#include "bnb8/optim.h"
#include "bnb8/quantize.h"
#include "cuda/common.cuh"

namespace bnb8::cuda {

constexpr int kSlotsPerLaunch = 40;
constexpr int kLaneSteps = int(kOptimBlock) / (32 * kVec);  // vector steps per lane and block (2)
static_assert(kLaneSteps * 32 * kVec == kOptimBlock, "a warp covers one optimizer block");

// Up to kSlotsPerLaunch tensors of one call, by value in the kernel's parameter space.
struct SlotChunk {
  TensorSlot slots[kSlotsPerLaunch];
  int64_t first_block[kSlotsPerLaunch + 1];  // prefix sums of blocks per tensor
  int32_t num_tensors;
  int32_t first_tensor;  // index of slots[0] in the call: the row of scales and norms
};

// What every chunk of one call shares.
struct Tables {
  Hyper hyper;
  const float* qmap[kMaxStates];
  const float* thresholds[kMaxStates];
  const int32_t* bucket_table[kMaxStates];
  const float* scales;              // [num_tensors][2] or null
  unsigned long long* nonfinite;    // += skipped gradient elements, or null
  double* norms;                    // [num_tensors][2] accumulators of the norms pass
};
static_assert(sizeof(SlotChunk) + sizeof(Tables) <= 4000, "kernel parameters must stay under 4 KiB");

// The tensor of the chunk holding global block gb (warp-uniform, so the parameter reads broadcast).
__device__ __forceinline__ int find_tensor(const SlotChunk& c, int64_t gb) {
  int t = 0;
#pragma unroll
  for (int step = 32; step > 0; step >>= 1)
    if (t + step < c.num_tensors && c.first_block[t + step] <= gb) t += step;
  return t;
}

// The elements a lane owns: [base(c), base(c) + kVec) for c < kLaneSteps.
__device__ __forceinline__ int64_t lane_base(int c, int lane) { return int64_t(c * 32 + lane) * kVec; }

// Loads the block's parameters, gradients and (dequantized) states into registers.
template <class Rule, class T, bool Quantized>
struct BlockView {
  static constexpr int NS = Rule::kStates;
  using S = typename T::storage;
  S* p;
  const S* g;
  uint8_t* codes[NS];
  float* fstate[NS];
  float* absmax[NS];
  int64_t len;
  bool whole;

  __device__ __forceinline__ BlockView(const TensorSlot& slot, int64_t blk) {
    const int64_t start = blk * kOptimBlock;
    len = slot.n - start < kOptimBlock ? slot.n - start : kOptimBlock;
    p = reinterpret_cast<S*>(slot.p) + start;
    g = reinterpret_cast<const S*>(slot.g) + start;
    whole = len == kOptimBlock && aligned_for_pack<S>(p) && aligned_for_pack<S>(g);
#pragma unroll
    for (int k = 0; k < NS; ++k) {
      codes[k] = reinterpret_cast<uint8_t*>(slot.state[k]) + start;
      fstate[k] = reinterpret_cast<float*>(slot.state[k]) + start;
      absmax[k] = reinterpret_cast<float*>(slot.absmax[k]);
      whole = whole && (Quantized ? aligned_for_pack<uint8_t>(codes[k]) : aligned_for_pack<float>(fstate[k]));
    }
  }

  __device__ __forceinline__ void load(int64_t blk, int lane, const float (*qmap)[256], S (&pr)[kLaneSteps][kVec],
                                       S (&gr)[kLaneSteps][kVec], float (&st)[NS][kLaneSteps][kVec]) const {
    float scale[NS];
#pragma unroll
    for (int k = 0; k < NS; ++k) scale[k] = Quantized ? absmax[k][blk] : 0.0f;
#pragma unroll
    for (int c = 0; c < kLaneSteps; ++c) {
      const int64_t i = lane_base(c, lane);
      load_pack(p, i, len, whole, S(0), pr[c]);
      load_pack(g, i, len, whole, S(0), gr[c]);
#pragma unroll
      for (int k = 0; k < NS; ++k) {
        if constexpr (Quantized) {
          uint8_t cr[kVec];
          load_pack(codes[k], i, len, whole, uint8_t(0), cr);
#pragma unroll
          for (int j = 0; j < kVec; ++j) st[k][c][j] = decode(cr[j], scale[k], qmap[k]);
        } else {
          load_pack(fstate[k], i, len, whole, 0.0f, st[k][c]);
        }
      }
    }
  }
};

// One block of one tensor, by one warp. Returns the lane's count of skipped (non-finite) gradients.
template <class Rule, class T, bool Quantized, bool Bucketed>
__device__ __forceinline__ int64_t update_block(const TensorSlot& slot, int64_t blk, float gscale, float uscale,
                                                const Tables& tb, const float (*qmap)[256],
                                                const float (*thresholds)[256], int lane) {
  constexpr int NS = Rule::kStates;
  using S = typename T::storage;
  const BlockView<Rule, T, Quantized> v(slot, blk);
  S pr[kLaneSteps][kVec], gr[kLaneSteps][kVec];
  float st[NS][kLaneSteps][kVec];
  v.load(blk, lane, qmap, pr, gr, st);

  int64_t skipped = 0;
#pragma unroll
  for (int c = 0; c < kLaneSteps; ++c) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const bool valid = lane_base(c, lane) + j < v.len;
      const float gi = T::load(gr[c][j]) * gscale;
      const float pi = T::load(pr[c][j]);
      float s[NS], s_old[NS];
#pragma unroll
      for (int k = 0; k < NS; ++k) s[k] = s_old[k] = st[k][c][j];
      const float u = Rule::direction(gi, pi, s, tb.hyper);
      // A non-finite (or, with skip_zeros, zero) gradient element leaves its parameter and states as
      // they were; only non-finite ones are counted.
      const bool ok = updates_element(gi, tb.hyper);
      const S updated = T::store(apply_update(pi, u, uscale, tb.hyper));
      pr[c][j] = ok ? updated : pr[c][j];
#pragma unroll
      for (int k = 0; k < NS; ++k) st[k][c][j] = valid ? (ok ? s[k] : s_old[k]) : 0.0f;
      skipped += int64_t(valid && !is_finite(gi));
    }
    store_pack(v.p, lane_base(c, lane), v.len, v.whole, pr[c]);
  }

#pragma unroll
  for (int k = 0; k < NS; ++k) {
    if constexpr (Quantized) {
      float m = 0.0f;
#pragma unroll
      for (int c = 0; c < kLaneSteps; ++c)
#pragma unroll
        for (int j = 0; j < kVec; ++j) m = max_magnitude(m, st[k][c][j]);
      m = warp_max_magnitude(m);
      if (lane == 0) v.absmax[k][blk] = m;
#pragma unroll
      for (int c = 0; c < kLaneSteps; ++c) {
        uint8_t out[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) out[j] = encode<Bucketed>(st[k][c][j], m, thresholds[k], tb.bucket_table[k]);
        store_pack(v.codes[k], lane_base(c, lane), v.len, v.whole, out);
      }
    } else {
#pragma unroll
      for (int c = 0; c < kLaneSteps; ++c) store_pack(v.fstate[k], lane_base(c, lane), v.len, v.whole, st[k][c]);
    }
  }
  return skipped;
}

// Copies the code tables of every state into shared memory (8-bit states only).
template <int NS>
__device__ __forceinline__ void load_tables(const Tables& tb, float (*qmap)[256], float (*thresholds)[256],
                                            bool with_thresholds) {
  for (int i = threadIdx.x; i < 256; i += kThreads) {
#pragma unroll
    for (int k = 0; k < NS; ++k) {
      qmap[k][i] = tb.qmap[k][i];
      if (with_thresholds) thresholds[k][i] = tb.thresholds[k][i];
    }
  }
  __syncthreads();
}

// No minimum-occupancy bound: Adam needs ~80 registers (3 CTAs = 768 threads per SM, each with 8
// elements' loads in flight, ~60 KB per SM: more than the bandwidth-latency product needs); forcing
// 4 CTAs (64 registers) spills inside the block loop.
template <class Rule, class T, bool Quantized, bool Bucketed>
__global__ void __launch_bounds__(kThreads)
    update_kernel(const __grid_constant__ SlotChunk chunk, const __grid_constant__ Tables tb) {
  constexpr int NS = Rule::kStates;
  __shared__ float s_qmap[Quantized ? NS : 1][256];
  __shared__ float s_thr[Quantized ? NS : 1][256];
  if constexpr (Quantized) load_tables<NS>(tb, s_qmap, s_thr, true);
  const int lane = threadIdx.x & 31;
  const int64_t total = chunk.first_block[chunk.num_tensors];
  int64_t skipped = 0;
  for (int64_t gb = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; gb < total; gb += int64_t(gridDim.x) * kWarps) {
    const int t = find_tensor(chunk, gb);
    const int64_t row = chunk.first_tensor + t;
    const float gscale = tb.scales ? tb.scales[2 * row] : 1.0f;
    const float uscale = tb.scales ? tb.scales[2 * row + 1] : 1.0f;
    skipped += update_block<Rule, T, Quantized, Bucketed>(chunk.slots[t], gb - chunk.first_block[t], gscale, uscale,
                                                          tb, s_qmap, s_thr, lane);
  }
  skipped = warp_sum(skipped);
  if (lane == 0 && skipped != 0 && tb.nonfinite != nullptr)
    atomicAdd(tb.nonfinite, static_cast<unsigned long long>(skipped));
}

// Sum of u^2 (elements that update only) and p^2 over one block, from the same arithmetic as
// update_block, writing nothing; every lane returns the warp's sums.
template <class Rule, class T, bool Quantized>
__device__ __forceinline__ void norms_block(const TensorSlot& slot, int64_t blk, float gscale, const Tables& tb,
                                            const float (*qmap)[256], int lane, float& su, float& sp) {
  constexpr int NS = Rule::kStates;
  using S = typename T::storage;
  const BlockView<Rule, T, Quantized> v(slot, blk);
  S pr[kLaneSteps][kVec], gr[kLaneSteps][kVec];
  float st[NS][kLaneSteps][kVec];
  v.load(blk, lane, qmap, pr, gr, st);
  su = 0.0f;
  sp = 0.0f;
#pragma unroll
  for (int c = 0; c < kLaneSteps; ++c) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const bool valid = lane_base(c, lane) + j < v.len;
      const float gi = T::load(gr[c][j]) * gscale;
      const float pi = T::load(pr[c][j]);
      float s[NS];
#pragma unroll
      for (int k = 0; k < NS; ++k) s[k] = st[k][c][j];
      const float u = Rule::direction(gi, pi, s, tb.hyper);
      su += (valid && updates_element(gi, tb.hyper)) ? u * u : 0.0f;
      sp += valid ? pi * pi : 0.0f;
    }
  }
  su = warp_sum(su);
  sp = warp_sum(sp);
}

template <class Rule, class T, bool Quantized>
__global__ void __launch_bounds__(kThreads)
    norms_kernel(const __grid_constant__ SlotChunk chunk, const __grid_constant__ Tables tb) {
  constexpr int NS = Rule::kStates;
  __shared__ float s_qmap[Quantized ? NS : 1][256];
  if constexpr (Quantized) load_tables<NS>(tb, s_qmap, nullptr, false);
  const int lane = threadIdx.x & 31;
  const int64_t total = chunk.first_block[chunk.num_tensors];
  // Block sums are float (as on the CPU); a warp adds them in double per tensor and flushes once
  // per tensor it visited, so the atomics are few.
  double acc_u = 0.0, acc_p = 0.0;
  int current = -1;
  auto flush = [&]() {
    if (current >= 0 && lane == 0) {
      atomicAdd(&tb.norms[2 * (chunk.first_tensor + current)], acc_u);
      atomicAdd(&tb.norms[2 * (chunk.first_tensor + current) + 1], acc_p);
    }
    acc_u = acc_p = 0.0;
  };
  for (int64_t gb = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; gb < total; gb += int64_t(gridDim.x) * kWarps) {
    const int t = find_tensor(chunk, gb);
    if (t != current) {
      flush();
      current = t;
    }
    const int64_t row = chunk.first_tensor + t;
    const float gscale = tb.scales ? tb.scales[2 * row] : 1.0f;
    float su, sp;
    norms_block<Rule, T, Quantized>(chunk.slots[t], gb - chunk.first_block[t], gscale, tb, s_qmap, lane, su, sp);
    acc_u += su;
    acc_p += sp;
  }
  flush();
}

// ---- host side ------------------------------------------------------------------------------------

inline Tables make_tables(const UpdateArgs& a, double* norms) {
  Tables tb{};
  tb.hyper = a.hyper;
  for (int k = 0; k < kMaxStates; ++k) {
    tb.qmap[k] = a.qmap[k];
    tb.thresholds[k] = a.search[k].thresholds;
    tb.bucket_table[k] = a.search[k].bucket_table;
  }
  tb.scales = a.scales;
  tb.nonfinite = reinterpret_cast<unsigned long long*>(a.nonfinite);
  tb.norms = norms;
  return tb;
}

inline SlotChunk make_chunk(const UpdateArgs& a, int64_t first) {
  SlotChunk c{};
  const int64_t count = a.num_tensors - first < kSlotsPerLaunch ? a.num_tensors - first : kSlotsPerLaunch;
  c.num_tensors = int32_t(count);
  c.first_tensor = int32_t(first);
  c.first_block[0] = 0;
  for (int64_t t = 0; t < count; ++t) {
    c.slots[t] = a.slots[first + t];
    c.first_block[t + 1] = c.first_block[t] + (c.slots[t].n + kOptimBlock - 1) / kOptimBlock;
  }
  return c;
}

// Runs `kernel` over every chunk of the call.
template <auto Kernel>
void launch_chunks(const UpdateArgs& a, const Tables& tb, int device, const char* what) {
  for (int64_t first = 0; first < a.num_tensors; first += kSlotsPerLaunch) {
    const SlotChunk chunk = make_chunk(a, first);
    const int64_t blocks = chunk.first_block[chunk.num_tensors];
    if (blocks == 0) continue;
    const int grid = persistent_grid<Kernel>(device, (blocks + kWarps - 1) / kWarps);
    Kernel<<<grid, kThreads, 0, stream_of(a.stream)>>>(chunk, tb);
    check_launch(what);
  }
}

// Calls fn(Rule{}) for the rule with index `rule` in BNB8_FOR_EACH_RULE.
template <class Fn>
void visit_rule(int32_t rule, Fn&& fn) {
  int32_t index = 0;
  bool done = false;
  auto one = [&](auto tag) {
    if (!done && index++ == rule) {
      done = true;
      fn(tag);
    }
  };
#define BNB8_VISIT(R) one(R{});
  BNB8_FOR_EACH_RULE(BNB8_VISIT)
#undef BNB8_VISIT
  if (!done) throw std::invalid_argument("bnb8 CUDA: unknown update rule index " + std::to_string(rule));
}

template <int NS>
bool all_bucketed(const UpdateArgs& a) {
  for (int k = 0; k < NS; ++k)
    if (a.search[k].bucket_table == nullptr) return false;
  return true;
}

template <class T>
void update_dtype(const UpdateArgs& a, int device) {
  const Tables tb = make_tables(a, nullptr);
  visit_rule(a.rule, [&](auto tag) {
    using Rule = decltype(tag);
    constexpr int NS = Rule::kStates;
    const char* what = "optimizer_update kernel launch";
    if (!a.quantized) launch_chunks<update_kernel<Rule, T, false, false>>(a, tb, device, what);
    else if (all_bucketed<NS>(a)) launch_chunks<update_kernel<Rule, T, true, true>>(a, tb, device, what);
    else launch_chunks<update_kernel<Rule, T, true, false>>(a, tb, device, what);
  });
}

template <class T>
void norms_dtype(const UpdateArgs& a, double* acc, int device) {
  const Tables tb = make_tables(a, acc);
  visit_rule(a.rule, [&](auto tag) {
    using Rule = decltype(tag);
    const char* what = "optimizer_norms kernel launch";
    if (a.quantized) launch_chunks<norms_kernel<Rule, T, true>>(a, tb, device, what);
    else launch_chunks<norms_kernel<Rule, T, false>>(a, tb, device, what);
  });
}

// Entry points per dtype (update_f32.cu, update_f16.cu, update_bf16.cu).
#define BNB8_CUDA_DECLARE_DTYPE(NAME)                                  \
  void update_##NAME(const UpdateArgs& a, int device);                 \
  void norms_##NAME(const UpdateArgs& a, double* acc, int device);
BNB8_CUDA_DECLARE_DTYPE(f32)
BNB8_CUDA_DECLARE_DTYPE(f16)
BNB8_CUDA_DECLARE_DTYPE(bf16)
#undef BNB8_CUDA_DECLARE_DTYPE

}  // namespace bnb8::cuda
