// ATen glue for the CUDA box-overlap kernels: checks, device guard, current stream, then the raw launchers.
// Compiled only when torch has CUDA (UMEDFAST_WITH_CUDA); the kernels themselves live in box_iou_kernels.cu.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_iou_checks.h"
#include "cuda/box_iou_kernels.h"
#include "ops.h"

namespace umedfast {
namespace {

cuda::BoxDtype box_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::BoxDtype::kFloat32;
    case at::kHalf: return cuda::BoxDtype::kFloat16;
    case at::kBFloat16: return cuda::BoxDtype::kBFloat16;
    case at::kDouble: return cuda::BoxDtype::kFloat64;
    default: TORCH_CHECK(false, "umedfast: unsupported box dtype ", t);  // unreachable after check_boxes
  }
}

at::Tensor paired_cuda(const char* op, const at::Tensor& a_in, const at::Tensor& b_in, bool giou) {
  check_box_pair(op, a_in, b_in, /*paired=*/true);
  TORCH_CHECK(a_in.is_cuda(), "umedfast.", op, ": the CUDA kernel got tensors on ", a_in.device());
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t n = a.size(0);
  at::Tensor out = at::empty({n}, a.options().dtype(at::kFloat));
  if (n == 0) return out;
  C10_CUDA_CHECK(cuda::launch_box_overlap_paired(a.const_data_ptr(), b.const_data_ptr(), out.mutable_data_ptr<float>(),
                                                 n, box_dtype(a.scalar_type()), giou,
                                                 c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace

at::Tensor box_iou_cuda(const at::Tensor& a, const at::Tensor& b) { return paired_cuda("box_iou", a, b, false); }

at::Tensor generalized_box_iou_cuda(const at::Tensor& a, const at::Tensor& b) {
  return paired_cuda("generalized_box_iou", a, b, true);
}

at::Tensor box_iou_pairwise_cuda(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_box_pair("box_iou_pairwise", a_in, b_in, /*paired=*/false);
  TORCH_CHECK(a_in.is_cuda(), "umedfast.box_iou_pairwise: the CUDA kernel got tensors on ", a_in.device());
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  at::Tensor out = at::empty({n, m}, a.options().dtype(at::kFloat));
  if (n == 0 || m == 0) return out;
  C10_CUDA_CHECK(cuda::launch_box_iou_pairwise(a.const_data_ptr(), b.const_data_ptr(), out.mutable_data_ptr<float>(), n,
                                               m, box_dtype(a.scalar_type()), c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace umedfast

TORCH_LIBRARY_IMPL(umedfast, CUDA, m) {
  m.impl("box_iou", &umedfast::box_iou_cuda);
  m.impl("box_iou_pairwise", &umedfast::box_iou_pairwise_cuda);
  m.impl("generalized_box_iou", &umedfast::generalized_box_iou_cuda);
}
