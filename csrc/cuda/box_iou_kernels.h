// Raw CUDA launchers for the box-overlap ops. Plain pointers + cudaStream_t, no torch types, so the .cu file
// compiles with nvcc alone (CI: `nvcc -arch=sm_90 -c csrc/cuda/box_iou_kernels.cu`).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace umedfast {
namespace cuda {

enum class BoxDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// a, b: [n, 4] contiguous xyxy boxes of `dtype`; out: [n] float32. giou=false: IoU, true: generalized IoU.
cudaError_t launch_box_overlap_paired(const void* a, const void* b, float* out, int64_t n, BoxDtype dtype, bool giou,
                                      cudaStream_t stream);

// a: [n, 4], b: [m, 4] contiguous; out: [n, m] float32 row-major, out[i, j] = IoU(a[i], b[j]).
cudaError_t launch_box_iou_pairwise(const void* a, const void* b, float* out, int64_t n, int64_t m, BoxDtype dtype,
                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace umedfast
