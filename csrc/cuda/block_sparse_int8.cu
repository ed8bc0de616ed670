// Block-sparse int8 weight-only linear for decode-sized batches (M <= 16 per launch row):
// CUDA kernel and its launcher. NOTE: never run yet (no GPU in the session that wrote it);
// the op table keeps Triton the default (csrc/ops.cpp) until the H200 sweep
// (bench/block_sparse_int8_sweep.py, from bench/gpu_check.sh) says otherwise.
//
// Semantics are python/slimops/reference/block_sparse_int8.py:
//   out[m, r*BN + i] = scale[r*BN + i] * sum_{t in block row r} sum_j x[m, col_idx[t]*BK + j] * values[t, i, j]
//                      + bias[r*BN + i]
// products and sums in fp32, bias added in fp32, one rounding to x's dtype.
//
// At decode sizes the op streams the stored int8 tiles (a quarter of the fp32 bytes of the same
// tiles, and only the kept ones). One CTA owns one block row r and MT rows of x (grid.y walks the
// chunks of MT rows, so any M works; the op's rule sends M <= 16 here). Within the CTA:
//   * lanes along a tile row: each thread reads 16 consecutive int8 of a tile row with one 128-bit
//     load (BK / 16 threads per row, 32 * 16 / BK rows per warp step), converts them in registers;
//   * ROWS tile rows per thread (template): the x slice a thread needs (16 inputs of each of the MT
//     rows) is loaded once per tile and reused by its ROWS weight rows, and the ROWS 128-bit weight
//     loads are issued together (bytes in flight);
//   * WARPS warps split the block row's tiles (split-K across warps: warp w takes tiles w, w + WARPS, ..);
//     partial sums meet in shared memory ([MT][BN] fp32, atomicAdd), then the scale (once per
//     output), bias and one rounding.
// x is read from global memory through the read-only path: every CTA reads the same few KB, which
// stay in L1/L2; the tiles are streamed with ld.global.nc.L1::no_allocate so they do not evict it.
//
// Tunables (template parameters, compiled as the list kConfigs below): WARPS (warps per CTA) and
// ROWS (tile rows per thread per pass). SLIMOPS_BSI8_CUDA_CONFIG=<index> (read per call) picks one
// for the sweep; unset: kDefaultConfig. The H200 sweep decides the default.
//
// Malformed index arrays cannot read out of bounds (the host does not read them back: that would
// cost a device sync per call): row_ptr is clamped to [0, nnz], and a tile whose col_idx is outside
// [0, K / BK) is skipped, as in the Triton kernel (kernels/block_sparse.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>

#include "cuda/common.cuh"
#include "sparse.h"

namespace slimops {
namespace {

constexpr int kLoadBytes = 16;   // one 128-bit load: 16 int8 weights
constexpr int kMaxRowsX = 16;    // rows of x per CTA at most (the decode kernel's M)
constexpr int kMaxBlockN = 128;  // the format's largest tile height (csrc/sparse.cpp)

struct Problem {
  const void* x;       // [M, K] x's dtype, contiguous, 16-byte aligned
  const int8_t* v;     // [nnz, BN, BK] contiguous, 16-byte aligned
  const int32_t* row_ptr;
  const int32_t* col_idx;
  const float* scale;  // [N] fp32, contiguous
  const void* bias;    // [N] float or nullptr
  DtypeCode bias_dtype;
  void* out;           // [M, N] x's dtype, contiguous
  int64_t M, N, K, nnz;
  int bn;
};

__device__ __forceinline__ int4 load_stream(const int8_t* p) {
  int4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// 16 consecutive x values of row m (16-byte aligned: K and the offset are multiples of 16 elements).
template <typename E>
__device__ __forceinline__ void load_x16(const typename E::Bits* x, float (&out)[16]) {
  if constexpr (sizeof(typename E::Bits) == 4) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(x) + q);
      out[4 * q] = v.x;
      out[4 * q + 1] = v.y;
      out[4 * q + 2] = v.z;
      out[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(x) + q);
      E::unpack2(v.x, out[8 * q], out[8 * q + 1]);
      E::unpack2(v.y, out[8 * q + 2], out[8 * q + 3]);
      E::unpack2(v.z, out[8 * q + 4], out[8 * q + 5]);
      E::unpack2(v.w, out[8 * q + 6], out[8 * q + 7]);
    }
  }
}

// sum_j x[j] * w[j] over the 16 int8 of one load.
__device__ __forceinline__ float dot16(const int4 w, const float (&x)[16]) {
  const int words[4] = {w.x, w.y, w.z, w.w};
  float acc = 0.f;
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc = fmaf(x[4 * q + b], static_cast<float>(static_cast<int8_t>(words[q] >> (8 * b))), acc);
  return acc;
}

