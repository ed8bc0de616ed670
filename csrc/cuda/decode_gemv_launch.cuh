// The launcher of the decode GEMV kernel family for one weight format: every (x dtype, template
// shape, tokens per CTA) kernel of that format. Each format is instantiated in its own translation
// unit (decode_gemv_<format>.cu), so the 240 kernels compile in parallel: in one file, ptxas alone
// took most of the build (one process per architecture).
#pragma once

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "cuda/common.cuh"
#include "cuda/decode_gemv.cuh"
#include "decode_gemv.h"

namespace slimops {
namespace decode {

template <int F>
at::Tensor launch_format(DecodeCall& c) {
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
  dispatch_decode_variant(c.xtype, c.shape, c.tokens, [&](auto xt, auto s, auto mt) {
    constexpr int XT = decltype(xt)::value, MT = decltype(mt)::value;
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

// Defined by the translation unit of each format.
extern template at::Tensor launch_format<kInt8Channel>(DecodeCall&);
extern template at::Tensor launch_format<kInt8Group>(DecodeCall&);
extern template at::Tensor launch_format<kInt4Asym>(DecodeCall&);
extern template at::Tensor launch_format<kInt4Sym>(DecodeCall&);
extern template at::Tensor launch_format<kCodebook4>(DecodeCall&);
extern template at::Tensor launch_format<kFp8Channel>(DecodeCall&);

}  // namespace decode
}  // namespace slimops
