// The decode GEMV kernel family's work plan and weight-format policies, written once for the
// GPU and the CPU: csrc/cuda/decode_gemv.cuh runs this code on the device, and the emulator
// (csrc/cpu/decode_gemv_emu.cpp) runs the very same functions on the host, CTA by CTA and
// thread by thread, so the tests check every variant's index math and every format's
// dequantization against the float64 references before a GPU ever runs them.
//
// Plain C++ (no CUDA headers): the few primitives that differ between host and device (a
// 16-byte global load, a byte permute, fp16 conversion) are defined here under __CUDA_ARCH__,
// each with a host emulation that gives the same bits.
//
// Semantics (per format f, see Format): out[m, n] = sum_k x[m, k] * w_f[n, k] + bias[n], fp32
// accumulation, one rounding to x's dtype (fp16 or bf16).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SLIMOPS_HD __host__ __device__ __forceinline__
#else
#define SLIMOPS_HD inline
#endif

namespace slimops {
namespace decode {

// ---------------------------------------------------------------- formats

// One 16-byte weight chunk is the unit of every load; a format says how many inputs it holds
// and how to turn it into floats (before the per-group scale, which multiplies the chunk's
// partial dot product once).
enum Format : int {
  kInt8Channel = 0,  // int8 [N, K], scale [N, 1]: w = q * s[n]
  kInt8Group = 1,    // int8 [N, K], scale [N, K / group_size]: w = q * s[n, k / gs] (W8A16)
  kInt4Asym = 2,     // uint8 [N, ceil(K/32)*16] nibbles (reference/int4.py), w = (q - z[n, g]) * s[n, g]
  kInt4Sym = 3,      // the same without zero point: w = (q - 8) * s[n, g]
  kCodebook4 = 4,    // int4 nibbles, codebook fp32 [C, 16] (C = 1 or N): w = codebook[c][q] * s[n, g]
  kFp8Channel = 5,   // float8_e4m3fn [N, K], scale [N, 1]: w = e4m3(q) * s[n]
  kNumFormats = 6,
};

inline const char* format_name(int f) {
  switch (f) {
    case kInt8Channel: return "int8_channel";
    case kInt8Group: return "int8_group";
    case kInt4Asym: return "int4_asym";
    case kInt4Sym: return "int4_sym";
    case kCodebook4: return "codebook4";
    case kFp8Channel: return "fp8_channel";
    default: return "?";
  }
}

constexpr bool is_nibble_format(int f) { return f == kInt4Asym || f == kInt4Sym || f == kCodebook4; }

// Inputs per 16-byte chunk: 32 nibbles or 16 bytes.
template <int F>
constexpr int kChunkInputs = is_nibble_format(F) ? 32 : 16;

// ---------------------------------------------------------------- variants
//
// The template shapes (rows per CTA, warps per CTA, chunks in flight per row and thread),
// one X(...) each. The .cu instantiates exactly these, and the emulator too: a shape that
// is not here can be neither swept nor launched. The K split (1, 2, 4, 8) multiplies them
// into variants; the tokens per CTA (1, 2, 4, 8, 16) follow from M at launch.
#define SLIMOPS_DECODE_SHAPES(X) \
  X(2, 4, 4)                     \
  X(4, 4, 2)                     \
  X(4, 8, 1)                     \
  X(8, 4, 1)

struct Shape {
  int rows, warps, unroll;
};
constexpr Shape kShapes[] = {
#define SLIMOPS_DECODE_SHAPE_ENTRY(R, W, U) {R, W, U},
    SLIMOPS_DECODE_SHAPES(SLIMOPS_DECODE_SHAPE_ENTRY)
#undef SLIMOPS_DECODE_SHAPE_ENTRY
};
constexpr int kNumShapes = sizeof(kShapes) / sizeof(kShapes[0]);
constexpr int kSplits[] = {1, 2, 4, 8};
constexpr int kNumSplits = 4;
constexpr int kNumVariants = kNumShapes * kNumSplits;  // variant v: shape v / kNumSplits, split kSplits[v % kNumSplits]
constexpr int kMaxTokens = 16;                         // tokens per CTA at most; grid.y walks larger M

// Tokens per CTA for M rows: the smallest power of two >= M, at most 16.
inline int tokens_per_cta(int64_t m) {
  int t = 1;
  while (t < m && t < kMaxTokens) t *= 2;
  return t;
}

// ---------------------------------------------------------------- the problem

// Everything a launch needs. Tensors are in the kernels' layout (the host functions make them
// so): x rows of 16-bit bits with a row stride (element stride 1), the weight row-major with
// 16-byte aligned rows, fp32 scale / zero point / codebook / bias, contiguous.
struct Problem {
  const uint16_t* x;    // [M, K] fp16/bf16 bits, row stride x_stride
  int64_t x_stride;
  const uint8_t* w;     // [N, row_bytes]
  int64_t row_bytes;    // K (int8, fp8) or ceil(K / 32) * 16 (nibbles); a multiple of 16
  const float* scale;   // [N, groups]
  const float* zero;    // [N, groups] (kInt4Asym) or nullptr
  const float* codebook;  // [codebook_rows, 16] (kCodebook4) or nullptr
  int64_t codebook_rows;  // 1 (shared) or N (one per row)
  const float* bias;    // [N] or nullptr
  uint16_t* out;        // [M, N] contiguous, x's dtype
  float* ws;            // [ksplit, M, N] fp32 partial sums when ksplit > 1
  int64_t M, N, K, groups, group_size;
  int64_t chunks;             // ceil(K / chunk inputs): 16-byte chunks per weight row
  int64_t chunks_per_split;   // ceil(chunks / ksplit)
  int ksplit;
};

// What one CTA owns: rows [n0, n0 + ROWS), tokens [m0, m0 + MT), chunks [c0, c1) (its K split).
struct Cta {
  int64_t n0, m0, c0, c1;
  int split;
};

SLIMOPS_HD Cta cta_plan(const Problem& p, int rows, int tokens, int64_t bx, int64_t by, int bz, int64_t m_begin) {
  Cta c;
  c.n0 = bx * rows;
  c.m0 = m_begin + by * tokens;
  c.split = bz;
  c.c0 = int64_t(bz) * p.chunks_per_split;
  c.c1 = c.c0 + p.chunks_per_split < p.chunks ? c.c0 + p.chunks_per_split : p.chunks;
  if (c.c1 < c.c0) c.c1 = c.c0;  // a trailing split with no chunks writes zeros
  return c;
}

// Shared memory of one CTA, in bytes: x [MT][chunks_per_split * CW] 16-bit, then the
// codebooks of its rows [ROWS][16] fp32, then the warp partials [WARPS][MT][ROWS] fp32.
inline int64_t x_stage_elems(const Problem& p, int chunk_inputs) { return p.chunks_per_split * chunk_inputs; }
inline int64_t smem_bytes(const Problem& p, int chunk_inputs, int rows, int warps, int tokens) {
  const int64_t xs = int64_t(tokens) * x_stage_elems(p, chunk_inputs) * 2;  // a multiple of 32 bytes
  return xs + int64_t(rows) * 16 * 4 + int64_t(warps) * tokens * rows * 4;
}

// ---------------------------------------------------------------- primitives

SLIMOPS_HD float bits_to_float(uint32_t b) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, 4);
  return f;
#endif
}

