// Every slimops op schema, defined once. Backends add implementations:
//   csrc/cpu/*.cpp             TORCH_LIBRARY_IMPL(slimops, CPU, m)
//   csrc/cuda/*_dispatch.cpp   TORCH_LIBRARY_IMPL(slimops, CUDA, m): CUDA C++ or
//                              Triton (kernels/) per call, see backend.h
//   fake (meta) impls          python/slimops/ops/, beside the typed wrappers
//
// pybind11 (torch's bundled copy, so at::Tensor converts) is only the module
// shell: build information and the backend-choice settings. Ops go through the
// dispatcher.
#include <torch/extension.h>
#include <torch/library.h>

#include "backend.h"

TORCH_LIBRARY(slimops, m) {
  // Dynamic symmetric int8, one scale per row. x [..., K] float -> q int8 [..., K], scale fp32 [..., 1].
  m.def("quantize_per_token(Tensor x) -> (Tensor, Tensor)");
  // int8 with one scale (+ zero point) per slice along `axis`; scale fp32 / zero_point int32 keep x's rank.
  m.def("quantize_per_channel(Tensor x, int axis, bool symmetric=True) -> (Tensor, Tensor, Tensor)");
  // ((q - zero_point) * scale) in fp32, rounded once to out_dtype (float32, float16 or bfloat16).
  m.def("dequantize(Tensor q, Tensor scale, Tensor? zero_point, ScalarType out_dtype) -> Tensor");

  // int8 GEMM with exact int32 accumulation and a fused epilogue, nn.Linear layout (b is [N, K]):
  // out[m, n] = (sum_k a[m,k] b[n,k]) * a_scale[m] * b_scale[n] + bias[n] in fp32, rounded once to out_dtype.
  m.def(
      "int8_mm(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias=None, ScalarType out_dtype=float) "
      "-> Tensor");
  // W8A8: x [..., K] float quantized per token (quantize_per_token), then int8_mm; returns x's dtype.
  m.def("int8_dynamic_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias=None) -> Tensor");
  // W8A16: x [..., K] float times int8 weight [N, K] with scale [N] (per channel) or [N, G] (per group
  // of K / G inputs), dequantized in registers; fp32 accumulation, returns x's dtype.
  m.def("weight_int8_linear(Tensor x, Tensor weight, Tensor scale, Tensor? bias=None) -> Tensor");
  // Dynamic float8_e4m3fn, one scale (amax / 448) per row. x [..., K] -> q [..., K], scale fp32 [..., 1].
  m.def("quantize_fp8_per_row(Tensor x) -> (Tensor, Tensor)");
  // fp8 W8A8: x quantized per row (quantize_fp8_per_row) times an e4m3 weight [N, K] with per-row
  // scales, through torch._scaled_mm; K and N multiples of 16. Returns x's dtype.
  m.def("fp8_dynamic_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias=None) -> Tensor");

  // Sparse family (python/slimops/reference/sparse.py). Weights are [N, K] as in nn.Linear.
  // y = x (W ⊙ M)^T + b with a bool mask [N, K]; fp32 accumulation, returns x's dtype.
  m.def("masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias=None) -> Tensor");
  // Backward of masked_linear: grad_x = grad (W ⊙ M); grad_W = (grad^T x) ⊙ M over all leading dims.
  m.def("masked_linear_grad_input(Tensor grad, Tensor weight, Tensor mask) -> Tensor");
  m.def("masked_linear_grad_weight(Tensor grad, Tensor x, Tensor mask) -> Tensor");
  // BSR of the kept block_n x block_k tiles: (values [nnz, block_n, block_k], row_ptr int32, col_idx int32).
  m.def("block_sparse_pack(Tensor weight, Tensor? mask, int block_n, int block_k) -> (Tensor, Tensor, Tensor)");
  // y = x W^T + b for a packed weight, skipping the tiles that are not stored.
  m.def("block_sparse_linear(Tensor x, Tensor values, Tensor row_ptr, Tensor col_idx, Tensor? bias=None) -> Tensor");
  // 2:4: (values [N, K/2], meta uint8 [N, K/8]: 2-bit positions of the kept entries, 4 per byte, low bits first).
  m.def("sparse24_compress(Tensor weight) -> (Tensor, Tensor)");
  // y = x W^T + b for a compressed 2:4 weight (sparse tensor cores on GPU).
  m.def("sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias=None) -> Tensor");

  // sum(|x|^p) over every element of every tensor (max|x| for p = inf) in fp32, then the p-th root
  // unless root=False: a 0-d fp32 tensor. Mixed shapes and dtypes, one device.
  m.def("multi_tensor_norm(Tensor[] tensors, float norm_type, bool root=True) -> Tensor");
  // In place: every tensor *= min(1, max_norm / (total_norm + 1e-6)), the coefficient computed on the device.
  m.def("multi_tensor_scale_(Tensor(a!)[] tensors, Tensor total_norm, float max_norm) -> ()");
  // Norm, then scale, in at most two launches; returns the fp32 norm. With inv_scale, grads are unscaled
  // in the same passes and found_inf is set to 1 if any unscaled element is non-finite (GradScaler).
  m.def(
      "clip_grad_norm_fused_(Tensor(a!)[] grads, float max_norm, float norm_type, Tensor? inv_scale=None, "
      "Tensor(b!)? found_inf=None) -> Tensor");
}

namespace {

std::vector<std::string> cuda_archs() {
  std::vector<std::string> out;
  std::string csv = SLIMOPS_CUDA_ARCHS;
  size_t start = 0;
  while (start < csv.size()) {
    size_t end = csv.find(',', start);
    if (end == std::string::npos) end = csv.size();
    out.push_back("sm_" + csv.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "slimops compiled backend: op schemas, CPU kernels and (when built) CUDA kernels";
#ifdef SLIMOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = cuda_archs();
  m.attr("compiler") = std::string(__VERSION__);


  // Backend choice settings, driven by python/slimops/backend.py. Backends are
  // ints: -1 unset (use the process default), 0 auto (the rules), 1 cuda, 2 triton.
  using slimops::GpuBackend;
  m.def("_set_default_backend", [](int b) { slimops::set_default_backend(static_cast<GpuBackend>(b)); });
  m.def("_thread_backend", [] { return static_cast<int>(slimops::thread_backend()); });
  m.def("_set_thread_backend", [](int b) { slimops::set_thread_backend(static_cast<GpuBackend>(b)); });
  m.def("_set_triton_min_size", [](const std::string& op, int64_t n) { slimops::op_backend(op).triton_min_size = n; });
  m.def("_set_triton_impl", [](const std::string& op, pybind11::object fn) {
    PyObject* ref = nullptr;
    if (!fn.is_none()) ref = fn.inc_ref().ptr();
    Py_XDECREF(slimops::op_backend(op).triton.exchange(ref));  // the GIL is held here
  });
  m.def("_choose", [](const std::string& op, int64_t size, bool have_cuda) {
    return static_cast<int>(slimops::choose(slimops::op_backend(op), size, have_cuda));
  });
}
