// CPU implementation of the box-overlap ops: at::parallel_for over boxes; each task runs one branch-free loop
// (csrc/cpu/box_iou_cpu_kernels.h) that GCC vectorizes. On x86-64 the loops are compiled three times, for AVX-512
// (F/VL/BW/DQ + FMA), AVX2 + FMA + F16C, and the x86-64 baseline (SSE2), and the best one the CPU supports is picked
// at run time, so one binary runs everywhere at the speed of its CPU. Elsewhere (aarch64: NEON is baseline) the
// loops are compiled once.
//
// Which variant runs is visible and can be forced (tests run every variant the CPU has):
//   - env UMEDFAST_CPU_ISA=avx512|avx2|baseline, read at the first call (capped at what the CPU supports);
//   - the op umedfast::cpu_kernel_isa(str force="") -> str (registered below, wrapped by
//     umedfast.ops.cpu_kernel_variant): returns the active variant, after switching to `force` when given ("auto" =
//     the best the CPU supports); umedfast::cpu_kernel_isas() -> str[] lists the variants this CPU can run.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "box_iou_checks.h"
#include "box_iou_math.h"
#include "cpu/box_iou_cpu_kernels.h"
#include "ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define UMEDFAST_X86_VARIANTS 1
#define UMEDFAST_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define UMEDFAST_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")))
#else
#define UMEDFAST_X86_VARIANTS 0
#endif

namespace umedfast {
namespace {

// Variants in increasing order of preference.
enum Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(int isa) {
#if UMEDFAST_X86_VARIANTS
  static const char* const names[] = {"baseline", "avx2", "avx512"};
  return names[isa];
#elif defined(__aarch64__)
  return "neon";
#else
  return "generic";
#endif
}

int best_isa() {
#if UMEDFAST_X86_VARIANTS
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return avx512 ? kAvx512 : (avx2 ? kAvx2 : kBaseline);
#else
  return kBaseline;
#endif
}

// -1 = unknown name.
int parse_isa(const std::string& s) {
  const int n = UMEDFAST_X86_VARIANTS ? 3 : 1;
  for (int i = 0; i < n; ++i) {
    if (s == isa_name(i)) return i;
  }
  if (s == "default" || s == "sse2") return kBaseline;
  return -1;
}

std::atomic<int> g_isa{-1};

int active_isa() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa >= 0) return isa;
  isa = best_isa();
  if (const char* env = std::getenv("UMEDFAST_CPU_ISA")) {
    const int want = parse_isa(env);
    if (want >= 0) isa = std::min(isa, want);  // never more than the CPU has; unknown names are ignored
  }
  g_isa.store(isa, std::memory_order_relaxed);
  return isa;
}

// One copy of the loops per instruction set. The loops are always_inline templates without a target attribute, so
// each wrapper below compiles them with its own target's instructions. Separate namespaces (not overloads) keep GCC
// from treating same-named functions with different targets as C++ function multiversions.
#define UMEDFAST_VARIANT_WRAPPERS(NS, TARGET)                                                                     \
  namespace NS {                                                                                                \
  template <Overlap kOp, class T, class Acc>                                                                     \
  TARGET void paired(const T* a, const T* b, float* out, int64_t n) {                                           \
    cpu::paired_range<kOp, T, Acc>(a, b, out, n);                                                               \
  }                                                                                                             \
  TARGET void half_to_float(const uint16_t* in, float* out, int64_t n) { cpu::half_bits_to_float(in, out, n); }   \
  template <class T, class Acc>                                                                                 \
  TARGET void to_soa(const T* b, int64_t m, Acc* soa, bool* plain) {                                            \
    *plain = cpu::to_soa<T, Acc>(b, m, soa);                                                                    \
  }                                                                                                             \
  template <class T, class Acc>                                                                                 \
  TARGET void pairwise(const T* a, const Acc* bsoa, bool b_plain, float* out, int64_t rows, int64_t m) {        \
    cpu::pairwise_rows<T, Acc>(a, bsoa, b_plain, out, rows, m);                                                 \
  }                                                                                                             \
  }

