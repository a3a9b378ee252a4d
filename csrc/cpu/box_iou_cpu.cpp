// CPU implementation of the box-overlap ops: at::parallel_for over boxes, each thread converts a block of boxes to
// structure-of-arrays in its stack and runs a branch-free loop the compiler vectorizes (AVX-512 / AVX2 / SSE2
// clones picked by CPU features at load time on x86-64 GCC, so one binary runs everywhere).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "box_iou_checks.h"
#include "box_iou_math.h"
#include "ops.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define UMEDFAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define UMEDFAST_CPU_CLONES
#endif

namespace umedfast {
namespace {

constexpr int64_t kBlock = 256;  // boxes per SoA block: 8 arrays x 256 x 4 B = 8 KiB, stays in L1

template <class T, class Acc>
UMEDFAST_HD void load_soa(const T* box, int64_t n, Acc* x1, Acc* y1, Acc* x2, Acc* y2) {
  for (int64_t i = 0; i < n; ++i) {
    x1[i] = static_cast<Acc>(box[4 * i + 0]);
    y1[i] = static_cast<Acc>(box[4 * i + 1]);
    x2[i] = static_cast<Acc>(box[4 * i + 2]);
    y2[i] = static_cast<Acc>(box[4 * i + 3]);
  }
}

// out[i] = overlap(a[i], b[i]) for i in [0, n).
template <Overlap kOp, class T, class Acc>
UMEDFAST_HD void paired_range(const T* a, const T* b, float* out, int64_t n) {
  alignas(64) Acc s[8][kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    load_soa(a + 4 * start, len, s[0], s[1], s[2], s[3]);
    load_soa(b + 4 * start, len, s[4], s[5], s[6], s[7]);
    float* o = out + start;
    for (int64_t i = 0; i < len; ++i) {
      o[i] = static_cast<float>(
          box_overlap<kOp, Acc>(s[0][i], s[1][i], s[2][i], s[3][i], s[4][i], s[5][i], s[6][i], s[7][i]));
    }
  }
}

// out[i, j] = IoU(a[i], b[j]) for rows i in [0, rows); b is already SoA (bsoa = x1[M], y1[M], x2[M], y2[M]).
template <class T, class Acc>
UMEDFAST_HD void pairwise_rows(const T* a, const Acc* bsoa, float* out, int64_t rows, int64_t m) {
  const Acc *bx1 = bsoa, *by1 = bsoa + m, *bx2 = bsoa + 2 * m, *by2 = bsoa + 3 * m;
  for (int64_t i = 0; i < rows; ++i) {
    const Acc ax1 = static_cast<Acc>(a[4 * i + 0]), ay1 = static_cast<Acc>(a[4 * i + 1]);
    const Acc ax2 = static_cast<Acc>(a[4 * i + 2]), ay2 = static_cast<Acc>(a[4 * i + 3]);
    float* o = out + i * m;
    for (int64_t j = 0; j < m; ++j) {
      o[j] = static_cast<float>(box_overlap<Overlap::kIoU, Acc>(ax1, ay1, ax2, ay2, bx1[j], by1[j], bx2[j], by2[j]));
    }
  }
}

// Non-template entry points, one per dtype, so GCC can clone them per instruction set.
#define UMEDFAST_DEFINE_CPU_ENTRIES(T, Acc, SUFFIX)                                                             \
  UMEDFAST_CPU_CLONES void paired_##SUFFIX(const T* a, const T* b, float* out, int64_t n, bool giou) {        \
    if (giou) {                                                                                              \
      paired_range<Overlap::kGIoU, T, Acc>(a, b, out, n);                                                    \
    } else {                                                                                                 \
      paired_range<Overlap::kIoU, T, Acc>(a, b, out, n);                                                     \
    }                                                                                                        \
  }                                                                                                          \
  UMEDFAST_CPU_CLONES void to_soa_##SUFFIX(const T* b, int64_t m, Acc* soa) {                                \
    load_soa<T, Acc>(b, m, soa, soa + m, soa + 2 * m, soa + 3 * m);                                          \
  }                                                                                                          \
  UMEDFAST_CPU_CLONES void pairwise_##SUFFIX(const T* a, const Acc* bsoa, float* out, int64_t rows, int64_t m) { \
    pairwise_rows<T, Acc>(a, bsoa, out, rows, m);                                                            \
  }

