// Scalar box-overlap formula shared by the CPU and CUDA kernels (no torch includes: plain nvcc compiles it).
//
// Boxes are xyxy. A box with x2 <= x1 or y2 <= y1 (empty or inverted) has area 0, so its IoU with anything is 0.
// Robustness: before multiplying, each axis is rescaled by an exact power of two chosen from the enclosing span of
// the pair (frexp-style). IoU and GIoU are scale invariant per axis, and a power-of-two scale adds no rounding, so
// areas neither overflow (coordinates up to ~1e38) nor underflow (boxes down to ~1e-30 wide) in float32.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define UMEDFAST_HD __host__ __device__ __forceinline__
#else
#define UMEDFAST_HD inline __attribute__((always_inline))
#endif

namespace umedfast {

// What a pair of boxes is scored with. Non-finite coordinates give the bottom of the range: IoU 0, GIoU -1.
enum class Overlap : int { kIoU = 0, kGIoU = 1 };

template <class T> UMEDFAST_HD T max_(T a, T b) { return a > b ? a : b; }
template <class T> UMEDFAST_HD T min_(T a, T b) { return a < b ? a : b; }

// 2^-e with e the binary exponent of `span` (span in [2^e, 2^(e+1))), exact; spans below the normal range or above
// 2^126 get a clamped exponent, which keeps every rescaled length in [0, 4).
UMEDFAST_HD float pow2_recip(float span) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(span);
#else
  std::memcpy(&bits, &span, sizeof(bits));
#endif
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xffu);
  e = e < 1 ? 1 : (e > 253 ? 253 : e);
  const uint32_t out_bits = static_cast<uint32_t>(254 - e) << 23;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(out_bits);
#else
  float out;
  std::memcpy(&out, &out_bits, sizeof(out));
  return out;
#endif
}

UMEDFAST_HD double pow2_recip(double span) {
  uint64_t bits;
#if defined(__CUDA_ARCH__)
  bits = static_cast<uint64_t>(__double_as_longlong(span));
#else
  std::memcpy(&bits, &span, sizeof(bits));
#endif
  // The exponent is clamped in 32-bit integers: SSE2 has no 64-bit integer compare, so an int64 clamp would keep the
  // baseline x86-64 clone of the double loop scalar.
  int32_t e = static_cast<int32_t>(static_cast<uint32_t>(bits >> 52) & 0x7ffu);
  e = e < 1 ? 1 : (e > 2045 ? 2045 : e);
  const uint64_t out_bits = static_cast<uint64_t>(static_cast<uint32_t>(2046 - e)) << 52;
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(out_bits));
#else
  double out;
  std::memcpy(&out, &out_bits, sizeof(out));
  return out;
#endif
}

// IoU (or GIoU) of box a = (ax1, ay1, ax2, ay2) and box b, computed in Acc (float or double).
//   IoU  = inter / union, 0 when union == 0 (both boxes empty) or when any coordinate is NaN/inf.
//   GIoU = IoU - (C - union) / C with C the area of the smallest box enclosing both (taken from the raw corners);
//          IoU when C == 0; -1 when any coordinate is NaN/inf. Results are clamped to [0, 1] / [-1, 1].
//
// Branch-free by construction, so that CPU loops over it vectorize (every SIMD clone, see csrc/cpu): each `?:` picks
// between values that are computed anyway (max/min/clamp), and no floating-point operation sits on one side of a
// condition. GCC's default -ftrapping-math forbids if-converting a conditional FP operation (a division, a
// subtraction, a double->float conversion), and a single one keeps the whole loop scalar. Hence:
//   - the divisions are unconditional: inter / union gives NaN for 0/0, which the final clamp maps to 0; the GIoU
//     divisor is max(C, tiny), exact for every C > 0 (C >= 2^-46 after rescaling) and giving (0 - 0) / tiny = 0 for
//     C == 0 (then union == 0 too);
//   - non-finite inputs are not tested with a select: `probe` (0 for finite inputs, NaN otherwise) is added to the
//     result before the clamp, and the clamp sends NaN to the bottom of the range (IoU 0, GIoU -1).
// Smallest positive normal number of Acc (std::numeric_limits<Acc>::min(), spelled out so nvcc needs no <limits>).
template <class Acc> UMEDFAST_HD Acc tiny_();
template <> UMEDFAST_HD float tiny_<float>() { return 1.17549435082228750797e-38f; }
template <> UMEDFAST_HD double tiny_<double>() { return 2.22507385850720138309e-308; }