__device__ __forceinline__ float load_float(const void* p, DtypeCode code, int64_t i) {
  if (code == kF16) return __half2float(static_cast<const __half*>(p)[i]);
  if (code == kBF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

// grid (N / BN, ceil(M / MT)), block WARPS * 32 threads.
template <typename E, int BK, int MT, int WARPS, int ROWS>
__global__ void __launch_bounds__(WARPS * 32) bsi8_decode_kernel(const Problem p) {
  constexpr int kThreadsPerRow = BK / kLoadBytes;
  constexpr int kRowsPerStep = 32 / kThreadsPerRow;  // tile rows one warp covers per load step
  constexpr int kRowsPerPass = kRowsPerStep * ROWS;  // tile rows a warp covers per pass
  __shared__ float partial[MT][kMaxBlockN];

  const int r = blockIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_in_step = lane / kThreadsPerRow, k_off = (lane % kThreadsPerRow) * kLoadBytes;
  const int bn = p.bn;

  for (int i = threadIdx.x; i < MT * kMaxBlockN; i += WARPS * 32) (&partial[0][0])[i] = 0.f;
  __syncthreads();

  const int64_t start = min(max(static_cast<int64_t>(p.row_ptr[r]), int64_t{0}), p.nnz);
  const int64_t end = min(max(static_cast<int64_t>(p.row_ptr[r + 1]), start), p.nnz);
  const int64_t col_tiles = p.K / BK;
  const auto* x = static_cast<const typename E::Bits*>(p.x);
  const int64_t tile_bytes = static_cast<int64_t>(bn) * BK;

  for (int pass = 0; pass < bn; pass += kRowsPerPass) {
    float acc[MT][ROWS];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < ROWS; ++j) acc[m][j] = 0.f;

    for (int64_t t = start + warp; t < end; t += WARPS) {
      const int32_t col = p.col_idx[t];
      if (col < 0 || col >= col_tiles) continue;  // malformed: skipped, never read out of bounds
      const int8_t* tile = p.v + t * tile_bytes + k_off;
      int4 w[ROWS];
#pragma unroll
      for (int j = 0; j < ROWS; ++j) {
        const int row = pass + j * kRowsPerStep + row_in_step;
        w[j] = row < bn ? load_stream(tile + static_cast<int64_t>(row) * BK) : make_int4(0, 0, 0, 0);
      }
      const int64_t xk = static_cast<int64_t>(col) * BK + k_off;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m0 + m >= p.M) break;
        float xv[16];
        load_x16<E>(x + (m0 + m) * p.K + xk, xv);
#pragma unroll
        for (int j = 0; j < ROWS; ++j) acc[m][j] += dot16(w[j], xv);
      }
    }
    // The kThreadsPerRow lanes of a tile row hold parts of one dot: shuffle-reduce, then one lane adds it.
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < ROWS; ++j) {
        float v = acc[m][j];
#pragma unroll
        for (int off = kThreadsPerRow / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
        const int row = pass + j * kRowsPerStep + row_in_step;
        if (lane % kThreadsPerRow == 0 && row < bn) atomicAdd(&partial[m][row], v);
      }
  }
  __syncthreads();

  auto* out = static_cast<typename E::Bits*>(p.out);
  for (int i = threadIdx.x; i < MT * bn; i += WARPS * 32) {
    const int m = i / bn, row = i % bn;
    if (m0 + m >= p.M) continue;
    const int64_t n = static_cast<int64_t>(r) * bn + row;
    float v = partial[m][row] * p.scale[n];
    if (p.bias != nullptr) v += load_float(p.bias, p.bias_dtype, n);
    out[(m0 + m) * p.N + n] = E::from_float(v);
  }
}

// The (WARPS, ROWS) pairs compiled for every BK, MT and dtype: what the H200 sweep chooses among.
struct Config {
  int warps, rows;
};
constexpr Config kConfigs[] = {{4, 2}, {8, 2}, {4, 4}};
constexpr int kNumConfigs = sizeof(kConfigs) / sizeof(kConfigs[0]);
constexpr int kDefaultConfig = 0;  // unmeasured: the H200 sweep decides

int chosen_config() {
  const char* env = std::getenv("SLIMOPS_BSI8_CUDA_CONFIG");
  if (env == nullptr || env[0] == '\0') return kDefaultConfig;
  char* end = nullptr;
  const long i = std::strtol(env, &end, 10);
  SLIMOPS_CHECK(*end == '\0' && i >= 0 && i < kNumConfigs, "block_sparse_int8_linear",
                "SLIMOPS_BSI8_CUDA_CONFIG must be an index in [0, ", kNumConfigs, "), got '", env, "'");
  return static_cast<int>(i);
}

