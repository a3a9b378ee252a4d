"""umedfast.ops box overlaps (compiled CPU kernels and the pure-torch fallback) against a float64 reference."""
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umedfast import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
IMPLS = ["compiled", "fallback"]
needs_c = pytest.mark.skipif(not ops.has_compiled_ops(), reason="umedfast._C not built")


def ref_overlap(a: torch.Tensor, b: torch.Tensor, giou: bool, pairwise: bool = False) -> torch.Tensor:
    """Textbook IoU / GIoU in float64 from the (dtype-rounded) inputs; NaN/inf pairs -> 0 (IoU) / -1 (GIoU)."""
    a, b = a.double(), b.double()
    if pairwise:
        a, b = a[:, None, :], b[None, :, :]
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union, 0.0)
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    if not giou:
        return torch.where(finite, iou, 0.0)
    c = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0) * (
        torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    g = torch.where(c > 0, iou - (c - union) / c, iou)
    return torch.where(finite, g, -1.0)


def run(impl: str, op: str, a, b):
    """Call one op through the compiled kernel (torch.ops) or the pure-torch fallback."""
    if impl == "compiled":
        if not ops.has_compiled_ops():
            pytest.skip("umedfast._C not built")
        return getattr(torch.ops.umedfast, op)(a, b)
    with warnings.catch_warnings():  # the one-time fallback warning is tested in a fresh interpreter below
        warnings.simplefilter("ignore", RuntimeWarning)
        return ops._fallback(op, a, b, paired=op != "box_iou_pairwise", giou=op == "generalized_box_iou")


def random_boxes(n: int, gen: torch.Generator, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    xy = torch.randn(n, 2, generator=gen, dtype=torch.float64) * scale + offset
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * scale
    return torch.cat([xy, xy + wh], dim=1)


def assert_close_to_ref(out, a, b, giou, pairwise=False, atol=2e-6, rtol=2e-5):
    expect = ref_overlap(a, b, giou, pairwise)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expect, atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------------ accuracy
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 37, 1025])
def test_paired_random_matches_float64_reference(impl, dtype, n):
    gen = torch.Generator().manual_seed(n)
    a = random_boxes(n, gen).to(dtype)
    b = (a.double() + 0.3 * torch.randn(n, 4, generator=gen, dtype=torch.float64)).to(dtype)  # mostly overlapping
    assert_close_to_ref(run(impl, "box_iou", a, b), a, b, giou=False)
    assert_close_to_ref(run(impl, "generalized_box_iou", a, b), a, b, giou=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pairwise_random_matches_float64_reference(impl, dtype):
    gen = torch.Generator().manual_seed(7)
    a, b = random_boxes(37, gen).to(dtype), random_boxes(129, gen).to(dtype)
    out = run(impl, "box_iou_pairwise", a, b)
    assert out.shape == (37, 129)
    assert_close_to_ref(out, a, b, giou=False, pairwise=True)


def test_error_vs_reference_is_within_2x_of_plain_torch_same_dtype():
    """flash-attention's accuracy rule, for half inputs: our error <= 2x the error of torch's own fp16 formula."""
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float16, torch.bfloat16):
        a = random_boxes(4096, gen, scale=50, offset=300).to(dtype)
        b = (a.double() + 5 * torch.randn(4096, 4, generator=gen, dtype=torch.float64)).to(dtype)
        exact = ref_overlap(a, b, giou=False)
        ax1, ay1, ax2, ay2 = a.unbind(-1)
        bx1, by1, bx2, by2 = b.unbind(-1)
        inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * (
            torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
        union = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0) + (bx2 - bx1).clamp(min=0) * (
            by2 - by1).clamp(min=0) - inter
        torch_same_dtype = torch.where(union > 0, inter / union, 0).nan_to_num(0).double()
        ours = ops.box_iou(a, b).double()
        assert (ours - exact).abs().max() <= 2 * (torch_same_dtype - exact).abs().max() + 1e-7


