// umedfast._C: one pybind11 module. Loading it registers the ops below into torch.ops.umedfast (TORCH_LIBRARY
// static initializers), and its Python functions report how the extension was built.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>

#include "ops.h"

#ifndef UMEDFAST_CUDA_ARCHS
#define UMEDFAST_CUDA_ARCHS ""
#endif

// Schemas: the single source of truth for the op signatures. Boxes are xyxy; outputs are float32.
TORCH_LIBRARY(umedfast, m) {
  // a [N, 4], b [N, 4] -> [N]: IoU of a[i] with b[i].
  m.def("box_iou(Tensor a, Tensor b) -> Tensor", {at::Tag::pt2_compliant_tag});
  // a [N, 4], b [M, 4] -> [N, M]: IoU of every a[i] with every b[j].
  m.def("box_iou_pairwise(Tensor a, Tensor b) -> Tensor", {at::Tag::pt2_compliant_tag});
  // a [N, 4], b [N, 4] -> [N]: generalized IoU of a[i] with b[i], in [-1, 1].
  m.def("generalized_box_iou(Tensor a, Tensor b) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(umedfast, CPU, m) {
  m.impl("box_iou", &umedfast::box_iou_cpu);
  m.impl("box_iou_pairwise", &umedfast::box_iou_pairwise_cpu);
  m.impl("generalized_box_iou", &umedfast::generalized_box_iou_cpu);
}

namespace py = pybind11;

#ifdef UMEDFAST_WITH_CUDA
static constexpr bool kWithCuda = true;
#else
static constexpr bool kWithCuda = false;
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "umedfast compiled ops (box IoU); importing this module registers torch.ops.umedfast.*";
  m.def(
      "build_info",
      []() {
        py::dict info;
        info["cuda"] = kWithCuda;
        info["cuda_archs"] = std::string(UMEDFAST_CUDA_ARCHS);
        info["torch_version"] = std::string(UMEDFAST_TORCH_VERSION);
        info["ops"] = py::make_tuple("box_iou", "box_iou_pairwise", "generalized_box_iou");
        return info;
      },
      "How this extension was built: {'cuda': bool, 'cuda_archs': '80,90' or '', 'torch_version': str, 'ops': ...}");
}