// PRMT (byte permute, default mode): byte i of the result is byte sel_i of {b, a} (a bytes 0-3).
SLIMOPS_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#ifdef __CUDA_ARCH__
  return __byte_perm(a, b, sel);
#else
  const uint64_t v = (uint64_t(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

// 16 weight bytes that are read exactly once: not cached in L1 (x and the scales live there),
// and L2 fetches the 256-byte neighbourhood that the next lanes read.
SLIMOPS_HD void load_weight16(const uint8_t* p, uint32_t (&w)[4]) {
#ifdef __CUDA_ARCH__
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
               : "l"(p));
#else
  std::memcpy(w, p, 16);
#endif
}

// 8 staged activations (16 bytes of shared memory, 16-byte aligned) as 4 words.
SLIMOPS_HD void load_x8(const uint16_t* p, uint32_t (&v)[4]) {
#ifdef __CUDA_ARCH__
  const uint4 q = *reinterpret_cast<const uint4*>(p);
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
#else
  std::memcpy(v, p, 16);
#endif
}

enum XType : int { kXF16 = 0, kXBF16 = 1 };

// One 16-bit activation word pair (element 2i low) to floats; exact.
template <int XT>
SLIMOPS_HD void x_pair_to_floats(uint32_t w, float& lo, float& hi) {
  if constexpr (XT == kXBF16) {
    lo = bits_to_float(w << 16);
    hi = bits_to_float(w & 0xFFFF0000u);
  } else {
#ifdef __CUDA_ARCH__
    __half2 h;
    memcpy(&h, &w, 4);
    const float2 f = __half22float2(h);
    lo = f.x;
    hi = f.y;
#else
    lo = c10::detail::fp16_ieee_to_fp32_value(uint16_t(w & 0xFFFF));
    hi = c10::detail::fp16_ieee_to_fp32_value(uint16_t(w >> 16));
#endif
  }
}

// fp32 to the output's 16 bits, round to nearest even (NaN stays NaN).
template <int XT>
SLIMOPS_HD uint16_t float_to_x(float f) {
#ifdef __CUDA_ARCH__
  if constexpr (XT == kXBF16) return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  return __half_as_ushort(__float2half_rn(f));
#else
  if constexpr (XT == kXBF16) return c10::BFloat16(f).x;
  return c10::detail::fp16_ieee_from_fp32_value(f);
#endif
}

// ---------------------------------------------------------------- format policies
//
// dequant<F>(chunk, row, group) -> CW floats before the scale. Exact for every format: the
// integers go through the fp32 "magic number" 2^23 (PRMT puts the byte in the mantissa, one
// FADD removes 2^23), so there is no I2F (a quarter-rate instruction on Hopper) in the loop.

constexpr float kTwo23 = 8388608.0f;  // 2^23: bits 0x4B000000

struct RowParams {
  const float* codebook;  // this row's 16 entries (shared memory on the device), kCodebook4
  float zero;             // the group's zero point (kInt4Asym) or 8 (kInt4Sym)
};

// int8: byte j of word i is input 4i + j. u = b ^ 0x80 in [0, 255] sits in the mantissa of
// 2^23 + u; subtracting 2^23 + 128 leaves b exactly.
SLIMOPS_HD void dequant_int8(const uint32_t (&w)[4], float (&f)[16]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t u = w[i] ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 4; ++j) f[4 * i + j] = bits_to_float(byte_perm(u, 0x4B000000u, 0x7650 + j)) - (kTwo23 + 128.0f);
  }
}