ADVERSARIAL = [
    # (a, b, iou, giou) exact expectations
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0, 1.0),                       # identical
    ([0, 0, 1, 1], [1, 0, 2, 1], 0.0, 0.0),                       # touching edge: no overlap, enclosing = union
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1 / 3),                    # disjoint
    ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16, 1 / 16),                 # containment
    ([0, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0),                       # two points: C = 0
    ([0, 0, 0, 5], [0, 0, 0, 5], 0.0, 0.0),                       # two identical zero-width boxes
    ([0, 0, 0, 1], [0, 0, 1, 1], 0.0, 0.0),                       # zero-width box on b's edge
    ([2, 2, 1, 1], [0, 0, 1, 1], 0.0, 0.0),                       # inverted a (raw corners enclose b)
    ([1, 1, 0, 0], [1, 1, 0, 0], 0.0, 0.0),                       # both inverted, identical
    ([math.nan, 0, 1, 1], [0, 0, 1, 1], 0.0, -1.0),               # NaN
    ([0, 0, math.inf, 1], [0, 0, 1, 1], 0.0, -1.0),               # +inf
    ([-math.inf, 0, 1, 1], [0, 0, 1, 1], 0.0, -1.0),              # -inf
    ([0, 0, 1, 1], [math.nan] * 4, 0.0, -1.0),                    # all NaN in b
    ([1e30, 1e30, 3e30, 3e30], [2e30, 2e30, 4e30, 4e30], 1 / 7, 1 / 7 - 2 / 9),  # areas overflow fp32 naively
    ([1e-30, 1e-30, 3e-30, 3e-30], [2e-30, 2e-30, 4e-30, 4e-30], 1 / 7, 1 / 7 - 2 / 9),  # areas underflow
    ([1e6, 1e6, 1e6 + 1, 1e6 + 1], [1e6 + 0.5, 1e6, 1e6 + 1.5, 1e6 + 1], 1 / 3, 1 / 3),  # big offset, unit boxes
    ([-1e38, -1, 1e38, 1], [-1, -1, 1, 1], 5e-39, 5e-39),         # span 2e38 near fp32 max (clamped scale)
]


@pytest.mark.parametrize("impl", IMPLS)
def test_adversarial_boxes_exact_values(impl):
    a = torch.tensor([row[0] for row in ADVERSARIAL], dtype=torch.float32)
    b = torch.tensor([row[1] for row in ADVERSARIAL], dtype=torch.float32)
    iou = torch.tensor([row[2] for row in ADVERSARIAL], dtype=torch.float64)
    giou = torch.tensor([row[3] for row in ADVERSARIAL], dtype=torch.float64)
    got_iou, got_giou = run(impl, "box_iou", a, b), run(impl, "generalized_box_iou", a, b)
    torch.testing.assert_close(got_iou.double(), iou, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_giou.double(), giou, atol=1e-6, rtol=1e-5)
    # pairwise diagonal == paired, and the NaN rows stay 0 in every column
    pw = run(impl, "box_iou_pairwise", a, b)
    torch.testing.assert_close(pw.diagonal(), got_iou, atol=1e-7, rtol=0)
    assert torch.isfinite(pw).all() and (pw[9:12] == 0).all() and (pw[:, 12] == 0).all()


_magnitudes = st.one_of(st.just(0.0), st.floats(2.0**-100, 2.0**100, width=32))  # ~[7.9e-31, 1.3e30]
_coord = st.builds(lambda m, s: m * s, _magnitudes, st.sampled_from([-1.0, 1.0]))
_pair = st.lists(_coord, min_size=8, max_size=8)


@needs_c
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pair, min_size=1, max_size=16))
def test_hypothesis_any_magnitude_matches_reference(rows):
    """Coordinates anywhere in +-[2^-100, 2^100] (plus 0), inverted and degenerate boxes included."""
    t = torch.tensor(rows, dtype=torch.float32)
    a, b = t[:, :4].contiguous(), t[:, 4:].contiguous()
    for dtype in (torch.float32, torch.float64):
        x, y = a.to(dtype), b.to(dtype)
        assert_close_to_ref(ops.box_iou(x, y), x, y, giou=False, atol=1e-6, rtol=1e-5)
        assert_close_to_ref(ops.generalized_box_iou(x, y), x, y, giou=True, atol=4e-6, rtol=1e-5)
        assert_close_to_ref(ops.box_iou_pairwise(x, y), x, y, giou=False, pairwise=True, atol=1e-6, rtol=1e-5)


@needs_c
def test_compiled_and_fallback_agree_on_mixed_batch():
    gen = torch.Generator().manual_seed(11)
    a = random_boxes(2000, gen, scale=10)
    b = a + torch.randn(2000, 4, generator=gen, dtype=torch.float64) * 5  # some inverted, some disjoint
    a[::97, 1] = math.nan
    b[::89, 2] = -math.inf
    for dtype in DTYPES:
        x, y = a.to(dtype), b.to(dtype)
        for op, giou in (("box_iou", False), ("generalized_box_iou", True)):
            torch.testing.assert_close(getattr(torch.ops.umedfast, op)(x, y), ops._overlap_torch(x, y, giou),
                                       atol=3e-7, rtol=1e-6)


# ----------------------------------------------------------------------------------------- shapes, layouts
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl):
    e, one = torch.zeros(0, 4), torch.tensor([[0.0, 0, 1, 1]])
    assert run(impl, "box_iou", e, e).shape == (0,)
    assert run(impl, "generalized_box_iou", e, e).shape == (0,)
    assert run(impl, "box_iou_pairwise", e, one).shape == (0, 1)
    assert run(impl, "box_iou_pairwise", one, e).shape == (1, 0)
    assert run(impl, "box_iou_pairwise", e, e).dtype == torch.float32


