// Loops of the CPU box-overlap ops, torch-free (a standalone harness can include this file).
//
// Each loop calls the scalar formula of box_iou_math.h per box; the compiler vectorizes it because the formula is
// branch-free: every select is on values computed unconditionally (no division or other FP op that runs only on one
// side of a condition: under GCC's default -ftrapping-math such an op blocks if-conversion and so vectorization).
// box_iou_cpu.cpp compiles these templates once per instruction set (AVX-512 / AVX2+FMA / baseline x86-64 on x86-64,
// the baseline NEON / scalar target elsewhere) and picks one at run time.
#pragma once

#include <cstdint>
#include <cstring>

#include "box_iou_math.h"

namespace umedfast {
namespace cpu {

// IEEE half (bit patterns) -> float, branch-free with integer ops and one unconditional float subtraction, so the
// loop vectorizes in every variant (c10::Half's own conversion is scalar unless the whole file is built with F16C).
// Normal, subnormal, zero, inf and NaN inputs convert exactly.
UMEDFAST_HD void half_bits_to_float(const uint16_t* __restrict__ in, float* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = in[i];
    const uint32_t mag = (h & 0x7fffu) << 13;          // exponent + mantissa in float position
    const uint32_t exp = mag & (0x7c00u << 13);
    const uint32_t normal = mag + ((127u - 15u) << 23);  // rebias
    const uint32_t infnan = normal + ((128u - 16u) << 23);
    // subnormal half (exp == 0): value = mantissa * 2^-24 = as_float(mag + 113 << 23) - 2^-14, computed always
    float sub;
    const uint32_t sub_bits = mag + (113u << 23);
    std::memcpy(&sub, &sub_bits, sizeof(sub));
    sub -= 6.103515625e-05f;  // 2^-14
    uint32_t sub_out;
    std::memcpy(&sub_out, &sub, sizeof(sub_out));
    const uint32_t big = exp == (0x7c00u << 13) ? infnan : normal;
    // mask select (not ?:), so that GCC does not sink the subtraction above into a branch (see the file comment)
    const uint32_t is_sub = 0u - static_cast<uint32_t>(exp == 0);
    const uint32_t bits = (sub_out & is_sub) | (big & ~is_sub) | ((h & 0x8000u) << 16);
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    out[i] = f;
  }
}

// True when every value of x[0, n) is plain-safe (box_iou_math.h): then the plain formula is exact enough.
template <class T, class Acc>
UMEDFAST_HD bool all_plain_safe(const T* __restrict__ x, int64_t n) {
  unsigned ok = 1;
  for (int64_t i = 0; i < n; ++i) ok &= static_cast<unsigned>(plain_safe<Acc>(static_cast<Acc>(x[i])));
  return ok != 0;
}

// out[i] = overlap(a[i], b[i]) for i in [0, n); a, b are [n, 4] xyxy rows (array of structures, read as such: GCC
// turns the four strided loads into a load + in-register transpose, so no structure-of-arrays copy is needed).
// Always the rescaled formula with the finiteness probe: this loop is bound by memory bandwidth (32 bytes read per
// box), and a separate plain-safety pass over each block (as pairwise does for its rows) measured ~2x slower than
// the extra arithmetic it saves.
template <Overlap kOp, class T, class Acc>
UMEDFAST_HD void paired_range(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const Acc ax1 = static_cast<Acc>(a[4 * i + 0]), ay1 = static_cast<Acc>(a[4 * i + 1]);
    const Acc ax2 = static_cast<Acc>(a[4 * i + 2]), ay2 = static_cast<Acc>(a[4 * i + 3]);
    const Acc bx1 = static_cast<Acc>(b[4 * i + 0]), by1 = static_cast<Acc>(b[4 * i + 1]);
    const Acc bx2 = static_cast<Acc>(b[4 * i + 2]), by2 = static_cast<Acc>(b[4 * i + 3]);
    out[i] = clamp_overlap<kOp, float>(
        static_cast<float>(box_overlap_unclamped<kOp, Acc>(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)));
  }
}

