// Decode GEMV kernel family: out[M, N] = x[M, K] * W^T for M = 1..16 (grid.y walks larger M),
// x fp16/bf16, W in one of six weight formats, fp32 accumulation. NOT YET RUN ON A GPU: the
// plan and the format policies (csrc/decode_gemv_plan.h) are checked on the CPU by the host
// emulator (csrc/cpu/decode_gemv_emu.cpp, tests/ops/test_decode_gemv.py) for every variant and
// format; bench/decode_sweep.py times every variant on an H200 and decides which one (if any)
// becomes a default path. Until then no op picks these kernels by default.
//
// Byte budget. At M <= 16 the op streams the weight once: 11008 x 4096 is 45 MB in int8
// (10.6 us at the 4.27 TB/s copy bandwidth measured on the H200), 22.5 MB in int4. Saturating
// HBM needs about 3-4 MB in flight, ~25-30 KB per SM over 132 SMs (KERNELS.md §1): a CTA of
// WARPS * 32 threads with ROWS * UNROLL independent 16-byte loads per thread has
// WARPS * 32 * ROWS * UNROLL * 16 bytes in flight (4 warps x 4 rows x 2: 16 KB), and several
// CTAs per SM while their shared memory allows.
//
// Instruction budget. At full bandwidth an SM receives ~16 weight bytes per clock and issues
// 128 thread-instructions per clock: ~8 instructions per int8 weight, ~4 per int4 weight. The
// policies dequantize without I2F (PRMT into the mantissa of 2^23, one FADD: ~2 per int8 or
// int4 weight, ~4 for fp8, one LDS per codebook weight), and each weight then costs M FMAs
// plus the x conversions. So FMAs fit the budget up to M ~ 2-4 for int4 and ~4-6 for int8;
// beyond, this FMA kernel is instruction bound and the existing mma.sync kernel
// (csrc/cuda/weight_int8.cu, weight rows as the A operand) is the model to follow. An MMA
// policy for this family is not written yet (see the README's decode paragraph).
//
// Structure of one CTA (rows [n0, n0 + ROWS), tokens [m0, m0 + MT), K split bz):
//   1. stage x[m0 .. m0 + MT, split's K range] into shared memory once (16-bit, zero-padded
//      past K and M), and codebook rows (codebook4);
//   2. thread t takes 16-byte chunks t, t + T, ... of the split: UNROLL chunks per row loaded
//      with ld.global.nc.L1::no_allocate before the first is used, dequantized in registers,
//      dotted with the staged x (16-byte LDS), scaled once per chunk (a chunk never straddles a
//      scale group);
//   3. warp shuffle sum, then the warps' sums added in warp order through shared memory;
//   4. no split: + bias, one rounding to x's dtype. Split: fp32 partials into a workspace
//      [ksplit, M, N], then decode_reduce_kernel sums them in split order (deterministic; the
//      workspace comes from the caching allocator, so CUDA-graph capture works).
//
// What the sweep decides (per format, M and shape): rows per CTA and warps per CTA (bytes in
// flight against CTAs per SM), the K split (enough CTAs for 132 SMs at N = 4096, against the
// second pass), loads in flight. Staging all of a split's x costs MT * K / ksplit * 2 bytes of
// shared memory (352 KB for M = 16, K = 11008 unsplit: refused at launch, the sweep records it).
// NOTE (expected weak spot, to be confirmed by the sweep): every CTA re-reads its x slice from L2,
// MT * 2 bytes per k against ROWS (int8) or ROWS / 2 (int4) weight bytes per k, and stages it with
// 2-byte loads. At M = 1 that is noise; at M = 16 with 4 rows per CTA x traffic is 8x (int8) the
// weight's, so M >= 4 likely needs CTAs that keep x staged and loop over several row blocks
// (a persistent grid), 16-byte staging loads, and the MMA policy.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "decode_gemv_plan.h"

namespace slimops {
namespace decode {

template <int F, int XT, int ROWS, int WARPS, int U, int MT>
__global__ void __launch_bounds__(WARPS * 32, 1)
    decode_gemv_kernel(const Problem p, int64_t m_begin) {
  constexpr int T = WARPS * 32;
  constexpr int CW = kChunkInputs<F>;
  extern __shared__ __align__(16) unsigned char smem[];
  const Cta c = cta_plan(p, ROWS, MT, blockIdx.x, blockIdx.y, blockIdx.z, m_begin);
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem);
  float* cb = reinterpret_cast<float*>(smem + int64_t(MT) * p.chunks_per_split * CW * 2);
  float* red = cb + ROWS * 16;

  stage_cta<F, ROWS, MT>(p, c, xs, cb, threadIdx.x, T);
  __syncthreads();

  float acc[MT][ROWS];
  thread_partial<F, XT, ROWS, U, MT>(p, c, xs, cb, threadIdx.x, T, acc);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) red[(warp * MT + m) * ROWS + r] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x < MT * ROWS) finish_cta<XT, ROWS, WARPS, MT>(p, c, red, threadIdx.x);
}

template <int XT>
__global__ void __launch_bounds__(256) decode_reduce_kernel(const Problem p) {
  const int64_t i = int64_t(blockIdx.x) * 256 + threadIdx.x;
  if (i < p.M * p.N) reduce_splits<XT>(p, i);
}

}  // namespace decode
}  // namespace slimops
