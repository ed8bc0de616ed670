// The decode GEMV kernels of format codebook4 (decode_gemv_launch.cuh: one format per file).
#include "cuda/decode_gemv_launch.cuh"

namespace slimops::decode {
template at::Tensor launch_format<kCodebook4>(DecodeCall&);
}  // namespace slimops::decode
