// Launchers of the decode GEMV kernel family (decode_gemv.cuh): the sweep's entry
// (slimops._C._decode_gemv: any format and variant) and the host functions of the ops that
// may route to it once the H200 sweep (bench/decode_sweep.py, run by bench/gpu_check.sh) has
// measured it. Every instantiation is listed by decode_gemv_plan.h's SLIMOPS_DECODE_SHAPES; each
// format's kernels are compiled in their own file (decode_gemv_<format>.cu).
#include "cuda/decode_gemv_launch.cuh"

namespace slimops {

namespace {

using namespace decode;

// The variant the op-table entries use until the sweep picks per shape: 4 rows x 4 warps, 2
// chunks in flight, no split (the smallest shared memory that keeps 4 x 2 loads in flight).
constexpr int kDefaultVariant = 1 * kNumSplits + 0;

at::Tensor launch(DecodeCall& c) {
  at::Tensor out;
  dispatch_int(c.format, std::make_integer_sequence<int, kNumFormats>{},
               [&](auto f) { out = launch_format<decltype(f)::value>(c); });
  return out;
}

}  // namespace

at::Tensor decode_gemv_cuda(int64_t format, int64_t variant, const at::Tensor& x, const at::Tensor& qweight,
                            const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                            const std::optional<at::Tensor>& codebook, const std::optional<at::Tensor>& bias,
                            int64_t group_size) {
  DecodeCall c = prepare_decode_gemv(format, variant, x, qweight, scale, zero_point, codebook, bias, group_size);
  return launch(c);
}

at::Tensor weight_int4_linear_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                   const std::optional<at::Tensor>& zero_point, int64_t group_size,
                                   const std::optional<at::Tensor>& bias) {
  // validated (validate_weight_int4_linear, by the op table); float32 x is not a decode input.
  SLIMOPS_CHECK(x.scalar_type() != at::kFloat, "weight_int4_linear",
                "the CUDA C++ decode kernel takes float16 or bfloat16 x; float32 runs on the Triton backend");
  return decode_gemv_cuda(zero_point.has_value() ? kInt4Asym : kInt4Sym, kDefaultVariant, x, qweight, scale,
                          zero_point, std::nullopt, bias, group_size);
}

at::Tensor weight_codebook4_linear_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& codebook,
                                        const at::Tensor& scale, int64_t group_size,
                                        const std::optional<at::Tensor>& bias) {
  return decode_gemv_cuda(kCodebook4, kDefaultVariant, x, qweight, scale, std::nullopt, codebook, bias, group_size);
}

at::Tensor fp8_weight_only_linear_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                       const std::optional<at::Tensor>& bias) {
  return decode_gemv_cuda(kFp8Channel, kDefaultVariant, x, qweight, scale, std::nullopt, std::nullopt, bias,
                          x.size(-1));
}

}  // namespace slimops