// int4 nibbles (reference/int4.py): byte 4i + j (word i, byte j) holds input 4i + j (low
// nibble) and 16 + 4i + j (high nibble). q - zero, exact for an integer zero point.
SLIMOPS_HD void dequant_int4(const uint32_t (&w)[4], float zero, float (&f)[32]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t lo = w[i] & 0x0F0F0F0Fu;
    const uint32_t hi = (w[i] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[4 * i + j] = (bits_to_float(byte_perm(lo, 0x4B000000u, 0x7650 + j)) - kTwo23) - zero;
      f[16 + 4 * i + j] = (bits_to_float(byte_perm(hi, 0x4B000000u, 0x7650 + j)) - kTwo23) - zero;
    }
  }
}

// Codebook: the nibble indexes the row's 16 fp32 entries. On the device they sit in shared
// memory: a register table would need a run-time index (local memory) or a 15-select tree per
// weight; one LDS per weight is conflict-free, since a warp reads one row's table at a time
// (16 entries in 16 distinct banks, equal indices broadcast).
SLIMOPS_HD void dequant_codebook4(const uint32_t (&w)[4], const float* cb, float (&f)[32]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[4 * i + j] = cb[(w[i] >> (8 * j)) & 0xF];
      f[16 + 4 * i + j] = cb[(w[i] >> (8 * j + 4)) & 0xF];
    }
  }
}

// float8 e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits. Moved into fp32's fields
// (exponent bias 127) the bits read as the value times 2^-120, subnormals included; one FMUL
// by 2^120 restores it. 0x7F / 0xFF are NaN (e4m3fn has no infinity).
SLIMOPS_HD void dequant_fp8(const uint32_t (&w)[4], float (&f)[16]) {
  const float k2p120 = 1.329227995784916e+36f;  // 2^120
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t b = (w[i] >> (8 * j)) & 0xFF;
      const float v = bits_to_float(((b & 0x80u) << 24) | ((b & 0x7Fu) << 20)) * k2p120;
      f[4 * i + j] = (b & 0x7Fu) == 0x7Fu ? bits_to_float(0x7FC00000u) : v;
    }
  }
}

template <int F>
SLIMOPS_HD void dequant(const uint32_t (&w)[4], const RowParams& rp, float (&f)[kChunkInputs<F>]) {
  if constexpr (F == kInt8Channel || F == kInt8Group) {
    dequant_int8(w, f);
  } else if constexpr (F == kInt4Asym || F == kInt4Sym) {
    dequant_int4(w, rp.zero, f);
  } else if constexpr (F == kCodebook4) {
    dequant_codebook4(w, rp.codebook, f);
  } else {
    static_assert(F == kFp8Channel, "a format of the Format enum");
    dequant_fp8(w, f);
  }
}

// ---------------------------------------------------------------- one CTA, one thread

// Stages x[m0 .. m0 + MT, chunks c0 .. c0 + chunks_per_split] into xs (16-bit, zero past K,
// past M and past the split), and the ROWS codebooks into cb. Thread tid of T copies
// elements tid, tid + T, ... (coalesced along k).
template <int F, int ROWS, int MT>
SLIMOPS_HD void stage_cta(const Problem& p, const Cta& c, uint16_t* xs, float* cb, int tid, int T) {
  constexpr int CW = kChunkInputs<F>;
  const int64_t width = p.chunks_per_split * CW;
  const int64_t k0 = c.c0 * CW;
  const int64_t k1 = c.c1 * CW < p.K ? c.c1 * CW : p.K;  // this split's real inputs end here
  for (int64_t i = tid; i < MT * width; i += T) {
    const int64_t m = i / width, k = k0 + i % width;
    const bool ok = c.m0 + m < p.M && k < k1;
    xs[i] = ok ? p.x[(c.m0 + m) * p.x_stride + k] : uint16_t(0);
  }
  if constexpr (F == kCodebook4) {
    for (int i = tid; i < ROWS * 16; i += T) {
      const int64_t n = c.n0 + i / 16;
      const int64_t row = p.codebook_rows == 1 ? 0 : (n < p.N ? n : 0);
      cb[i] = p.codebook[row * 16 + i % 16];
    }
  }
}

