// Declarations of the op implementations (schemas live in torch_bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace umedfast {

at::Tensor box_iou_cpu(const at::Tensor& a, const at::Tensor& b);
at::Tensor generalized_box_iou_cpu(const at::Tensor& a, const at::Tensor& b);
at::Tensor box_iou_pairwise_cpu(const at::Tensor& a, const at::Tensor& b);

#ifdef UMEDFAST_WITH_CUDA
at::Tensor box_iou_cuda(const at::Tensor& a, const at::Tensor& b);
at::Tensor generalized_box_iou_cuda(const at::Tensor& a, const at::Tensor& b);
at::Tensor box_iou_pairwise_cuda(const at::Tensor& a, const at::Tensor& b);
#endif

}  // namespace umedfast