UMEDFAST_DEFINE_CPU_ENTRIES(float, float, f32)
UMEDFAST_DEFINE_CPU_ENTRIES(double, double, f64)
UMEDFAST_DEFINE_CPU_ENTRIES(c10::Half, float, f16)
UMEDFAST_DEFINE_CPU_ENTRIES(c10::BFloat16, float, bf16)
#undef UMEDFAST_DEFINE_CPU_ENTRIES

inline void paired_entry(const float* a, const float* b, float* o, int64_t n, bool g) { paired_f32(a, b, o, n, g); }
inline void paired_entry(const double* a, const double* b, float* o, int64_t n, bool g) { paired_f64(a, b, o, n, g); }
inline void paired_entry(const c10::Half* a, const c10::Half* b, float* o, int64_t n, bool g) {
  paired_f16(a, b, o, n, g);
}
inline void paired_entry(const c10::BFloat16* a, const c10::BFloat16* b, float* o, int64_t n, bool g) {
  paired_bf16(a, b, o, n, g);
}
inline void to_soa_entry(const float* b, int64_t m, float* s) { to_soa_f32(b, m, s); }
inline void to_soa_entry(const double* b, int64_t m, double* s) { to_soa_f64(b, m, s); }
inline void to_soa_entry(const c10::Half* b, int64_t m, float* s) { to_soa_f16(b, m, s); }
inline void to_soa_entry(const c10::BFloat16* b, int64_t m, float* s) { to_soa_bf16(b, m, s); }
inline void pairwise_entry(const float* a, const float* s, float* o, int64_t r, int64_t m) { pairwise_f32(a, s, o, r, m); }
inline void pairwise_entry(const double* a, const double* s, float* o, int64_t r, int64_t m) {
  pairwise_f64(a, s, o, r, m);
}
inline void pairwise_entry(const c10::Half* a, const float* s, float* o, int64_t r, int64_t m) {
  pairwise_f16(a, s, o, r, m);
}
inline void pairwise_entry(const c10::BFloat16* a, const float* s, float* o, int64_t r, int64_t m) {
  pairwise_bf16(a, s, o, r, m);
}

at::Tensor paired_cpu(const char* op, const at::Tensor& a_in, const at::Tensor& b_in, bool giou) {
  check_box_pair(op, a_in, b_in, /*paired=*/true);
  TORCH_CHECK(a_in.device().is_cpu(), "umedfast.", op, ": the CPU kernel got tensors on ", a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t n = a.size(0);
  at::Tensor out = at::empty({n}, a.options().dtype(at::kFloat));
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "umedfast_box_iou_cpu", [&] {
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    float* po = out.mutable_data_ptr<float>();
    at::parallel_for(0, n, /*grain_size=*/32768, [&](int64_t begin, int64_t end) {
      paired_entry(pa + 4 * begin, pb + 4 * begin, po + begin, end - begin, giou);
    });
  });
  return out;
}

}  // namespace

at::Tensor box_iou_cpu(const at::Tensor& a, const at::Tensor& b) { return paired_cpu("box_iou", a, b, false); }

at::Tensor generalized_box_iou_cpu(const at::Tensor& a, const at::Tensor& b) {
  return paired_cpu("generalized_box_iou", a, b, true);
}

at::Tensor box_iou_pairwise_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_box_pair("box_iou_pairwise", a_in, b_in, /*paired=*/false);
  TORCH_CHECK(a_in.device().is_cpu(), "umedfast.box_iou_pairwise: the CPU kernel got tensors on ", a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  at::Tensor out = at::empty({n, m}, a.options().dtype(at::kFloat));
  if (n == 0 || m == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "umedfast_box_iou_pairwise_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    std::vector<acc_t> bsoa(static_cast<size_t>(4 * m));  // b once as x1[M], y1[M], x2[M], y2[M]
    to_soa_entry(b.const_data_ptr<scalar_t>(), m, bsoa.data());
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    float* po = out.mutable_data_ptr<float>();
    const int64_t grain = std::max<int64_t>(1, 32768 / m);  // rows per task: ~32k pairs
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      pairwise_entry(pa + 4 * begin, bsoa.data(), po + begin * m, end - begin, m);
    });
  });
  return out;
}

}  // namespace umedfast
