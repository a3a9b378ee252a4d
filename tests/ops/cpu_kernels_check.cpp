// Standalone check of the torch-free loops in csrc/cpu/box_iou_cpu_kernels.h against a float64 textbook reference:
// paired IoU / GIoU (float and double), pairwise (rescaled and plain rows), random + empty / inverted / non-finite /
// huge / tiny boxes. tests/ops/test_ops_cpu_clones.py compiles it for aarch64 and runs it under qemu-aarch64 (where a
// cross compiler and qemu are installed), so the NEON build is checked on an x86-64 machine. Exit status 0 = pass.
#include "cpu/box_iou_cpu_kernels.h"
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
using namespace umedfast;
static double ref(const double* a, const double* b, bool giou) {
  for (int k = 0; k < 4; ++k) if (!std::isfinite(a[k]) || !std::isfinite(b[k])) return giou ? -1.0 : 0.0;
  auto cl = [](double v) { return v > 0 ? v : 0.0; };
  double aa = cl(a[2]-a[0])*cl(a[3]-a[1]), ab = cl(b[2]-b[0])*cl(b[3]-b[1]);
  double in = cl(std::fmin(a[2],b[2])-std::fmax(a[0],b[0]))*cl(std::fmin(a[3],b[3])-std::fmax(a[1],b[1]));
  double u = aa+ab-in, iou = u > 0 ? in/u : 0.0;
  if (!giou) return iou;
  double c = cl(std::fmax(a[2],b[2])-std::fmin(a[0],b[0]))*cl(std::fmax(a[3],b[3])-std::fmin(a[1],b[1]));
  return c > 0 ? iou-(c-u)/c : iou;
}
int main() {
  const long n = 1037; std::mt19937 g(7); std::normal_distribution<double> nd(0, 1); std::uniform_real_distribution<double> ud(0, 1);
  std::vector<double> ad(4*n), bd(4*n);
  for (long i = 0; i < n; ++i) { double x=nd(g), y=nd(g); ad[4*i]=x; ad[4*i+1]=y; ad[4*i+2]=x+ud(g); ad[4*i+3]=y+ud(g);
    for (int k=0;k<4;++k) bd[4*i+k]=ad[4*i+k]+0.3*nd(g); }
  const double nan = NAN, inf = INFINITY;
  double sp[][8] = {{0,0,0,0,0,0,0,0},{1,1,0,0,0,0,1,1},{0,0,1,1,nan,0,1,1},{0,0,1,inf,0,0,1,1},{2,2,1,1,3,3,2,2},
                    {1e30f,1e30f,3e30f,3e30f,2e30f,2e30f,4e30f,4e30f},{1e-30f,1e-30f,3e-30f,3e-30f,2e-30f,2e-30f,4e-30f,4e-30f}};
  for (int s = 0; s < 7; ++s) for (int k = 0; k < 4; ++k) { ad[4*(10*s+3)+k] = sp[s][k]; bd[4*(10*s+3)+k] = sp[s][4+k]; }
  std::vector<float> af(ad.begin(), ad.end()), bf(bd.begin(), bd.end()), o(n), ow(n*n), soa(5*n);
  std::vector<double> afd(af.begin(), af.end()), bfd(bf.begin(), bf.end()), soad(5*n);  // float-rounded inputs
  double worst = 0; int bad = 0;
  auto chk = [&](double got, double want, double tol) { double e = std::fabs(got-want); if (!(e <= tol)) ++bad; if (e > worst || std::isnan(got)) worst = std::isnan(got) ? 1e9 : e; };
  for (int giou = 0; giou < 2; ++giou) {
    if (giou) cpu::paired_range<Overlap::kGIoU,float,float>(af.data(), bf.data(), o.data(), n);
    else cpu::paired_range<Overlap::kIoU,float,float>(af.data(), bf.data(), o.data(), n);
    for (long i = 0; i < n; ++i) chk(o[i], ref(&afd[4*i], &bfd[4*i], giou), 4e-6);
    if (giou) cpu::paired_range<Overlap::kGIoU,double,double>(afd.data(), bfd.data(), o.data(), n);
    else cpu::paired_range<Overlap::kIoU,double,double>(afd.data(), bfd.data(), o.data(), n);
    for (long i = 0; i < n; ++i) chk(o[i], ref(&afd[4*i], &bfd[4*i], giou), 1e-6);
  }
  bool plain = cpu::to_soa<float,float>(bf.data(), n, soa.data());
  cpu::pairwise_rows<float,float>(af.data(), soa.data(), plain, ow.data(), n, n);
  for (long i = 0; i < n; ++i) for (long j = 0; j < n; ++j) chk(ow[i*n+j], ref(&afd[4*i], &bfd[4*j], false), 4e-6);
  bool plain3 = cpu::to_soa<float,float>(bf.data(), 3, soa.data());  // first 3 b boxes: random, plain-safe
  cpu::pairwise_rows<float,float>(af.data(), soa.data(), plain3, ow.data(), n, 3);
  for (long i = 0; i < n; ++i) for (long j = 0; j < 3; ++j) chk(ow[i*3+j], ref(&afd[4*i], &bfd[4*j], false), 4e-6);
  printf("plain3=%d; ", (int)plain3);
  printf("pairs checked, bad=%d worst abs err=%.3g (b plain-safe: %d)\n", bad, worst, (int)plain);
  return bad != 0;
}
