// Argument validation of the codebook 4-bit weight-only family: run once per call by the op
// table (csrc/ops.cpp) before any backend, CPU or Triton. See codebook4.h.
#include "codebook4.h"

#include "int4.h"

namespace slimops {

MatmulGeometry validate_weight_codebook4_linear(const at::Tensor& x, const at::Tensor& qweight,
                                                const at::Tensor& codebook, const at::Tensor& scale,
                                                int64_t group_size, const std::optional<at::Tensor>& bias) {
  const char* op = "weight_codebook4_linear";
  // x, qweight (the int4 nibble layout), scale, group_size and bias: the checks int4 has too
  const MatmulGeometry g = validate_nibble_weight(op, x, qweight, scale, group_size, bias);
  check_float_input(codebook, op, "codebook");
  SLIMOPS_CHECK(codebook.dim() == 2 && codebook.size(1) == kCodebookEntries &&
                    (codebook.size(0) == 1 || codebook.size(0) == g.n),
                op, "codebook must be [1, 16] (one table for the layer) or [", g.n,
                ", 16] (one per output row), got shape ", codebook.sizes());
  check_same_device(x, codebook, op, "x", "codebook");
  return g;
}

}  // namespace slimops
