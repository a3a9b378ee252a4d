// Input checks shared by the CPU and CUDA implementations. The messages are mirrored word for word by the
// pure-torch fallback in umedfast/ops.py (tests compare them), so keep the two in sync.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace umedfast {

inline void check_boxes(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == 4, "umedfast.", op, ": ", name,
              " must have shape [N, 4] (x1, y1, x2, y2), got ", t.sizes());
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, "umedfast.", op, ": ",
              name, " must be float16, bfloat16, float32 or float64, got ", dt);
}

// paired: a[i] is compared with b[i] only (N == M required); otherwise every a[i] with every b[j].
inline void check_box_pair(const char* op, const at::Tensor& a, const at::Tensor& b, bool paired) {
  check_boxes(op, "a", a);
  check_boxes(op, "b", b);
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "umedfast.", op, ": a and b must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "umedfast.", op, ": a and b must be on the same device, got ", a.device(),
              " and ", b.device());
  if (paired) {
    TORCH_CHECK(a.size(0) == b.size(0), "umedfast.", op, ": paired boxes need as many rows in a as in b, got ",
                a.size(0), " and ", b.size(0));
  }
}

}  // namespace umedfast
