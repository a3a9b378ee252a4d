// CUDA kernels for the box-overlap ops: one fused pass, float32 accumulate (float64 for float64 boxes).
//   paired:   grid-stride over 16-byte chunks (one fp32 box, two fp16/bf16 boxes, half an fp64 box per load).
//   pairwise: each thread owns one column j (its b box lives in registers, loads and stores are coalesced along M);
//             the block stages a tile of kRows a boxes in shared memory, read by every thread as a broadcast.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../box_iou_math.h"
#include "box_iou_kernels.h"

namespace umedfast {
namespace cuda {
namespace {

template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 4096;  // grid-stride beyond this: ~4 waves of 2048 threads on 132 SMs

template <Overlap kOp, class T>
__device__ __forceinline__ float overlap_at(const T* a, const T* b) {
  using Acc = typename AccOf<T>::type;
  return static_cast<float>(box_overlap<kOp, Acc>(to_acc(a[0]), to_acc(a[1]), to_acc(a[2]), to_acc(a[3]),
                                                  to_acc(b[0]), to_acc(b[1]), to_acc(b[2]), to_acc(b[3])));
}

// kVec: a and b are 16-byte aligned, so each chunk of kBoxes boxes is read with kLoads 16-byte loads.
template <Overlap kOp, class T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    paired_kernel(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ out, int64_t n) {
  constexpr int kBoxes = sizeof(T) >= 4 ? 1 : 2;               // boxes per chunk
  constexpr int kLoads = (4 * kBoxes * int(sizeof(T))) / 16;  // 16-byte loads per chunk and input
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;  // boxes handled by the vector loop
  if constexpr (kVec) {
    const int64_t chunks = n / kBoxes;
    const uint4* a16 = reinterpret_cast<const uint4*>(a);
    const uint4* b16 = reinterpret_cast<const uint4*>(b);
    for (int64_t c = first; c < chunks; c += stride) {
      uint4 ra[kLoads], rb[kLoads];
#pragma unroll
      for (int l = 0; l < kLoads; ++l) {
        ra[l] = __ldg(a16 + c * kLoads + l);
        rb[l] = __ldg(b16 + c * kLoads + l);
      }
      const T* va = reinterpret_cast<const T*>(ra);
      const T* vb = reinterpret_cast<const T*>(rb);
#pragma unroll
      for (int k = 0; k < kBoxes; ++k) {
        out[c * kBoxes + k] = overlap_at<kOp>(va + 4 * k, vb + 4 * k);
      }
    }
    done = chunks * kBoxes;
  }
  for (int64_t i = done + first; i < n; i += stride) {  // unaligned inputs, or the odd last fp16 box
    out[i] = overlap_at<kOp>(a + 4 * i, b + 4 * i);
  }
}

constexpr int kRows = 16;  // a boxes staged in shared memory per block (pairwise)

template <class T>
__global__ void __launch_bounds__(kThreads)
    pairwise_kernel(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ out, int64_t n, int64_t m) {
  using Acc = typename AccOf<T>::type;
  __shared__ Acc tile[4][kRows];
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool col_ok = j < m;
  Acc bx1 = 0, by1 = 0, bx2 = 0, by2 = 0;
  if (col_ok) {
    bx1 = to_acc(b[4 * j + 0]);
    by1 = to_acc(b[4 * j + 1]);
    bx2 = to_acc(b[4 * j + 2]);
    by2 = to_acc(b[4 * j + 3]);
  }
  for (int64_t row0 = int64_t(blockIdx.y) * kRows; row0 < n; row0 += int64_t(gridDim.y) * kRows) {
    const int rows = static_cast<int>(n - row0 < kRows ? n - row0 : kRows);
    if (threadIdx.x < 4 * kRows) {
      const int r = threadIdx.x / 4, k = threadIdx.x % 4;
      if (r < rows) tile[k][r] = to_acc(a[4 * (row0 + r) + k]);
    }
    __syncthreads();
    if (col_ok) {
      float* o = out + row0 * m + j;
      for (int r = 0; r < rows; ++r) {
        const float v = static_cast<float>(
            box_overlap<Overlap::kIoU, Acc>(tile[0][r], tile[1][r], tile[2][r], tile[3][r], bx1, by1, bx2, by2));
        __stcs(o + int64_t(r) * m, v);  // streaming store: the output is written once, keep L2 for the inputs
      }
    }
    __syncthreads();
  }
}

template <Overlap kOp, class T>
cudaError_t paired_typed(const void* a, const void* b, float* out, int64_t n, cudaStream_t stream) {
  const T* pa = static_cast<const T*>(a);
  const T* pb = static_cast<const T*>(b);
  const bool aligned = (reinterpret_cast<uintptr_t>(a) % 16 == 0) && (reinterpret_cast<uintptr_t>(b) % 16 == 0);
  constexpr int kBoxes = sizeof(T) >= 4 ? 1 : 2;
  const int64_t work = aligned ? (n + kBoxes - 1) / kBoxes : n;
  const int blocks = static_cast<int>((work + kThreads - 1) / kThreads < kMaxBlocks ? (work + kThreads - 1) / kThreads
                                                                                      : kMaxBlocks);
  if (aligned) {
    paired_kernel<kOp, T, true><<<blocks, kThreads, 0, stream>>>(pa, pb, out, n);
  } else {
    paired_kernel<kOp, T, false><<<blocks, kThreads, 0, stream>>>(pa, pb, out, n);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t paired_op(const void* a, const void* b, float* out, int64_t n, bool giou, cudaStream_t stream) {
  return giou ? paired_typed<Overlap::kGIoU, T>(a, b, out, n, stream)
              : paired_typed<Overlap::kIoU, T>(a, b, out, n, stream);
}

template <class T>
cudaError_t pairwise_typed(const void* a, const void* b, float* out, int64_t n, int64_t m, cudaStream_t stream) {
  const int64_t col_blocks = (m + kThreads - 1) / kThreads;
  const int64_t row_blocks = (n + kRows - 1) / kRows;
  if (col_blocks > 2147483647LL) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks < 65535 ? row_blocks : 65535));
  pairwise_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(a), static_cast<const T*>(b), out, n, m);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_box_overlap_paired(const void* a, const void* b, float* out, int64_t n, BoxDtype dtype, bool giou,
                                      cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case BoxDtype::kFloat32: return paired_op<float>(a, b, out, n, giou, stream);
    case BoxDtype::kFloat16: return paired_op<__half>(a, b, out, n, giou, stream);
    case BoxDtype::kBFloat16: return paired_op<__nv_bfloat16>(a, b, out, n, giou, stream);
    case BoxDtype::kFloat64: return paired_op<double>(a, b, out, n, giou, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_box_iou_pairwise(const void* a, const void* b, float* out, int64_t n, int64_t m, BoxDtype dtype,
                                    cudaStream_t stream) {
  if (n == 0 || m == 0) return cudaSuccess;
  switch (dtype) {
    case BoxDtype::kFloat32: return pairwise_typed<float>(a, b, out, n, m, stream);
    case BoxDtype::kFloat16: return pairwise_typed<__half>(a, b, out, n, m, stream);
    case BoxDtype::kBFloat16: return pairwise_typed<__nv_bfloat16>(a, b, out, n, m, stream);
    case BoxDtype::kFloat64: return pairwise_typed<double>(a, b, out, n, m, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace umedfast