// Every finite Acc x with x == 0 or 2^-40 <= |x| <= 2^40 is "plain-safe": for boxes whose eight coordinates are all
// plain-safe, IoU / GIoU need neither the rescaling nor the finiteness probe. Every nonzero difference of two such
// numbers is a multiple of 2^-63 (float; 2^-92 double) and at most 2^41, so widths, areas (>= 2^-126 when nonzero,
// <= 2^82) and their sums stay normal and finite, and a power-of-two scale would not change a single rounding.
// The CPU pairwise kernel tests this per row / once for b and then runs plain_iou_unclamped (same results up to ~1e-38
// absolute).
template <class Acc> UMEDFAST_HD bool plain_safe(Acc x) {
  const Acc ax = max_(x, -x);  // |x|; NaN stays NaN and fails every test below
  // Non-short-circuit & and | so that loops over it vectorize. 2^40 and 2^-40:
  return (ax <= Acc(1099511627776.0)) & ((ax >= Acc(9.094947017729282379e-13)) | (ax == Acc(0)));
}

// Area of a box with plain-safe coordinates (0 when empty or inverted).
template <class Acc> UMEDFAST_HD Acc plain_area(Acc x1, Acc y1, Acc x2, Acc y2) {
  return max_(x2 - x1, Acc(0)) * max_(y2 - y1, Acc(0));
}

// IoU of two boxes with plain-safe coordinates, their plain_area()s given (a pairwise loop computes each once),
// before the final min(., 1) (rounding, e.g. an FMA, can put it 1 ulp above 1; like clamp_overlap, apply it after any
// narrowing conversion). Never NaN: union >= inter, and union == 0 only when inter == 0, so inter / max(union, tiny)
// is exact for every union > 0 (union >= 2^-126 then) and 0 for union == 0, with no select after the division.
template <class Acc>
UMEDFAST_HD Acc plain_iou_unclamped(Acc ax1, Acc ay1, Acc ax2, Acc ay2, Acc area_a, Acc bx1, Acc by1, Acc bx2,
                                    Acc by2, Acc area_b) {
  const Acc iw = max_(min_(ax2, bx2) - max_(ax1, bx1), Acc(0));
  const Acc ih = max_(min_(ay2, by2) - max_(ay1, by1), Acc(0));
  const Acc inter = iw * ih;
  const Acc uni = area_a + area_b - inter;
  return inter / max_(uni, tiny_<Acc>());
}

// The overlap before its final clamp: NaN stands for "bottom of the range" (0/0, non-finite input, overflow).
// Kernels that narrow the result (double -> float) clamp after the conversion (clamp_overlap), which gives the same
// value (0, 1 and -1 are exact in float and rounding is monotonic) and keeps the conversion unconditional.
template <Overlap kOp, class Acc>
UMEDFAST_HD Acc box_overlap_unclamped(Acc ax1, Acc ay1, Acc ax2, Acc ay2, Acc bx1, Acc by1, Acc bx2, Acc by2) {
  const Acc zero(0), one(1);
  // x * 0 is 0 for finite x and NaN for inf/NaN: one probe for all eight coordinates.
  const Acc probe = ax1 * zero + ay1 * zero + ax2 * zero + ay2 * zero + bx1 * zero + by1 * zero + bx2 * zero +
                    by2 * zero;

  const Acc span_x = max_(ax2, bx2) - min_(ax1, bx1);
  const Acc span_y = max_(ay2, by2) - min_(ay1, by1);
  const Acc sx = pow2_recip(span_x);
  const Acc sy = pow2_recip(span_y);

  const Acc aw = max_(ax2 - ax1, zero) * sx, ah = max_(ay2 - ay1, zero) * sy;
  const Acc bw = max_(bx2 - bx1, zero) * sx, bh = max_(by2 - by1, zero) * sy;
  const Acc iw = max_(min_(ax2, bx2) - max_(ax1, bx1), zero) * sx;
  const Acc ih = max_(min_(ay2, by2) - max_(ay1, by1), zero) * sy;
  const Acc inter = iw * ih;
  const Acc uni = aw * ah + bw * bh - inter;  // >= max(area_a, area_b): no cancellation

  if constexpr (kOp == Overlap::kIoU) {
    return inter / uni + probe;  // NaN for 0/0 (both boxes empty) and for non-finite inputs
  } else {
    const Acc iou = min_(max_(inter / uni, zero), one);  // NaN (0/0, overflow) -> 0
    const Acc cw = max_(span_x, zero) * sx, ch = max_(span_y, zero) * sy;
    const Acc c = cw * ch;
    return iou - (c - uni) / max_(c, tiny_<Acc>()) + probe;
  }
}

// Clamp to [0, 1] (IoU) or [-1, 1] (GIoU); NaN goes to the bottom of the range (max_ keeps its second operand when
// the first is NaN; x86 maxps / minps are exactly max_ / min_).
template <Overlap kOp, class T>
UMEDFAST_HD T clamp_overlap(T v) {
  return min_(max_(v, T(kOp == Overlap::kIoU ? 0 : -1)), T(1));
}

template <Overlap kOp, class Acc>
UMEDFAST_HD Acc box_overlap(Acc ax1, Acc ay1, Acc ax2, Acc ay2, Acc bx1, Acc by1, Acc bx2, Acc by2) {
  return clamp_overlap<kOp, Acc>(box_overlap_unclamped<kOp, Acc>(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2));
}

}  // namespace umedfast