@needs_c
def test_non_contiguous_and_misaligned_inputs():
    gen = torch.Generator().manual_seed(5)
    base = random_boxes(302, gen)
    for dtype in DTYPES:
        t = base.to(dtype)
        strided = t.t().contiguous().t()        # [N, 4] with strides (1, N)
        shifted = t[1:]                         # storage offset of one box (8 bytes for fp16)
        every_other = t[::2]
        for a, b in ((strided, t), (shifted, t[:-1]), (every_other, t[1::2])):
            assert_close_to_ref(ops.box_iou(a, b), a, b, giou=False)
            assert_close_to_ref(ops.box_iou_pairwise(a, b[:17]), a, b[:17], giou=False, pairwise=True)


@pytest.mark.parametrize("op", ["box_iou", "generalized_box_iou", "box_iou_pairwise"])
def test_outputs_carry_no_gradient(op):
    a = torch.tensor([[0.0, 0, 2, 2]], requires_grad=True)
    out = getattr(ops, op)(a, torch.tensor([[1.0, 1, 3, 3]]))
    assert not out.requires_grad and out.grad_fn is None


@needs_c
def test_large_paired_batch_crosses_parallel_chunks():
    gen = torch.Generator().manual_seed(9)
    a = random_boxes(100_003, gen).float()
    b = (a.double() + 0.2 * torch.randn(100_003, 4, generator=gen, dtype=torch.float64)).float()
    assert_close_to_ref(ops.box_iou(a, b), a, b, giou=False)


# -------------------------------------------------------------------------------------------------- errors
BAD_INPUTS = [
    ("a 1-D", lambda: (torch.zeros(4), torch.zeros(1, 4)), r"a must have shape \[N, 4\] \(x1, y1, x2, y2\), got \[4\]"),
    ("b [3, 5]", lambda: (torch.zeros(3, 4), torch.zeros(3, 5)), r"b must have shape \[N, 4\].*got \[3, 5\]"),
    ("int boxes", lambda: (torch.zeros(2, 4, dtype=torch.int64),) * 2,
     r"a must be float16, bfloat16, float32 or float64, got Long"),
    ("mixed dtypes", lambda: (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64)),
     r"a and b must have the same dtype, got Float and Double"),
    ("complex boxes", lambda: (torch.zeros(2, 4, dtype=torch.complex64),) * 2,
     r"a must be float16, bfloat16, float32 or float64, got ComplexFloat"),
    ("mixed devices", lambda: (torch.zeros(2, 4), torch.zeros(2, 4, device="meta")),
     r"a and b must be on the same device, got cpu and meta"),
]


