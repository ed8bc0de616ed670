// Launchers of the decode GEMV kernel family (decode_gemv.cuh): the sweep's entry
// (slimops._C._decode_gemv: any format and variant) and the host functions of the ops that
// may route to it once the H200 sweep (bench/decode_sweep.py, run by bench/gpu_check.sh) has
// measured it. Every instantiation is listed by decode_gemv_plan.h's SLIMOPS_DECODE_SHAPES.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/common.cuh"
#include "cuda/decode_gemv.cuh"
#include "decode_gemv.h"

namespace slimops {

namespace {

using namespace decode;

// The variant the op-table entries use until the sweep picks per shape: 4 rows x 4 warps, 2
// chunks in flight, no split (the smallest shared memory that keeps 4 x 2 loads in flight).
constexpr int kDefaultVariant = 1 * kNumSplits + 0;

at::Tensor launch(DecodeCall& c) {
  constexpr const char* op = "decode_gemv";
  check_cuda(c.x, op, "x");
  check_cuda(c.w, op, "qweight");
  const c10::cuda::CUDAGuard guard(c.x.device());
  Problem& p = c.p;
  if (p.M == 0 || p.N == 0) return c.out.reshape(c.out_shape);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ws;
  if (p.ksplit > 1) {
    ws = at::empty({p.ksplit, p.M, p.N}, c.x.options().dtype(at::kFloat));
    p.ws = ws.mutable_data_ptr<float>();
  }
  int device = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  dispatch_decode(c.format, c.xtype, c.shape, c.tokens, [&](auto f, auto xt, auto s, auto mt) {
    constexpr int F = decltype(f)::value, XT = decltype(xt)::value, MT = decltype(mt)::value;
    constexpr Shape sh = kShapes[decltype(s)::value];
    auto kernel = decode_gemv_kernel<F, XT, sh.rows, sh.warps, sh.unroll, MT>;
    const int64_t smem = smem_bytes(p, kChunkInputs<F>, sh.rows, sh.warps, MT);
    SLIMOPS_CHECK(smem <= smem_optin, op, "this variant stages ", smem, " bytes of x in shared memory, more than the ",
                  smem_optin, " a block may have: use a K split (M = ", p.M, ", K = ", p.K, ")");
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const int64_t gx = ceil_div(p.N, sh.rows), chunks = ceil_div(p.M, MT);
    SLIMOPS_CHECK(gx <= std::numeric_limits<int32_t>::max(), op, "qweight has too many rows: N = ", p.N);
    for (int64_t c0 = 0; c0 < chunks; c0 += kMaxGridY) {
      const dim3 grid(unsigned(gx), unsigned(std::min(chunks - c0, kMaxGridY)), unsigned(p.ksplit));
      kernel<<<grid, sh.warps * 32, smem, stream>>>(p, c0 * MT);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (p.ksplit > 1) {
      decode_reduce_kernel<XT><<<unsigned(ceil_div(p.M * p.N, 256)), 256, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return c.out.reshape(c.out_shape);
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
