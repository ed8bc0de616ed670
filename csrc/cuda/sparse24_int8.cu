// 2:4 + int8 weight-only decode GEMV on CUDA cores: sparse24_int8_linear for M <= 16 per launch.
//
// Semantics: python/slimops/reference/sparse24_int8.py:
//   out[m, n] = scale[n] * sum_c (v[n, 2c] x[m, 4c + p0] + v[n, 2c + 1] x[m, 4c + p1]) + bias[n]
// fp32 accumulation, the scale once per output, bias in fp32, one rounding to x's dtype.
//
// NOTE: never run (no GPU in the session that wrote it). The op table registers it, but the
// layer (Sparse24Int8Linear) routes CUDA inputs to dequantize + cuBLAS (nn/routing.py) until the
// H200 run (bench/gpu_check.sh) measures this kernel against that path.
//
// Why CUDA cores and not mma.sp: at decode sizes the op is bound by the weight bytes (0.625 byte
// per weight), and TRT-LLM's weight-only GEMVs use FMA up to M = 15 (KERNELS.md section 1). The
// Sparse-Marlin route (int8 -> fp16 in registers feeding csrc/cuda/sparse24.cu's mma.sp tiles)
// is the next step for larger M; it is not written.
//
// Work split: a block of kThreads (8 warps) owns kRowsPerWarp weight rows per warp; x is staged
// through shared memory as fp32, kChunk inputs at a time for the MT rows of the launch (32 KB).
// Per 32-input step a lane makes one 128-bit load of 16 int8 values and one 32-bit load of meta
// (the 8 groups' positions), converts the values to fp32 and gathers x from shared memory by
// position: x_s[m][32 s + 4 (l / 2) + p(l)]. Lanes take steps lane, lane + 32, ... of the chunk,
// keep MT partial sums per row, and reduce them over the warp once at the end (shuffles).
// Rows past N are never read or written; inputs past K are never staged (K is a multiple of 8;
// a step that K ends inside reads only its groups below K / 4).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/common.cuh"
#include "sparse24.h"

namespace slimops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 2;                         // 2 rows per warp: 2 independent 16-byte loads in flight
constexpr int kSmemFloats = 8192;                        // 32 KB of staged x: kChunk(MT) * MT
constexpr int kMaxRowsPerLaunch = 16;                    // M per launch; larger M runs in slices

template <int MT>
constexpr int chunk_inputs() { return kSmemFloats / MT; }  // a multiple of 32 for MT | 16

struct Problem {
  const void* x;        // [M, K] contiguous, x's dtype
  const int8_t* v;      // [N, K/2] contiguous
  const uint8_t* meta;  // [N, K/8] contiguous
  const float* scale;   // [N]
  const float* bias;    // [N] fp32 or nullptr
  void* out;            // [M, N] contiguous, x's dtype
  int64_t M, N, K;
  bool vec16;           // rows of values start at 16-byte boundaries (K % 32 == 0 and an aligned base)
};

template <typename E>
__device__ __forceinline__ float load_x(const void* x, int64_t i) {
  return E::to_float(static_cast<const typename E::Bits*>(x)[i]);
}

template <typename E, int MT>
__global__ void __launch_bounds__(kThreads, 2) sp24_int8_gemv_kernel(Problem p) {
  constexpr int kChunk = chunk_inputs<MT>();
  __shared__ float xs[MT][kChunk];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  const int64_t lv = p.K / 2, lm = p.K / 8;
  float acc[kRowsPerWarp][MT];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;

  for (int64_t k0 = 0; k0 < p.K; k0 += kChunk) {
    const int kc = static_cast<int>(p.K - k0 < kChunk ? p.K - k0 : kChunk);  // a multiple of 8
    __syncthreads();  // the previous chunk is consumed
    for (int i = threadIdx.x; i < MT * kChunk; i += kThreads) {
      const int m = i / kChunk, k = i % kChunk;
      xs[m][k] = (m < p.M && k < kc) ? load_x<E>(p.x, m * p.K + k0 + k) : 0.f;
    }
    __syncthreads();
    const int steps = (kc + 31) / 32;
    for (int s = lane; s < steps; s += 32) {
      const int64_t kin = k0 + 32 * static_cast<int64_t>(s);  // first input of the step
      const int groups = static_cast<int>((p.K - kin) / 4 < 8 ? (p.K - kin) / 4 : 8);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int64_t n = row0 + r;
        if (n >= p.N) continue;
        // 16 int8 values as 4 words (byte l of the 16 in byte l % 4 of word l / 4), and 8 groups' positions.
        uint32_t vw[4] = {0u, 0u, 0u, 0u};
        uint32_t word = 0u;
        const int8_t* vrow = p.v + n * lv + kin / 2;
        const uint8_t* mrow = p.meta + n * lm + kin / 8;
        if (p.vec16 && groups == 8) {
          const uint4 raw = __ldg(reinterpret_cast<const uint4*>(vrow));
          vw[0] = raw.x, vw[1] = raw.y, vw[2] = raw.z, vw[3] = raw.w;
          word = __ldg(reinterpret_cast<const unsigned int*>(mrow));
        } else {
#pragma unroll
          for (int b = 0; b < 16; ++b)
            if (b < 2 * groups) vw[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(vrow[b])) << (8 * (b % 4));
#pragma unroll
          for (int b = 0; b < 4; ++b)
            if (b < groups / 2) word |= static_cast<uint32_t>(mrow[b]) << (8 * b);
        }
#pragma unroll
        for (int l = 0; l < 16; ++l) {
          if (l / 2 >= groups) break;
          const int idx = 32 * s + 4 * (l / 2) + ((word >> (2 * l)) & 3);
          const float w = static_cast<float>(static_cast<int8_t>(vw[l / 4] >> (8 * (l % 4))));
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[r][m] = fmaf(w, xs[m][idx], acc[r][m]);
        }
      }
    }
  }
  // Warp sums, then lane 0 writes scale * sum + bias for each (row, token).
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t n = row0 + r;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && n < p.N && m < p.M) {
        const float y = v * p.scale[n] + (p.bias != nullptr ? p.bias[n] : 0.f);
        static_cast<typename E::Bits*>(p.out)[m * p.N + n] = E::from_float(y);
      }
    }
  }
}

