// CPU kernel of weight_codebook4_linear (semantics: python/slimops/reference/codebook4.py).
//
// Each output is computed block (group) by block as
//   out[m, n] = sum_g s[n, g] * (sum_{k in g} x[m, k] * T[q[n, k]]) + bias[n]
// with T the row's 16-entry fp32 codebook (row 0 for a layer-wide table). The table lookup
// happens in registers: the 16 entries sit in one zmm (AVX-512: vpermps picks 16 lanes by their
// 4-bit index) or two ymm (AVX2: vpermps on each 8-entry half by the index's low 3 bits, then a
// blend on bit 3). So the inner loop is unpack + one permute (two and a blend on AVX2) + FMA,
// the same count as int4's unpack + convert; the block scale is applied once per block.
//
// Paths, picked per call from csrc/cpu/cpu_isa.h (SLIMOPS_CPU_ISA forces one), as int4:
//   avx512vnni  zmm (needs only AVX-512 F/BW/VL)   avxvnni, avx2  ymm   generic  portable C++
// Up to kInRegisterMaxM rows of x go through the in-register GEMV shared with int4
// (csrc/cpu/nibble_gemv.h); above that the weight is dequantized a block of rows at a time and handed to ATen's
// GEMM (csrc/cpu/nibbles.h, shared with int4).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "codebook4.h"
#include "cpu/cpu_isa.h"
#include "cpu/nibble_gemv.h"
#include "cpu/nibbles.h"

namespace slimops {
namespace {

constexpr int64_t kInRegisterMaxM = 16;  // above: dequantize + GEMM
constexpr int64_t kDequantRows = 64;     // weight rows per GEMM call on the dequantize path

}  // namespace

at::Tensor weight_codebook4_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& codebook,
                                       const at::Tensor& scale, int64_t group_size,
                                       const std::optional<at::Tensor>& bias) {
  // validated: validate_weight_codebook4_linear
  const FmaPath path = fma_path_for(chosen_cpu_isa());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the op has no autograd formula (see quant_mm.cpp)
  MatmulGeometry g = linear_geometry(x, qweight.size(0), scale.size(1));
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor Q = qweight.contiguous();
  const at::Tensor T = codebook.to(at::kFloat).contiguous();
  const at::Tensor S = scale.to(at::kFloat).contiguous();
  const NibbleProblem p{x32.data_ptr<float>(), Q.data_ptr<uint8_t>(), S.data_ptr<float>(), T.data_ptr<float>(),
                        T.size(0) == 1 ? 0 : kCodebookEntries, g.m, g.n, g.k, g.groups, group_size, Q.size(1)};

  at::Tensor out;
  if (g.m <= kInRegisterMaxM) {
    out = at::empty({g.m, g.n}, x32.options());
    nibble_gemv::gemv<true>(path, p, out.data_ptr<float>(), [](int64_t, int64_t, float v) { return v; });
  } else {
    at::Tensor out_t = at::empty({g.n, g.m}, x32.options());
    dequantize_and_mm(g.n, g.k, kDequantRows, x32, out_t, [&](int64_t row, float* dst) {
      const uint8_t* q = p.q + row * p.bytes;
      const float* table = p.table(row);
      for (int64_t k = 0; k < p.k; ++k) dst[k] = table[nibble_at(q, k)] * p.s[row * p.groups + k / p.group_size];
    });
    out = out_t.t();
  }
  if (bias.has_value()) out = out.add(bias->to(at::kFloat));
  return out.to(x.scalar_type()).contiguous().reshape(out_shape);
}

}  // namespace slimops
