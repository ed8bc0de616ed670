// The decode GEMV kernels of format int4_sym (decode_gemv_launch.cuh: one format per file).
#include "cuda/decode_gemv_launch.cuh"

namespace slimops::decode {
template at::Tensor launch_format<kInt4Sym>(DecodeCall&);
}  // namespace slimops::decode