// The partial sums acc[m][r] of thread tid (of T) over its chunks: tid, tid + T, ... of the
// CTA's split, U chunks per row loaded before the first is used (ROWS * U independent 16-byte
// loads in flight per thread). Each chunk's dot product with the staged x is scaled by its
// group's scale once. Rows >= N are never loaded.
template <int F, int XT, int ROWS, int U, int MT>
SLIMOPS_HD void thread_partial(const Problem& p, const Cta& c, const uint16_t* xs, const float* cb, int tid, int T,
                               float (&acc)[MT][ROWS]) {
  constexpr int CW = kChunkInputs<F>;
  const int64_t width = p.chunks_per_split * CW;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.0f;

  bool row_ok[ROWS];
  const uint8_t* wrow[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    row_ok[r] = c.n0 + r < p.N;
    wrow[r] = p.w + (row_ok[r] ? c.n0 + r : 0) * p.row_bytes;
  }

  for (int64_t base = c.c0 + tid; base < c.c1; base += int64_t(T) * U) {
    uint32_t wv[U][ROWS][4];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t ch = base + int64_t(u) * T;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        if (ch < c.c1 && row_ok[r]) {
          load_weight16(wrow[r] + ch * 16, wv[u][r]);
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) wv[u][r][i] = 0u;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t ch = base + int64_t(u) * T;
      if (ch >= c.c1) break;
      // 32-bit division: an int64 one is a ~40-instruction call (K < 2^31 is checked on the host).
      const int64_t g = p.groups == 1 ? 0 : int64_t(uint32_t(ch * CW) / uint32_t(p.group_size));
      const uint16_t* xc = xs + (ch - c.c0) * CW;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        if (!row_ok[r]) continue;
        const int64_t n = c.n0 + r;
        RowParams rp;
        rp.codebook = cb + r * 16;
        rp.zero = F == kInt4Sym ? 8.0f : (F == kInt4Asym ? p.zero[n * p.groups + g] : 0.0f);
        float wf[CW];
        dequant<F>(wv[u][r], rp, wf);
        const float s = p.scale[n * p.groups + g];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          float dot = 0.0f;
#pragma unroll
          for (int v = 0; v < CW / 8; ++v) {
            uint32_t xw[4];
            load_x8(xc + m * width + 8 * v, xw);
#pragma unroll
            for (int h = 0; h < 4; ++h) {
              float x0, x1;
              x_pair_to_floats<XT>(xw[h], x0, x1);
              dot += x0 * wf[8 * v + 2 * h];
              dot += x1 * wf[8 * v + 2 * h + 1];
            }
          }
          acc[m][r] += dot * s;
        }
      }
    }
  }
}

// After the warps' sums are in red[WARPS][MT][ROWS]: thread i < MT * ROWS (token i / ROWS,
// row i % ROWS) adds them in warp order, then either writes the output (no split: + bias,
// rounded once) or its split's fp32 partial.
template <int XT, int ROWS, int WARPS, int MT>
SLIMOPS_HD void finish_cta(const Problem& p, const Cta& c, const float* red, int i) {
  const int m = i / ROWS, r = i % ROWS;
  const int64_t n = c.n0 + r, tok = c.m0 + m;
  if (n >= p.N || tok >= p.M) return;
  float v = 0.0f;
  for (int w = 0; w < WARPS; ++w) v += red[(w * MT + m) * ROWS + r];
  if (p.ksplit == 1) {
    if (p.bias != nullptr) v += p.bias[n];
    p.out[tok * p.N + n] = float_to_x<XT>(v);
  } else {
    p.ws[(int64_t(c.split) * p.M + tok) * p.N + n] = v;
  }
}

// The deterministic second pass of a K split: out[m, n] = sum over splits in order + bias.
template <int XT>
SLIMOPS_HD void reduce_splits(const Problem& p, int64_t i) {  // i = m * N + n
  float v = 0.0f;
  for (int s = 0; s < p.ksplit; ++s) v += p.ws[int64_t(s) * p.M * p.N + i];
  if (p.bias != nullptr) v += p.bias[i % p.N];
  p.out[i] = float_to_x<XT>(v);
}

}  // namespace decode
}  // namespace slimops
