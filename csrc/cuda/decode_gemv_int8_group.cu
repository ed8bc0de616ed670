// The decode GEMV kernels of format int8_group (decode_gemv_launch.cuh: one format per file).
#include "cuda/decode_gemv_launch.cuh"

namespace slimops::decode {
template at::Tensor launch_format<kInt8Group>(DecodeCall&);
}  // namespace slimops::decode