@pytest.mark.parametrize("op", ["box_iou", "generalized_box_iou", "box_iou_pairwise"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_the_same_readable_message(op, case):
    _, make, pattern = case
    a, b = make()
    messages = []
    for call in (lambda: getattr(ops, op)(a, b), lambda: ops._check_pair(op, a, b, op != "box_iou_pairwise")):
        with pytest.raises(RuntimeError, match=rf"umedfast\.{op}: " + pattern) as info:
            call()
        messages.append(str(info.value).splitlines()[0])
    if ops.has_compiled_ops():  # the kernel's TORCH_CHECK (mixed cpu/meta dispatches to the fake kernel's check)
        with pytest.raises(RuntimeError) as info:
            getattr(torch.ops.umedfast, op)(a, b)
        messages.append(str(info.value).splitlines()[0])
    assert len(set(messages)) == 1, messages


@pytest.mark.parametrize("op", ["box_iou", "generalized_box_iou"])
def test_paired_row_mismatch(op):
    a, b = torch.zeros(3, 4), torch.zeros(2, 4)
    msg = rf"umedfast\.{op}: paired boxes need as many rows in a as in b, got 3 and 2"
    with pytest.raises(RuntimeError, match=msg):
        getattr(ops, op)(a, b)
    with pytest.raises(RuntimeError, match=msg):
        ops._fallback(op, a, b, paired=True, giou=False)


# ------------------------------------------------------------------------------- torch.library integration
@needs_c
@pytest.mark.parametrize("op", ["box_iou", "generalized_box_iou", "box_iou_pairwise"])
def test_opcheck(op):
    gen = torch.Generator().manual_seed(1)
    samples = [
        (random_boxes(17, gen).float(), random_boxes(17, gen).float()),
        (random_boxes(5, gen).half(), random_boxes(5, gen).half()),
        (torch.zeros(0, 4), torch.zeros(0, 4)),
    ]
    for a, b in samples:
        torch.library.opcheck(getattr(torch.ops.umedfast, op), (a, b))


@needs_c
def test_works_inside_torch_compile():
    def reward(a, b, grid):
        return ops.box_iou(a, b) + ops.generalized_box_iou(a, b) + ops.box_iou_pairwise(a, grid).amax(dim=1)

    compiled = torch.compile(reward, backend="aot_eager", fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(2)
    for n in (8, 13):
        a, b, grid = random_boxes(n, gen).float(), random_boxes(n, gen).float(), random_boxes(6, gen).float()
        torch.testing.assert_close(compiled(a, b, grid), reward(a, b, grid))


@needs_c
def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b = torch.empty(7, 4, dtype=torch.bfloat16), torch.empty(3, 4, dtype=torch.bfloat16)
        assert torch.ops.umedfast.box_iou_pairwise(a, b).shape == (7, 3)
        out = torch.ops.umedfast.box_iou(a, a)
        assert out.shape == (7,) and out.dtype == torch.float32


@needs_c
def test_build_info_describes_this_build():
    info = ops.build_info()
    assert info["compiled"] is True
    assert set(info["ops"]) == {"box_iou", "box_iou_pairwise", "generalized_box_iou"}
    assert info["torch_version"] == torch.__version__
    if torch.version.cuda is None:  # a CPU torch cannot have CUDA kernels
        assert info["cuda"] is False and info["cuda_archs"] == ""


def test_fallback_without_extension_warns_once_and_matches():
    """A fresh interpreter with the extension disabled: one RuntimeWarning for three calls, reference results."""
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    from umedfast import ops\n"
        "    a = torch.tensor([[0., 0, 2, 2], [0, 0, 1, 1]]); b = torch.tensor([[1., 1, 3, 3], [5, 5, 6, 6]])\n"
        "    r = (ops.box_iou(a, b).tolist(), ops.generalized_box_iou(a, b).tolist(),\n"
        "         ops.box_iou_pairwise(a, b).tolist())\n"
        "print(ops.has_compiled_ops(), len(w), repr(str(w[0].message)) if w else '')\n"
        "print(r)\n"
    )
    env = dict(os.environ, UMEDFAST_DISABLE_COMPILED_OPS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("False 1 ") and "pure-torch fallback" in first, first
    iou, giou, pw = eval(second)  # noqa: S307 - our own subprocess output
    assert iou == pytest.approx([1 / 7, 0.0]) and giou == pytest.approx([1 / 7 - 2 / 9, -(36 - 2) / 36])
    assert sum(pw, []) == pytest.approx([1 / 7, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------------------------- CUDA (skipped on CPU)
needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.build_info().get("cuda")), reason="no CUDA device or no CUDA kernels built")


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_match_cpu_and_reference(dtype):
    gen = torch.Generator().manual_seed(21)
    a = random_boxes(4099, gen, scale=20)
    b = a + torch.randn(4099, 4, generator=gen, dtype=torch.float64) * 8
    a[::101] = torch.tensor([math.nan, 0, 1, 1], dtype=torch.float64)
    a[::53] = torch.tensor([1e30, 1e30, 3e30, 3e30], dtype=torch.float64)
    a, b = a.to(dtype), b.to(dtype)
    ga, gb = a.cuda(), b.cuda()
    for op, giou in (("box_iou", False), ("generalized_box_iou", True)):
        for x, y, cx, cy in ((ga, gb, a, b), (ga[1:], gb[1:], a[1:], b[1:]), (ga[::2], gb[::2], a[::2], b[::2])):
            out = getattr(ops, op)(x, y)  # aligned, shifted by one box (misaligned for fp16), strided
            assert out.is_cuda and out.dtype == torch.float32
            torch.testing.assert_close(out.cpu(), getattr(ops, op)(cx, cy), atol=2e-6, rtol=1e-5)
            assert_close_to_ref(out.cpu(), cx, cy, giou=giou, atol=4e-6)
    for n, m in ((37, 1025), (1025, 37), (0, 5), (5, 0), (129, 257)):
        pw = ops.box_iou_pairwise(ga[:n], gb[:m])
        assert pw.shape == (n, m)
        torch.testing.assert_close(pw.cpu(), ops.box_iou_pairwise(a[:n], b[:m]), atol=2e-6, rtol=1e-5)


@pytest.mark.cuda
@needs_cuda_kernels
def test_cuda_opcheck_and_compile():
    gen = torch.Generator().manual_seed(22)
    a, b = random_boxes(33, gen).float().cuda(), random_boxes(33, gen).float().cuda()
    for op in ("box_iou", "generalized_box_iou", "box_iou_pairwise"):
        torch.library.opcheck(getattr(torch.ops.umedfast, op), (a, b))
    compiled = torch.compile(lambda x, y: ops.box_iou(x, y) * 2, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(a, b), ops.box_iou(a, b) * 2)