// soa = x1[m], y1[m], x2[m], y2[m], area[m] (plain_area) from b [m, 4], i.e. 5 * m values; returns whether every
// coordinate is plain-safe (box_iou_math.h).
template <class T, class Acc>
UMEDFAST_HD bool to_soa(const T* __restrict__ b, int64_t m, Acc* __restrict__ soa) {
  for (int64_t j = 0; j < m; ++j) {
    const Acc x1 = static_cast<Acc>(b[4 * j + 0]), y1 = static_cast<Acc>(b[4 * j + 1]);
    const Acc x2 = static_cast<Acc>(b[4 * j + 2]), y2 = static_cast<Acc>(b[4 * j + 3]);
    soa[j] = x1;
    soa[m + j] = y1;
    soa[2 * m + j] = x2;
    soa[3 * m + j] = y2;
    soa[4 * m + j] = plain_area(x1, y1, x2, y2);  // meaningful only when all of b is plain-safe
  }
  return all_plain_safe<Acc, Acc>(soa, 4 * m);
}

// One output row: IoU of box a with every box of bsoa (see to_soa). kPlain: a and b plain-safe, plain_iou_unclamped with the
// precomputed areas; otherwise the rescaled formula with the finiteness probe.
template <class Acc, bool kPlain>
UMEDFAST_HD void pairwise_row(Acc ax1, Acc ay1, Acc ax2, Acc ay2, const Acc* __restrict__ bsoa, float* __restrict__ o,
                              int64_t m) {
  const Acc* __restrict__ bx1 = bsoa;
  const Acc* __restrict__ by1 = bsoa + m;
  const Acc* __restrict__ bx2 = bsoa + 2 * m;
  const Acc* __restrict__ by2 = bsoa + 3 * m;
  const Acc* __restrict__ barea = bsoa + 4 * m;
  if constexpr (kPlain) {
    const Acc area_a = plain_area(ax1, ay1, ax2, ay2);
    for (int64_t j = 0; j < m; ++j) {
      o[j] = min_(static_cast<float>(plain_iou_unclamped<Acc>(ax1, ay1, ax2, ay2, area_a, bx1[j], by1[j], bx2[j],
                                                               by2[j], barea[j])),
                  1.0f);
    }
  } else {
    for (int64_t j = 0; j < m; ++j) {
      o[j] = clamp_overlap<Overlap::kIoU, float>(static_cast<float>(
          box_overlap_unclamped<Overlap::kIoU, Acc>(ax1, ay1, ax2, ay2, bx1[j], by1[j], bx2[j], by2[j])));
    }
  }
}

// out[i, j] = IoU(a[i], b[j]) for rows i in [0, rows); b given as SoA (see to_soa, b_plain = its return value), out
// rows of length m. Rows whose a box is plain-safe too (the usual case: pixels or [0, 1]) take the plain loop.
template <class T, class Acc>
UMEDFAST_HD void pairwise_rows(const T* __restrict__ a, const Acc* __restrict__ bsoa, bool b_plain,
                               float* __restrict__ out, int64_t rows, int64_t m) {
  for (int64_t i = 0; i < rows; ++i) {
    const Acc ax1 = static_cast<Acc>(a[4 * i + 0]), ay1 = static_cast<Acc>(a[4 * i + 1]);
    const Acc ax2 = static_cast<Acc>(a[4 * i + 2]), ay2 = static_cast<Acc>(a[4 * i + 3]);
    if (b_plain && plain_safe(ax1) && plain_safe(ay1) && plain_safe(ax2) && plain_safe(ay2)) {
      pairwise_row<Acc, true>(ax1, ay1, ax2, ay2, bsoa, out + i * m, m);
    } else {
      pairwise_row<Acc, false>(ax1, ay1, ax2, ay2, bsoa, out + i * m, m);
    }
  }
}

}  // namespace cpu
}  // namespace umedfast
