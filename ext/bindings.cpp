// bnb8._C — pybind11 bindings. Tensors cross as data_ptr() integers; bnb8/_native.py checks device,
// dtype, contiguity and sizes before every call (a bad pointer here is a crash, not an error).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "bnb8/api.h"
#include "cpu/kernels.h"
#if defined(BNB8_WITH_CUDA)
#include "cuda/kernels.h"
#include "cuda/paged.h"
#endif

namespace py = pybind11;
using namespace bnb8;

namespace {

template <class T>
const T* ptr(uintptr_t address) {
  return reinterpret_cast<const T*>(address);
}

QuantizeArgs quantize_args(int32_t dtype, uintptr_t x, uintptr_t codes, uintptr_t absmax, int64_t n,
                           int64_t blocksize, uintptr_t qmap, uintptr_t thresholds, uintptr_t bucket_table,
                           int32_t num_threads, uintptr_t stream) {
  QuantizeArgs a;
  a.dtype = DType(dtype);
  a.x = x;
  a.codes = codes;
  a.absmax = absmax;
  a.n = n;
  a.blocksize = blocksize;
  a.qmap = ptr<float>(qmap);
  a.search = CodeSearch{ptr<float>(thresholds), ptr<int32_t>(bucket_table)};
  a.num_threads = num_threads;
  a.stream = stream;
  return a;
}

// The flat slot table (kSlotWords int64 per tensor) and per-state tables become one UpdateArgs.
struct UpdateCall {
  std::vector<TensorSlot> slots;
  UpdateArgs args;
};

UpdateCall update_args(int32_t rule, int32_t dtype, bool quantized, const std::vector<int64_t>& table,
                       const Hyper& hyper, const std::vector<uintptr_t>& qmaps,
                       const std::vector<uintptr_t>& thresholds, const std::vector<uintptr_t>& bucket_table,
                       uintptr_t scales, uintptr_t nonfinite, uintptr_t norms, int32_t num_threads,
                       uintptr_t stream) {
  if (table.size() % kSlotWords != 0) throw std::invalid_argument("slot table size is not a multiple of 9");
  if (qmaps.size() != kMaxStates || thresholds.size() != kMaxStates || bucket_table.size() != kMaxStates)
    throw std::invalid_argument("qmaps, thresholds and bucket_table need one entry per state slot (3)");
  UpdateCall call;
  call.slots.resize(table.size() / kSlotWords);
  static_assert(sizeof(TensorSlot) == kSlotWords * sizeof(int64_t), "TensorSlot layout");
  if (!table.empty()) memcpy(call.slots.data(), table.data(), table.size() * sizeof(int64_t));
  UpdateArgs& a = call.args;
  a.rule = rule;
  a.dtype = DType(dtype);
  a.quantized = quantized;
  a.slots = call.slots.data();
  a.num_tensors = int64_t(call.slots.size());
  a.hyper = hyper;
  for (int k = 0; k < kMaxStates; ++k) {
    a.qmap[k] = ptr<float>(qmaps[k]);
    a.search[k] = CodeSearch{ptr<float>(thresholds[k]), ptr<int32_t>(bucket_table[k])};
  }
  a.scales = ptr<float>(scales);
  a.nonfinite = reinterpret_cast<int64_t*>(nonfinite);
  a.norms = reinterpret_cast<float*>(norms);
  a.num_threads = num_threads;
  a.stream = stream;
  return call;
}

py::list rules() {
  py::list out;
#define BNB8_LIST(R) out.append(py::make_tuple(R::kName, R::kStates));
  BNB8_FOR_EACH_RULE(BNB8_LIST)
#undef BNB8_LIST
  return out;
}

template <void (*Fn)(const QuantizeArgs&)>
void quantize_entry(int32_t dtype, uintptr_t x, uintptr_t codes, uintptr_t absmax, int64_t n, int64_t blocksize,
                    uintptr_t qmap, uintptr_t thresholds, uintptr_t bucket_table, int32_t num_threads,
                    uintptr_t stream) {
  Fn(quantize_args(dtype, x, codes, absmax, n, blocksize, qmap, thresholds, bucket_table, num_threads, stream));
}

template <void (*Fn)(const UpdateArgs&)>
void update_entry(int32_t rule, int32_t dtype, bool quantized, const std::vector<int64_t>& table,
                  const Hyper& hyper, const std::vector<uintptr_t>& qmaps, const std::vector<uintptr_t>& thresholds,
                  const std::vector<uintptr_t>& bucket_table, uintptr_t scales, uintptr_t nonfinite, uintptr_t norms,
                  int32_t num_threads, uintptr_t stream) {
  UpdateCall call = update_args(rule, dtype, quantized, table, hyper, qmaps, thresholds, bucket_table, scales,
                                nonfinite, norms, num_threads, stream);
  Fn(call.args);
}

// One set of entry points per device: PREFIX_quantize_blockwise, ..._optimizer_norms.
template <void (*Q)(const QuantizeArgs&), void (*D)(const QuantizeArgs&), void (*U)(const UpdateArgs&),
          void (*N)(const UpdateArgs&)>
void bind_device(py::module_& m, const std::string& prefix) {
  const auto release = py::call_guard<py::gil_scoped_release>();
  const char* qdoc = "(dtype, x, codes, absmax, n, blocksize, qmap, thresholds, bucket_table, num_threads, stream)";
  const char* udoc =
      "(rule, dtype, quantized, table, hyper, qmaps, thresholds, bucket_table, scales, nonfinite, norms, "
      "num_threads, stream)";
  m.def((prefix + "_quantize_blockwise").c_str(), &quantize_entry<Q>, release, qdoc);
  m.def((prefix + "_dequantize_blockwise").c_str(), &quantize_entry<D>, release, qdoc);
  m.def((prefix + "_optimizer_update").c_str(), &update_entry<U>, release, udoc);
  m.def((prefix + "_optimizer_norms").c_str(), &update_entry<N>, release, udoc);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bnb8 native kernels (no torch headers; see bnb8/_native.py for the checked Python side)";
  m.attr("OPTIM_BLOCK") = kOptimBlock;
  m.attr("MAX_STATES") = kMaxStates;
  m.attr("SLOT_WORDS") = kSlotWords;
  m.attr("NUM_BUCKETS") = kNumBuckets;
  m.attr("HALF_BUCKETS") = kHalfBuckets;
  m.attr("BUCKET_SHIFT") = kBucketShift;
  m.def("rules", &rules, "[(name, number of states)] in rule-index order");
  m.def("cpu_isa", &cpu::isa, "instruction set of the CPU kernels in use: avx512, avx2 or generic");
  m.def(
      "cpu_search_runs", [](uintptr_t thresholds) { return cpu::search_runs(ptr<float>(thresholds)); },
      "(address of 256 float32 thresholds) -> equal-spacing runs the AVX-512 search uses for them; "
      "0: it uses its tree, -1: the CPU variant in use has no run search");

  py::class_<Hyper>(m, "Hyper")
      .def(py::init<>())
      .def_readwrite("step_size", &Hyper::step_size)
      .def_readwrite("decay", &Hyper::decay)
      .def_readwrite("weight_decay", &Hyper::weight_decay)
      .def_readwrite("beta1", &Hyper::beta1)
      .def_readwrite("beta2", &Hyper::beta2)
      .def_readwrite("beta3", &Hyper::beta3)
      .def_readwrite("eps", &Hyper::eps)
      .def_readwrite("bias_correction2_sqrt", &Hyper::bias_correction2_sqrt)
      .def_readwrite("alpha", &Hyper::alpha)
      .def_readwrite("momentum", &Hyper::momentum)
      .def_readwrite("dampening", &Hyper::dampening)
      .def_readwrite("lr", &Hyper::lr)
      .def_readwrite("step", &Hyper::step)
      .def_readwrite("nesterov", &Hyper::nesterov)
      .def_readwrite("centered", &Hyper::centered)
      .def_readwrite("skip_zeros", &Hyper::skip_zeros);

  bind_device<cpu::quantize_blockwise, cpu::dequantize_blockwise, cpu::optimizer_update, cpu::optimizer_norms>(
      m, "cpu");
#if defined(BNB8_WITH_CUDA)
  bind_device<cuda::quantize_blockwise, cuda::dequantize_blockwise, cuda::optimizer_update, cuda::optimizer_norms>(
      m, "cuda");
  m.attr("HAS_CUDA") = true;
  // Paged optimizer state (bnb8/paged.py); the allocator itself is the C symbol pair
  // bnb8_managed_alloc / bnb8_managed_free of this module, loaded by torch's CUDAPluggableAllocator.
  m.def("cuda_prefetch", &cuda::prefetch, py::call_guard<py::gil_scoped_release>(),
        "(address, nbytes, device (-1 = host), stream, stream_device): async migration of managed memory");
  m.def("cuda_is_managed", &cuda::is_managed, "(address) -> whether it is CUDA managed memory");
  m.def("cuda_managed_bytes", &cuda::managed_bytes, "bytes currently allocated by bnb8_managed_alloc");
  m.def("host_available_bytes", &cuda::host_available_bytes, "MemAvailable of /proc/meminfo in bytes");
  m.def(
      "cuda_device_memory",
      [](int device) {
        int64_t free_bytes = 0, total_bytes = 0;
        cuda::device_memory(device, &free_bytes, &total_bytes);
        return py::make_tuple(free_bytes, total_bytes);
      },
      "(device) -> (free, total) bytes from cudaMemGetInfo");
#else
  m.attr("HAS_CUDA") = false;
#endif
}