template <typename E, int BK, int MT, int C>
void launch_config(const Problem& p, cudaStream_t stream) {
  constexpr Config c = kConfigs[C];
  const dim3 grid(static_cast<unsigned>(p.N / p.bn), static_cast<unsigned>(ceil_div(p.M, MT)));
  bsi8_decode_kernel<E, BK, MT, c.warps, c.rows><<<grid, c.warps * 32, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename E, int BK, int MT>
void launch_mt(const Problem& p, int config, cudaStream_t stream) {
  switch (config) {
    case 0: return launch_config<E, BK, MT, 0>(p, stream);
    case 1: return launch_config<E, BK, MT, 1>(p, stream);
    default: return launch_config<E, BK, MT, 2>(p, stream);
  }
}

template <typename E, int BK>
void launch_bk(const Problem& p, int config, cudaStream_t stream) {
  // The smallest compiled MT covering M (up to 16); grid.y walks chunks of 16 above.
  if (p.M <= 1) return launch_mt<E, BK, 1>(p, config, stream);
  if (p.M <= 4) return launch_mt<E, BK, 4>(p, config, stream);
  if (p.M <= 8) return launch_mt<E, BK, 8>(p, config, stream);
  return launch_mt<E, BK, kMaxRowsX>(p, config, stream);
}

template <typename E>
void launch(const Problem& p, int bk, int config, cudaStream_t stream) {
  switch (bk) {
    case 16: return launch_bk<E, 16>(p, config, stream);
    case 32: return launch_bk<E, 32>(p, config, stream);
    case 64: return launch_bk<E, 64>(p, config, stream);
    default: return launch_bk<E, 128>(p, config, stream);  // validated: 16, 32, 64 or 128
  }
}

}  // namespace

at::Tensor block_sparse_int8_linear_cuda(const at::Tensor& x,                     // [..., K] float
                                         const at::Tensor& values,                // [nnz, BN, BK] int8
                                         const at::Tensor& row_ptr,               // [N / BN + 1] int32
                                         const at::Tensor& col_idx,               // [nnz] int32
                                         const at::Tensor& scale,                 // [N] fp32
                                         const std::optional<at::Tensor>& bias) {  // [N] float
  // validated (validate_block_sparse_int8_linear, by the op table); index contents are clamped in the kernel
  constexpr const char* op = "block_sparse_int8_linear";
  const int64_t bn = values.size(1), bk = values.size(2);
  const MatmulGeometry geo = linear_geometry(x, (row_ptr.size(0) - 1) * bn);
  check_cuda(x, op, "x");
  check_cuda(values, op, "values");
  const c10::cuda::CUDAGuard guard(x.device());
  const int config = chosen_config();

  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = geo.n;
  at::Tensor out = at::empty(out_shape, x.options());  // [..., N] contiguous, x's dtype
  if (geo.m == 0 || geo.n == 0) return out;
  SLIMOPS_CHECK(geo.n / bn <= std::numeric_limits<int32_t>::max() && ceil_div(geo.m, kMaxRowsX) <= kMaxGridY, op,
                "too large for one launch: N = ", geo.n, ", M = ", geo.m);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Contiguous, 16-byte aligned copies only where the caller's tensors are not (small, or once per call).
  auto dense16 = [](const at::Tensor& t) {
    if (t.is_contiguous() && aligned(t.const_data_ptr(), 16)) return t;
    at::Tensor copy = at::empty(t.sizes(), t.options());
    return copy.copy_(t);
  };
  const at::Tensor x2 = dense16(x.reshape({geo.m, geo.k}));
  const at::Tensor v = dense16(values);
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous(), s = scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();

  Problem p;
  p.x = x2.const_data_ptr();
  p.v = v.const_data_ptr<int8_t>();
  p.row_ptr = rp.const_data_ptr<int32_t>();
  p.col_idx = ci.const_data_ptr<int32_t>();
  p.scale = s.const_data_ptr<float>();
  p.bias = b.defined() ? b.const_data_ptr() : nullptr;
  p.bias_dtype = b.defined() ? dtype_code(b.scalar_type()) : kF32;
  p.out = out.mutable_data_ptr();
  p.M = geo.m;
  p.N = geo.n;
  p.K = geo.k;
  p.nnz = values.size(0);
  p.bn = static_cast<int>(bn);

  switch (x.scalar_type()) {
    case at::kHalf: launch<F16>(p, static_cast<int>(bk), config, stream); break;
    case at::kBFloat16: launch<BF16>(p, static_cast<int>(bk), config, stream); break;
    default: launch<F32>(p, static_cast<int>(bk), config, stream); break;  // validated: float32
  }
  return out;
}

}  // namespace slimops