UMEDFAST_VARIANT_WRAPPERS(baseline, )
#if UMEDFAST_X86_VARIANTS
UMEDFAST_VARIANT_WRAPPERS(avx2, UMEDFAST_TARGET_AVX2)
UMEDFAST_VARIANT_WRAPPERS(avx512, UMEDFAST_TARGET_AVX512)
#endif
#undef UMEDFAST_VARIANT_WRAPPERS

// Run the loop of the given variant (on non-x86 builds only `baseline` exists).
#if UMEDFAST_X86_VARIANTS
#define UMEDFAST_SWITCH_VARIANT(isa, CALL) \
  switch (isa) {                           \
    case kAvx512: {                        \
      using namespace avx512;              \
      CALL;                                \
      break;                               \
    }                                      \
    case kAvx2: {                          \
      using namespace avx2;                \
      CALL;                                \
      break;                               \
    }                                      \
    default: {                             \
      using namespace baseline;            \
      CALL;                                \
    }                                      \
  }
#else
#define UMEDFAST_SWITCH_VARIANT(isa, CALL) \
  {                                        \
    using namespace baseline;              \
    CALL;                                  \
  }
#endif

template <Overlap kOp, class T, class Acc>
void paired_variant(int isa, const T* a, const T* b, float* out, int64_t n) {
  UMEDFAST_SWITCH_VARIANT(isa, (paired<kOp, T, Acc>(a, b, out, n)))
}
template <class T, class Acc>
bool to_soa_variant(int isa, const T* b, int64_t m, Acc* soa) {
  bool plain = false;
  UMEDFAST_SWITCH_VARIANT(isa, (to_soa<T, Acc>(b, m, soa, &plain)))
  return plain;
}
template <class T, class Acc>
void pairwise_variant(int isa, const T* a, const Acc* bsoa, bool b_plain, float* out, int64_t rows, int64_t m) {
  UMEDFAST_SWITCH_VARIANT(isa, (pairwise<T, Acc>(a, bsoa, b_plain, out, rows, m)))
}
// float16 boxes: converted to float in blocks by the branch-free, vectorized half_bits_to_float, then the float loops.
inline void half_variant(int isa, const c10::Half* in, float* out, int64_t n) {
  const auto* bits = reinterpret_cast<const uint16_t*>(in);  // c10::Half is its uint16_t bit pattern
  UMEDFAST_SWITCH_VARIANT(isa, (half_to_float(bits, out, n)))
}
#undef UMEDFAST_SWITCH_VARIANT

constexpr int64_t kHalfChunk = 1024;  // boxes per float16 -> float block: 2 x 16 KiB on the stack

template <Overlap kOp>
void paired_half(int isa, const c10::Half* a, const c10::Half* b, float* out, int64_t n) {
  alignas(64) float fa[4 * kHalfChunk], fb[4 * kHalfChunk];
  for (int64_t s = 0; s < n; s += kHalfChunk) {
    const int64_t len = std::min(kHalfChunk, n - s);
    half_variant(isa, a + 4 * s, fa, 4 * len);
    half_variant(isa, b + 4 * s, fb, 4 * len);
    paired_variant<kOp, float, float>(isa, fa, fb, out + s, len);
  }
}

// Work per parallel task: ~32k boxes (paired) or pairs (pairwise), i.e. ~10-50 us, far above the cost of a task,
// small enough that 1e6 boxes split over every thread.
constexpr int64_t kGrain = 32768;

template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// One parallel task of a paired op; float16 goes through float blocks (the more specialized overload wins).
template <Overlap kOp, class T>
void paired_task(int isa, const T* a, const T* b, float* out, int64_t n) {
  paired_variant<kOp, T, acc_t<T>>(isa, a, b, out, n);
}
template <Overlap kOp>
void paired_task(int isa, const c10::Half* a, const c10::Half* b, float* out, int64_t n) {
  paired_half<kOp>(isa, a, b, out, n);
}

