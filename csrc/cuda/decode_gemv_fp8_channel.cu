// The decode GEMV kernels of format fp8_channel (decode_gemv_launch.cuh: one format per file).
#include "cuda/decode_gemv_launch.cuh"

namespace slimops::decode {
template at::Tensor launch_format<kFp8Channel>(DecodeCall&);
}  // namespace slimops::decode
