// What the CUDA kernels in this folder share: the float element types as bits
// (fp32 / fp16 / bf16, converted to and from fp32), the dtype codes that
// select one at run time, and the host helpers of their launchers.
//
// Device helpers are `__device__ __forceinline__` and host helpers `inline`, so
// that every translation unit may include this header (one definition each).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "checks.h"

namespace slimops {

// ---------------------------------------------------------------- elements

// Element types as their bits. 16-bit pairs unpack from / pack into one 32-bit
// word: element 2k in the low half of word k (little endian).
struct F32 {
  using Bits = uint32_t;
  static __device__ __forceinline__ float to_float(Bits b) { return __uint_as_float(b); }
  static __device__ __forceinline__ Bits from_float(float f) { return __float_as_uint(f); }
};

struct F16 {
  using Bits = uint16_t;
  static __device__ __forceinline__ float to_float(Bits b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ Bits from_float(float f) { return __half_as_ushort(__float2half_rn(f)); }
  static __device__ __forceinline__ void unpack2(uint32_t w, float& lo, float& hi) {
    __half2 h;
    memcpy(&h, &w, sizeof(h));
    const float2 v = __half22float2(h);
    lo = v.x;
    hi = v.y;
  }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    uint32_t w;
    memcpy(&w, &h, sizeof(w));
    return w;
  }
};

struct BF16 {
  using Bits = uint16_t;
  static __device__ __forceinline__ float to_float(Bits b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
  static __device__ __forceinline__ Bits from_float(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
  static __device__ __forceinline__ void unpack2(uint32_t w, float& lo, float& hi) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    uint32_t w;
    memcpy(&w, &h, sizeof(w));
    return w;
  }
};

// The element type of a C++ scalar type (float, at::Half, at::BFloat16).
template <typename T>
struct ElemOf;
template <>
struct ElemOf<float> {
  using type = F32;
};
template <>
struct ElemOf<at::Half> {
  using type = F16;
};
template <>
struct ElemOf<at::BFloat16> {
  using type = BF16;
};
template <typename T>
using Elem = typename ElemOf<T>::type;

// A float dtype chosen at run time (a kernel argument, or a tensor table entry).
enum DtypeCode : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// ---------------------------------------------------------------- host

// Grid dimensions y and z are limited to this; longer grids are split into launches.
constexpr int64_t kMaxGridY = 65535;

inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  SLIMOPS_CHECK(t.is_cuda(), op, name, " must be a CUDA tensor, got ", t.device());
}

// The DtypeCode of a float32 / float16 / bfloat16 tensor (validated before).
inline DtypeCode dtype_code(c10::ScalarType t) {
  if (t == at::kHalf) return kF16;
  if (t == at::kBFloat16) return kBF16;
  return kF32;
}

}  // namespace slimops
