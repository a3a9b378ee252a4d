"""Box IoU providers side by side: umedfast (compiled) vs the same formula in plain torch vs torchvision-style.

    python -m pytest bench/bench_iou.py --benchmark-only [--benchmark-columns=median,iqr,rounds]

Providers
- ``umedfast``          : ``umedfast.ops`` (one fused pass in C++/CUDA).
- ``umedfast_fallback`` : the pure-torch path of ``umedfast.ops`` (same robust formula, used when _C is missing).
- ``torch_formula``     : the textbook formula in plain torch ops, per coordinate (what one writes by hand).
- ``torchvision_style`` : torchvision's ``box_iou`` recipe (areas, ``lt``/``rb`` [.., 2] tensors, broadcasting for
  pairwise), written inline so torchvision is not a dependency.
Shapes: paired N = 1e4 and 1e6, pairwise 1024 x 1024 on CPU; paired 2^24 and pairwise 4096 x 4096 on CUDA.
``extra_info`` holds the device, peak memory of one call, and effective GB/s (boxes read + IoUs written).

Which compiled CPU variant ran is part of every CPU group name, e.g. ``paired cpu N=1000000 [avx2 of baseline,avx2;
CPU avx2+fma]`` (``umedfast.ops.cpu_kernel_variant()``, the variants this CPU can run, and its widest SIMD flags), and
of ``extra_info`` (``cpu_variant``, ``cpu_simd``, ``load_avg``). ``UMEDFAST_CPU_ISA=baseline|avx2|avx512`` runs the
suite on another variant.

Same-process side-by-side table (the figures in bench/RESULTS.md; every compiled variant this CPU has, 1 and 2
threads, wall-clock and thread-CPU medians, ratios to plain torch, load average before and after)::

    python bench/bench_iou.py [--threads 1 2] [--rounds 21]
"""
import argparse
import os
import sys
import time

import pytest
import torch

from umedfast import ops

try:
    from conftest import cuda_devices, record, synchronized
except ImportError:  # run as a script from another directory
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conftest import cuda_devices, record, synchronized


def cpu_simd() -> str:
    """The widest SIMD flags of this CPU (from /proc/cpuinfo), e.g. 'avx512f+avx2+fma' or 'avx2+fma'."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return "unknown"
    keep = [x for x in ("avx512f", "avx2", "fma", "asimd", "sve") if x in flags]
    return "+".join(keep) or ("sse2" if "sse2" in flags else "unknown")


def cpu_variant_tag() -> str:
    """'avx2 of baseline,avx2; CPU avx2+fma': the compiled variant that runs, those available, the CPU's flags."""
    return f"{ops.cpu_kernel_variant()} of {','.join(ops.cpu_kernel_variants()) or '-'}; CPU {cpu_simd()}"


def _cpu_extra(device) -> dict:
    if torch.device(device).type != "cpu":
        return {}
    return {"cpu_variant": ops.cpu_kernel_variant(), "cpu_simd": cpu_simd(),
            "load_avg": round(os.getloadavg()[0], 2)}


def torch_formula_paired(a, b):
    ax1, ay1, ax2, ay2 = a.float().unbind(1)
    bx1, by1, bx2, by2 = b.float().unbind(1)
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union, 0.0)


def torch_formula_pairwise(a, b):
    return torch_formula_paired_broadcast(a[:, None, :], b[None, :, :])


def torch_formula_paired_broadcast(a, b):
    ax1, ay1, ax2, ay2 = a.float().unbind(-1)
    bx1, by1, bx2, by2 = b.float().unbind(-1)
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    union = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0) + (bx2 - bx1).clamp(min=0) * (
        by2 - by1).clamp(min=0) - inter
    return torch.where(union > 0, inter / union, 0.0)


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def torchvision_style_pairwise(a, b):
    a, b = a.float(), b.float()
    area1, area2 = _area(a), _area(b)
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)


def torchvision_style_paired(a, b):
    a, b = a.float(), b.float()
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (_area(a) + _area(b) - inter)


PAIRED = {
    "umedfast": ops.box_iou,
    "umedfast_fallback": lambda a, b: ops._overlap_torch(a, b, False),
    "torch_formula": torch_formula_paired,
    "torchvision_style": torchvision_style_paired,
}
PAIRWISE = {
    "umedfast": ops.box_iou_pairwise,
    "umedfast_fallback": lambda a, b: ops._overlap_torch(a[:, None, :], b[None, :, :], False),
    "torch_formula": torch_formula_pairwise,
    "torchvision_style": torchvision_style_pairwise,
}


def make_boxes(n: int, device, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen)
    wh = torch.rand(n, 2, generator=gen) * 0.3
    return torch.cat([xy, xy + wh], dim=1).to(device=device, dtype=dtype)


PAIRED_CASES = [("cpu", 10_000), ("cpu", 1_000_000)] + [(d, 1 << 24) for d in cuda_devices()]
PAIRWISE_CASES = [("cpu", 1024, 1024)] + [(d, 4096, 4096) for d in cuda_devices()]