// Pairwise IoU of a [n, 4] with b [m, 4] into out [n, m].
template <class T>
void pairwise_impl(int isa, const T* pa, const T* pb, float* po, int64_t n, int64_t m) {
  using acc = acc_t<T>;
  std::vector<acc> bsoa(static_cast<size_t>(5 * m));  // b once as x1[M], y1[M], x2[M], y2[M], area[M]
  // ... and whether all of b is plain-safe (then rows of plain-safe a boxes skip the rescaling)
  const bool b_plain = to_soa_variant<T, acc>(isa, pb, m, bsoa.data());
  const int64_t grain = std::max<int64_t>(1, kGrain / m);  // rows per task: ~32k pairs
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    pairwise_variant<T, acc>(isa, pa + 4 * begin, bsoa.data(), b_plain, po + begin * m, end - begin, m);
  });
}
void pairwise_impl(int isa, const c10::Half* pa, const c10::Half* pb, float* po, int64_t n, int64_t m) {
  std::vector<float> bf(static_cast<size_t>(4 * m)), bsoa(static_cast<size_t>(5 * m));
  half_variant(isa, pb, bf.data(), 4 * m);
  const bool b_plain = to_soa_variant<float, float>(isa, bf.data(), m, bsoa.data());
  const int64_t grain = std::max<int64_t>(1, kGrain / m);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    alignas(64) float fa[4 * kHalfChunk];
    for (int64_t s = begin; s < end; s += kHalfChunk) {
      const int64_t len = std::min(kHalfChunk, end - s);
      half_variant(isa, pa + 4 * s, fa, 4 * len);
      pairwise_variant<float, float>(isa, fa, bsoa.data(), b_plain, po + s * m, len, m);
    }
  });
}

at::Tensor paired_cpu(const char* op, const at::Tensor& a_in, const at::Tensor& b_in, bool giou) {
  check_box_pair(op, a_in, b_in, /*paired=*/true);
  TORCH_CHECK(a_in.device().is_cpu(), "umedfast.", op, ": the CPU kernel got tensors on ", a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t n = a.size(0);
  at::Tensor out = at::empty({n}, a.options().dtype(at::kFloat));
  if (n == 0) return out;
  const int isa = active_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "umedfast_box_iou_cpu", [&] {
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    float* po = out.mutable_data_ptr<float>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      if (giou) {
        paired_task<Overlap::kGIoU>(isa, pa + 4 * begin, pb + 4 * begin, po + begin, end - begin);
      } else {
        paired_task<Overlap::kIoU>(isa, pa + 4 * begin, pb + 4 * begin, po + begin, end - begin);
      }
    });
  });
  return out;
}

std::string cpu_kernel_isa(const std::string& force) {
  if (!force.empty()) {
    if (force == "auto") {
      g_isa.store(best_isa(), std::memory_order_relaxed);
    } else {
      const int want = parse_isa(force);
      TORCH_CHECK(want >= 0, "umedfast.cpu_kernel_isa: unknown variant '", force, "'");
      TORCH_CHECK(want <= best_isa(), "umedfast.cpu_kernel_isa: this CPU cannot run the '", force,
                  "' variant (best: ", isa_name(best_isa()), ")");
      g_isa.store(want, std::memory_order_relaxed);
    }
  }
  return isa_name(active_isa());
}

std::vector<std::string> cpu_kernel_isas() {
  std::vector<std::string> out;
  for (int i = 0; i <= best_isa(); ++i) out.emplace_back(isa_name(i));
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
  const int isa = active_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "umedfast_box_iou_pairwise_cpu", [&] {
    pairwise_impl(isa, a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<float>(), n, m);
  });
  return out;
}

}  // namespace umedfast

// Build facts of the CPU kernels, as ops (this file's own fragment of the `umedfast` library, so the pybind11
// module in torch_bindings.cpp stays as it is). Not tensor ops: no fake/meta registration is needed.
TORCH_LIBRARY_FRAGMENT(umedfast, m) {
  // The SIMD variant the CPU box ops run now ('avx512', 'avx2', 'baseline' on x86-64; 'neon' / 'generic' elsewhere);
  // force = a variant name switches to it (error if the CPU lacks it), "auto" = the best this CPU has.
  m.def("cpu_kernel_isa(str force=\"\") -> str", &umedfast::cpu_kernel_isa);
  // Variants this CPU can run, worst to best.
  m.def("cpu_kernel_isas() -> str[]", &umedfast::cpu_kernel_isas);
}