template <typename E, int MT>
void launch(const Problem& p, cudaStream_t stream) {
  const int64_t blocks = ceil_div(p.N, static_cast<int64_t>(kWarps) * kRowsPerWarp);
  sp24_int8_gemv_kernel<E, MT><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// MT: the smallest of 1, 2, 4, 8, 16 that holds the slice's rows.
template <typename E>
void run(const Problem& p, cudaStream_t stream) {
  if (p.M <= 1) return launch<E, 1>(p, stream);
  if (p.M <= 2) return launch<E, 2>(p, stream);
  if (p.M <= 4) return launch<E, 4>(p, stream);
  if (p.M <= 8) return launch<E, 8>(p, stream);
  launch<E, 16>(p, stream);
}

}  // namespace

at::Tensor sparse24_int8_linear_cuda(const at::Tensor& x,                     // [..., K] float
                                     const at::Tensor& values,                // [N, K/2] int8
                                     const at::Tensor& meta,                  // [N, K/8] uint8
                                     const at::Tensor& scale,                 // [N] fp32
                                     const std::optional<at::Tensor>& bias) {  // [N] float
  // validated (validate_sparse24_int8_linear, by the op table)
  const Sparse24Geometry geo{leading_rows(x), values.size(0), x.size(-1)};
  constexpr const char* op = "sparse24_int8_linear";
  check_cuda(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = geo.n;
  at::Tensor out = at::empty({geo.m, geo.n}, x.options());
  if (geo.m == 0 || geo.n == 0) return out.reshape(out_shape);
  SLIMOPS_CHECK(ceil_div(geo.n, kWarps * kRowsPerWarp) <= std::numeric_limits<int32_t>::max(), op,
                "the weight has too many rows for one launch: N = ", geo.n);
  const at::Tensor x2 = x.reshape({geo.m, geo.k}).contiguous();
  const at::Tensor v2 = values.contiguous();
  const at::Tensor m2 = meta.contiguous();
  const at::Tensor s2 = scale.contiguous();
  // fp32 bias: one small conversion, so the kernel's epilogue reads one dtype.
  const at::Tensor b2 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  Problem p;
  p.v = v2.const_data_ptr<int8_t>();
  p.meta = m2.const_data_ptr<uint8_t>();
  p.scale = s2.const_data_ptr<float>();
  p.bias = b2.defined() ? b2.const_data_ptr<float>() : nullptr;
  p.N = geo.n;
  p.K = geo.k;
  p.vec16 = geo.k % 32 == 0 && aligned(p.v, 16) && aligned(p.meta, 4);
  const int64_t elem = x2.element_size();
  for (int64_t m0 = 0; m0 < geo.m; m0 += kMaxRowsPerLaunch) {
    p.M = std::min<int64_t>(kMaxRowsPerLaunch, geo.m - m0);
    p.x = static_cast<const char*>(x2.const_data_ptr()) + m0 * geo.k * elem;
    p.out = static_cast<char*>(out.mutable_data_ptr()) + m0 * geo.n * elem;
    if (x.scalar_type() == at::kHalf) {
      run<F16>(p, stream);
    } else if (x.scalar_type() == at::kBFloat16) {
      run<BF16>(p, stream);
    } else {
      run<F32>(p, stream);
    }
  }
  return out.reshape(out_shape);
}

}  // namespace slimops
