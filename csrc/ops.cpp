// Every slimops op schema, defined once. Backends add implementations:
//   csrc/cpu/*.cpp      TORCH_LIBRARY_IMPL(slimops, CPU, m)
//   CUDA dispatch key   registered from Python (python/slimops/ops/), which picks
//                       CUDA C++ (exposed below through the module shell) or
//                       Triton (kernels/) per shape; see python/slimops/backend.py.
//   fake (meta) impls   python/slimops/ops/, beside the typed wrappers.
//
// pybind11 (torch's bundled copy, so at::Tensor converts) is only the module
// shell: build information and the raw CUDA launchers. Ops go through the dispatcher.
#include <torch/extension.h>
#include <torch/library.h>

#include "quantize.h"

TORCH_LIBRARY(slimops, m) {
  // Dynamic symmetric int8, one scale per row. x [..., K] float -> q int8 [..., K], scale fp32 [..., 1].
  m.def("quantize_per_token(Tensor x) -> (Tensor, Tensor)");
  // int8 with one scale (+ zero point) per slice along `axis`; scale fp32 / zero_point int32 keep x's rank.
  m.def("quantize_per_channel(Tensor x, int axis, bool symmetric=True) -> (Tensor, Tensor, Tensor)");
  // ((q - zero_point) * scale) in fp32, rounded once to out_dtype (float32, float16 or bfloat16).
  m.def("dequantize(Tensor q, Tensor scale, Tensor? zero_point, ScalarType out_dtype) -> Tensor");
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

#ifdef SLIMOPS_WITH_CUDA
  // Raw CUDA launchers. Users reach them through torch.ops.slimops.*; the
  // Python CUDA-key implementation calls these when it picks the CUDA backend.
  m.def("quantize_per_token_cuda", &slimops::quantize_per_token_cuda);
  m.def("quantize_per_channel_cuda", &slimops::quantize_per_channel_cuda);
  m.def("dequantize_cuda", &slimops::dequantize_cuda);
#endif
}