@pytest.mark.parametrize("provider", list(PAIRED))
@pytest.mark.parametrize("device,n", PAIRED_CASES, ids=[f"{d}-N{n}" for d, n in PAIRED_CASES])
def test_paired_iou(benchmark, provider, device, n):
    benchmark.group = f"paired {device} N={n}" + (f" [{cpu_variant_tag()}]" if device == "cpu" else "")
    a, b = make_boxes(n, device, seed=1), make_boxes(n, device, seed=2)
    fn = synchronized(PAIRED[provider], device)
    torch.testing.assert_close(fn(a, b), torch_formula_paired(a, b), atol=1e-5, rtol=1e-5)  # same answer first
    record(benchmark, lambda: fn(a, b), device, provider=provider, compiled=ops.has_compiled_ops(),
           **_cpu_extra(device))
    benchmark(fn, a, b)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["effective_GBps"] = round((2 * a.nbytes + 4 * n) / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("provider", list(PAIRWISE))
@pytest.mark.parametrize("device,n,m", PAIRWISE_CASES, ids=[f"{d}-{n}x{m}" for d, n, m in PAIRWISE_CASES])
def test_pairwise_iou(benchmark, provider, device, n, m):
    benchmark.group = f"pairwise {device} {n}x{m}" + (f" [{cpu_variant_tag()}]" if device == "cpu" else "")
    a, b = make_boxes(n, device, seed=3), make_boxes(m, device, seed=4)
    fn = synchronized(PAIRWISE[provider], device)
    torch.testing.assert_close(fn(a, b), torch_formula_pairwise(a, b), atol=1e-5, rtol=1e-5)
    record(benchmark, lambda: fn(a, b), device, provider=provider, compiled=ops.has_compiled_ops(),
           **_cpu_extra(device))
    benchmark(fn, a, b)
    if benchmark.stats is not None:
        benchmark.extra_info["effective_GBps"] = round(
            (a.nbytes + b.nbytes + 4 * n * m) / benchmark.stats.stats.median / 1e9, 2)


# ------------------------------------------------------------------------ same-process side-by-side table (script)
def _median_ms(fn, args, rounds: int, clock) -> float:
    fn(*args)  # warm-up (allocator, page faults)
    times = []
    for _ in range(rounds):
        t0 = clock()
        fn(*args)
        times.append(clock() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def side_by_side(threads=(1, 2), rounds: int = 21) -> list[dict]:
    """Every provider and every compiled CPU variant at paired N=1e6 and pairwise 1024x1024, in this one process.
    Wall-clock medians, and thread-CPU medians for 1 thread (time.thread_time: the figure least disturbed when other
    jobs share the cores; with 2 threads only wall-clock means anything)."""
    cases = [("paired N=1000000", PAIRED, make_boxes(1_000_000, "cpu", seed=1), make_boxes(1_000_000, "cpu", seed=2)),
             ("pairwise 1024x1024", PAIRWISE, make_boxes(1024, "cpu", seed=3), make_boxes(1024, "cpu", seed=4))]
    variants = ops.cpu_kernel_variants()
    rows = []
    start = ops.cpu_kernel_variant()
    try:
        for nthreads in threads:
            torch.set_num_threads(nthreads)
            for case, providers, a, b in cases:
                providers = {k: v for k, v in providers.items() if k != "umedfast_fallback"}
                plain = {}
                for name, fn in providers.items():
                    if name == "umedfast":
                        continue
                    plain[name] = (_median_ms(fn, (a, b), max(5, rounds // 3), time.perf_counter),
                                   _median_ms(fn, (a, b), max(5, rounds // 3), time.thread_time))
                # an old _C without the variant ops: one unnamed compiled variant (its target_clones pick)
                for variant in variants or (["compiled, variant not exposed"] if ops.has_compiled_ops() else
                                            ["fallback"]):
                    if variants:
                        ops.cpu_kernel_variant(variant)
                    wall = _median_ms(providers["umedfast"], (a, b), rounds, time.perf_counter)
                    cpu = _median_ms(providers["umedfast"], (a, b), rounds, time.thread_time)
                    rows.append({"threads": nthreads, "case": case, "provider": f"umedfast[{variant}]",
                                 "wall_ms": wall, "cpu_ms": cpu,
                                 **{f"x_{k}_wall": plain[k][0] / wall for k in plain},
                                 **{f"x_{k}_cpu": plain[k][1] / cpu for k in plain}})
                for name, (wall, cpu) in plain.items():
                    rows.append({"threads": nthreads, "case": case, "provider": name, "wall_ms": wall, "cpu_ms": cpu})
    finally:
        if variants:
            ops.cpu_kernel_variant(start)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=side_by_side.__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    from conftest import cpu_model

    load0 = os.getloadavg()
    rows = side_by_side(tuple(args.threads), args.rounds)
    load1 = os.getloadavg()
    print(f"# {cpu_model()}, CPU SIMD {cpu_simd()}, torch {torch.__version__} (ATen CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}), compiled variants {ops.cpu_kernel_variants()}, "
          f"default {ops.cpu_kernel_variant()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average (1/5/15 min) before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
          f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}, {os.cpu_count()} CPUs")
    print("| threads | case | provider | median wall ms | median thread-CPU ms | x torch_formula (wall / CPU) "
          "| x torchvision_style (wall / CPU) |")
    print("|---|---|---|---:|---:|---|---|")
    for r in rows:
        one = r["threads"] == 1  # thread-CPU time of the calling thread only means something with 1 thread
        xt = (f"{r['x_torch_formula_wall']:.1f}x" + (f" / {r['x_torch_formula_cpu']:.1f}x" if one else "")
              if "x_torch_formula_wall" in r else "")
        xv = (f"{r['x_torchvision_style_wall']:.1f}x" + (f" / {r['x_torchvision_style_cpu']:.1f}x" if one else "")
              if "x_torchvision_style_wall" in r else "")
        cpu = f"{r['cpu_ms']:.3f}" if r["threads"] == 1 else "-"
        print(f"| {r['threads']} | {r['case']} | {r['provider']} | {r['wall_ms']:.3f} | {cpu} | {xt} | {xv} |")


if __name__ == "__main__":
    main()
