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
  int64_t e = static_cast<int64_t>((bits >> 52) & 0x7ffu);
  e = e < 1 ? 1 : (e > 2045 ? 2045 : e);
  const uint64_t out_bits = static_cast<uint64_t>(2046 - e) << 52;
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
template <Overlap kOp, class Acc>
UMEDFAST_HD Acc box_overlap(Acc ax1, Acc ay1, Acc ax2, Acc ay2, Acc bx1, Acc by1, Acc bx2, Acc by2) {
  const Acc zero(0), one(1);
  // x * 0 is 0 for finite x and NaN for inf/NaN: one test for all eight coordinates, branch-free.
  const Acc probe = ax1 * zero + ay1 * zero + ax2 * zero + ay2 * zero + bx1 * zero + by1 * zero + bx2 * zero +
                    by2 * zero;
  const bool finite = probe == zero;

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
  Acc iou = inter / (uni > zero ? uni : one);  // inter == 0 whenever uni == 0
  iou = iou > zero ? (iou < one ? iou : one) : zero;  // also maps NaN (overflow) to 0

  if constexpr (kOp == Overlap::kIoU) {
    return finite ? iou : zero;
  } else {
    const Acc cw = max_(span_x, zero) * sx, ch = max_(span_y, zero) * sy;
    const Acc c = cw * ch;
    Acc giou = c > zero ? iou - (c - uni) / c : iou;
    giou = giou > -one ? (giou < one ? giou : one) : -one;  // also maps NaN to -1
    return finite ? giou : -one;
  }
}

}  // namespace umedfast
