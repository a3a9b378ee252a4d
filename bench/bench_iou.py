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
"""
import pytest
import torch

from umedfast import ops

from conftest import cuda_devices, record, synchronized


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
    benchmark.group = f"paired {device} N={n}"
    a, b = make_boxes(n, device, seed=1), make_boxes(n, device, seed=2)
    fn = synchronized(PAIRED[provider], device)
    torch.testing.assert_close(fn(a, b), torch_formula_paired(a, b), atol=1e-5, rtol=1e-5)  # same answer first
    record(benchmark, lambda: fn(a, b), device, provider=provider, compiled=ops.has_compiled_ops())
    benchmark(fn, a, b)
    benchmark.extra_info["effective_GBps"] = round((2 * a.nbytes + 4 * n) / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("provider", list(PAIRWISE))
@pytest.mark.parametrize("device,n,m", PAIRWISE_CASES, ids=[f"{d}-{n}x{m}" for d, n, m in PAIRWISE_CASES])
def test_pairwise_iou(benchmark, provider, device, n, m):
    benchmark.group = f"pairwise {device} {n}x{m}"
    a, b = make_boxes(n, device, seed=3), make_boxes(m, device, seed=4)
    fn = synchronized(PAIRWISE[provider], device)
    torch.testing.assert_close(fn(a, b), torch_formula_pairwise(a, b), atol=1e-5, rtol=1e-5)
    record(benchmark, lambda: fn(a, b), device, provider=provider, compiled=ops.has_compiled_ops())
    benchmark(fn, a, b)
    benchmark.extra_info["effective_GBps"] = round(
        (a.nbytes + b.nbytes + 4 * n * m) / benchmark.stats.stats.median / 1e9, 2)
