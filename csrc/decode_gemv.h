// The decode GEMV kernel family (csrc/cuda/decode_gemv.cuh): its host-side entry points, the
// checks and preparation they share with the CPU emulator, and the dispatch over the template
// variants. The plan and the format policies are in decode_gemv_plan.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <type_traits>
#include <utility>

#include "checks.h"
#include "decode_gemv_plan.h"

namespace slimops {

// The tensors of one call in the kernels' layout (fp32 scale / zero / codebook / bias,
// 16-byte aligned contiguous weight rows, x as [M, K] rows with element stride 1) and the
// Problem that points into them. `out` is allocated here; `ws` is left to the launcher.
struct DecodeCall {
  at::Tensor x, w, scale, zero, codebook, bias, out;
  decode::Problem p{};
  int format = 0, xtype = 0, shape = 0, ksplit = 1, tokens = 1;
  std::vector<int64_t> out_shape;
};

// Checks every argument of format `format` and variant `variant` (0 .. kNumVariants - 1) and
// prepares the call. Errors name the argument and what was expected.
//   int8_channel / fp8_channel: qweight int8 / float8_e4m3fn [N, K] (K % 16 == 0), scale [N] or [N, 1]
//   int8_group: qweight int8 [N, K], scale [N, K / group_size] (group_size % 16 == 0)
//   int4_asym / int4_sym / codebook4: qweight uint8 [N, ceil(K / 32) * 16], scale [N, ceil(K / group_size)]
//     (group_size % 32 == 0); zero_point [N, groups] for int4_asym only; codebook fp32 [1 or N, 16]
//     for codebook4 only.
DecodeCall prepare_decode_gemv(int64_t format, int64_t variant, const at::Tensor& x, const at::Tensor& qweight,
                               const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                               const std::optional<at::Tensor>& codebook, const std::optional<at::Tensor>& bias,
                               int64_t group_size);

// The variant table as Python sees it (slimops._C._decode_gemv_variants()).
struct DecodeVariant {
  int id, rows, warps, unroll, ksplit;
};
DecodeVariant decode_variant(int v);

// CPU: runs the kernel's plan on the host, CTA by CTA and thread by thread (csrc/cpu/decode_gemv_emu.cpp).
at::Tensor decode_gemv_emulate(int64_t format, int64_t variant, const at::Tensor& x, const at::Tensor& qweight,
                               const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                               const std::optional<at::Tensor>& codebook, const std::optional<at::Tensor>& bias,
                               int64_t group_size);

#ifdef SLIMOPS_WITH_CUDA
// CUDA (csrc/cuda/decode_gemv.cu): one variant, for the sweep (slimops._C._decode_gemv).
at::Tensor decode_gemv_cuda(int64_t format, int64_t variant, const at::Tensor& x, const at::Tensor& qweight,
                            const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                            const std::optional<at::Tensor>& codebook, const std::optional<at::Tensor>& bias,
                            int64_t group_size);
// The op-table entries: checks trusted from the op's validator, then the default variant.
at::Tensor weight_int4_linear_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                   const std::optional<at::Tensor>& zero_point, int64_t group_size,
                                   const std::optional<at::Tensor>& bias);
// For engineer A's weight_codebook4_linear (wired at merge): w = codebook[c][q] * scale[n, k / group_size].
at::Tensor weight_codebook4_linear_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& codebook,
                                        const at::Tensor& scale, int64_t group_size,
                                        const std::optional<at::Tensor>& bias);
// Weight-only fp8 decode for Fp8DynamicLinear at M <= 16 (routing path "fp8_weight_only", not a default rule).
at::Tensor fp8_weight_only_linear_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                       const std::optional<at::Tensor>& bias);
#endif

// ---------------------------------------------------------------- dispatch
// fn(format, xtype, shape, tokens) with each an std::integral_constant<int, ...>: every
// combination the table allows, and nothing else, is instantiated.
template <int... I, class Fn>
void dispatch_int(int v, std::integer_sequence<int, I...>, Fn&& fn) {
  ((v == I ? (fn(std::integral_constant<int, I>{}), 0) : 0), ...);
}

// fn(xtype, shape, tokens) for one format: what one CUDA translation unit instantiates.
template <class Fn>
void dispatch_decode_variant(int xtype, int shape, int tokens, Fn&& fn) {
  int log_tokens = 0;
  while ((1 << log_tokens) < tokens) ++log_tokens;
  dispatch_int(xtype, std::integer_sequence<int, decode::kXF16, decode::kXBF16>{}, [&](auto xt) {
    dispatch_int(shape, std::make_integer_sequence<int, decode::kNumShapes>{}, [&](auto s) {
      dispatch_int(log_tokens, std::make_integer_sequence<int, 5>{},
                   [&](auto lt) { fn(xt, s, std::integral_constant<int, (1 << decltype(lt)::value)>{}); });
    });
  });
}

template <class Fn>
void dispatch_decode(int format, int xtype, int shape, int tokens, Fn&& fn) {
  dispatch_int(format, std::make_integer_sequence<int, decode::kNumFormats>{}, [&](auto f) {
    dispatch_decode_variant(xtype, shape, tokens, [&](auto xt, auto s, auto mt) { fn(f, xt, s, mt); });
  });
}

}  // namespace slimops
