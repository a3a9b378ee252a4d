"""Every SIMD variant of the compiled CPU box ops (csrc/cpu), run explicitly, against the float64 oracle.

On x86-64 the loops are compiled for AVX-512, AVX2+FMA and the baseline (SSE2); the best one the CPU has runs by
default. Here each variant this CPU supports is forced in turn (``ops.cpu_kernel_variant(name)``), so no variant goes
untested on a machine that would never pick it. Variants the CPU lacks cannot run; for them the vectorization guard
below still checks (with the compiler) that their loops are SIMD loops.
"""
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from umedfast import ops

from test_ops import ADVERSARIAL, assert_close_to_ref, random_boxes

ROOT = Path(__file__).resolve().parents[2]
needs_variants = pytest.mark.skipif(not ops.cpu_kernel_variants(), reason="umedfast._C not built (or too old)")
VARIANTS = ops.cpu_kernel_variants() or ["(none)"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture
def variant(request):
    """Force one variant for the test, restore the automatic choice afterwards."""
    assert ops.cpu_kernel_variant(request.param) == request.param
    yield request.param
    ops.cpu_kernel_variant("auto")


def special_boxes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs with empty / inverted / degenerate / non-finite boxes, and the expected IoU and GIoU (float64)."""
    inf, nan = math.inf, math.nan
    rows = [  # a, b, IoU, GIoU
        ([0, 0, 1, 1], [0, 0, 1, 1], 1.0, 1.0),
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),
        ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, -7 / 9),                  # disjoint
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0),                     # both empty at one point: C == 0
        ([0, 0, 0, 5], [0, 1, 0, 4], 0.0, 0.0),                     # both zero-width on the same line: C == 0
        ([1, 1, 0, 0], [0, 0, 1, 1], 0.0, 0.0),                     # a inverted: area 0, C = 1, U = 1
        ([2, 2, 1, 1], [3, 3, 2, 2], 0.0, 0.0),                     # both inverted: C == 0
        ([0, 0, 1, 1], [nan, 0, 1, 1], 0.0, -1.0),
        ([0, 0, 1, inf], [0, 0, 1, 1], 0.0, -1.0),
        ([-inf, -inf, inf, inf], [0, 0, 1, 1], 0.0, -1.0),
        ([nan] * 4, [nan] * 4, 0.0, -1.0),
    ]
    a = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    b = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    return a, b, torch.tensor([[r[2], r[3]] for r in rows], dtype=torch.float64)


@needs_variants
def test_variant_names_and_default():
    names = ops.cpu_kernel_variants()
    assert names and len(set(names)) == len(names)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and names[0] == "baseline":
        assert names[-1] in ("avx2", "avx512")   # torch itself sees AVX2: so must we
    assert ops.cpu_kernel_variant("auto") == names[-1]
    assert ops.cpu_kernel_variant() == names[-1]
    with pytest.raises(RuntimeError, match="unknown variant"):
        ops.cpu_kernel_variant("avx9000")
    if names[-1] != "avx512" and names[0] == "baseline":
        with pytest.raises(RuntimeError, match="cannot run"):
            ops.cpu_kernel_variant("avx512")
    assert ops.cpu_kernel_variant() == names[-1]


@needs_variants
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 37, 1025, 70_001])  # vector epilogues; 70001 > 2 parallel chunks of 32768
def test_paired_variant_matches_float64_reference(variant, dtype, n):
    gen = torch.Generator().manual_seed(n)
    a = random_boxes(n, gen).to(dtype)
    b = (a.double() + 0.3 * torch.randn(n, 4, generator=gen, dtype=torch.float64)).to(dtype)  # some inverted
    assert ops.cpu_kernel_variant() == variant
    assert_close_to_ref(ops.box_iou(a, b), a, b, giou=False)
    assert_close_to_ref(ops.generalized_box_iou(a, b), a, b, giou=True)


@needs_variants
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pairwise_variant_matches_float64_reference(variant, dtype):
    gen = torch.Generator().manual_seed(3)
    a, b = random_boxes(45, gen, scale=3).to(dtype), random_boxes(67, gen, scale=3).to(dtype)
    assert_close_to_ref(ops.box_iou_pairwise(a, b), a, b, giou=False, pairwise=True)
    # one far-out row in a (1e30: not plain-safe) and, separately, in b: both code paths of the pairwise loop
    if dtype in (torch.float32, torch.float64):
        a2 = a.clone()
        a2[5] = torch.tensor([1e30, 1e30, 3e30, 3e30], dtype=dtype)
        assert_close_to_ref(ops.box_iou_pairwise(a2, b), a2, b, giou=False, pairwise=True)
        b2 = b.clone()
        b2[-1] = torch.tensor([1e-30, 1e-30, 3e-30, 3e-30], dtype=dtype)
        assert_close_to_ref(ops.box_iou_pairwise(a, b2), a, b2, giou=False, pairwise=True)


@needs_variants
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_variant_special_boxes(variant, dtype):
    """Empty / inverted boxes give IoU 0 (never NaN), non-finite ones 0 / GIoU -1, in every variant. The pairs are
    repeated so that they land in every lane of the vector loop and in its scalar epilogue."""
    a, b, expect = special_boxes()
    k = a.shape[0]
    reps = 9
    a, b = a.repeat(reps, 1)[: k * reps - 3].to(dtype), b.repeat(reps, 1)[: k * reps - 3].to(dtype)
    expect = expect.repeat(reps, 1)[: k * reps - 3]
    iou, giou = ops.box_iou(a, b), ops.generalized_box_iou(a, b)
    assert not iou.isnan().any() and not giou.isnan().any()
    torch.testing.assert_close(iou.double(), expect[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(giou.double(), expect[:, 1], atol=1e-6, rtol=1e-5)
    pw = ops.box_iou_pairwise(a, b)
    assert not pw.isnan().any()
    torch.testing.assert_close(pw.diagonal().double(), expect[:, 0], atol=1e-6, rtol=1e-5)


@needs_variants
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_variant_adversarial_magnitudes(variant):
    """test_ops.ADVERSARIAL (overflowing / underflowing areas, huge offsets, spans near float max) per variant."""
    a = torch.tensor([r[0] for r in ADVERSARIAL], dtype=torch.float32).repeat(5, 1)
    b = torch.tensor([r[1] for r in ADVERSARIAL], dtype=torch.float32).repeat(5, 1)
    iou = torch.tensor([r[2] for r in ADVERSARIAL], dtype=torch.float64).repeat(5)
    giou = torch.tensor([r[3] for r in ADVERSARIAL], dtype=torch.float64).repeat(5)
    torch.testing.assert_close(ops.box_iou(a, b).double(), iou, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ops.generalized_box_iou(a, b).double(), giou, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ops.box_iou_pairwise(a, b).diagonal().double(), iou, atol=1e-6, rtol=1e-5)


@needs_variants
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_variant_float16_equals_float32_of_the_same_values(variant):
    """float16 boxes are widened by the kernels' own branch-free conversion: every one of the 65536 bit patterns
    (subnormals, inf, NaN included) must give exactly what the same values give as float32 (torch's exact widening)."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    h = bits.view(torch.float16).reshape(-1, 4)
    gen = torch.Generator().manual_seed(0)
    hb = h[torch.randperm(h.shape[0], generator=gen)]
    for op in (ops.box_iou, ops.generalized_box_iou):
        torch.testing.assert_close(op(h, hb), op(h.float(), hb.float()), atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(ops.box_iou_pairwise(h[:300], hb[:200]), ops.box_iou_pairwise(h[:300].float(),
                               hb[:200].float()), atol=0, rtol=0)


@needs_variants
def test_variants_agree_with_each_other():
    gen = torch.Generator().manual_seed(21)
    a = random_boxes(5000, gen, scale=50, offset=100).float()
    b = a + torch.randn(5000, 4, generator=gen) * 20
    outs = {}
    try:
        for name in ops.cpu_kernel_variants():
            ops.cpu_kernel_variant(name)
            outs[name] = (ops.box_iou(a, b), ops.generalized_box_iou(a, b), ops.box_iou_pairwise(a[:300], b[:200]))
    finally:
        ops.cpu_kernel_variant("auto")
    first = next(iter(outs.values()))
    for name, got in outs.items():
        for x, y in zip(got, first):  # FMA contraction differs between variants: a few ulp
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=f"variant {name}")


@needs_variants
def test_env_var_picks_the_starting_variant():
    """UMEDFAST_CPU_ISA=baseline in a fresh interpreter: the kernels start on the baseline variant."""
    code = "from umedfast import ops; print(ops.cpu_kernel_variant())"
    env = dict(os.environ, UMEDFAST_CPU_ISA="baseline")
    env.pop("UMEDFAST_DISABLE_COMPILED_OPS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ops.cpu_kernel_variants()[0]


# ------------------------------------------------------------------------------------ vectorization guard
# The loops of csrc/cpu/box_iou_cpu_kernels.h must compile to SIMD loops for every variant, including those this
# CPU cannot run (the original bug: the AVX2 and baseline clones stayed scalar because a conditional division kept
# GCC from if-converting the loop). Compiled here with the same ISA as the target attributes in box_iou_cpu.cpp.
ISA_FLAGS = {
    "baseline": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
}
KERNELS = {  # name -> call; each is compiled in its own translation unit
    "paired_iou_f32": "cpu::paired_range<Overlap::kIoU, float, float>(a, b, o, n);",
    "paired_giou_f32": "cpu::paired_range<Overlap::kGIoU, float, float>(a, b, o, n);",
    "paired_iou_f64": "cpu::paired_range<Overlap::kIoU, double, double>(ad, bd, o, n);",
    "paired_giou_f64": "cpu::paired_range<Overlap::kGIoU, double, double>(ad, bd, o, n);",
    "pairwise_f32": "cpu::pairwise_rows<float, float>(a, b, true, o, n, n);",
    "pairwise_f64": "cpu::pairwise_rows<double, double>(ad, bd, true, o, n, n);",
    "to_soa_f32": "cpu::to_soa<float, float>(a, n, o);",
    "half_to_float": "cpu::half_bits_to_float(reinterpret_cast<const uint16_t*>(a), o, n);",
}


@pytest.mark.skipif(shutil.which("g++") is None or sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="needs g++ on x86-64 Linux")
@pytest.mark.parametrize("isa", list(ISA_FLAGS))
def test_every_variant_loop_vectorizes(isa, tmp_path):
    failures = []
    for name, call in KERNELS.items():
        src = tmp_path / f"{name}.cpp"
        src.write_text(
            '#include "cpu/box_iou_cpu_kernels.h"\nusing namespace umedfast;\n'
            "void k(const float* a, const float* b, const double* ad, const double* bd, float* o, long n) {\n"
            f"  {call}\n}}\n")
        out = subprocess.run(["g++", "-std=c++17", "-O3", *ISA_FLAGS[isa], f"-I{ROOT / 'csrc'}", "-c", str(src),
                              "-o", os.devnull, "-fopt-info-vec-all"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        log = out.stderr
        vectorized = re.findall(r"box_iou_cpu_kernels\.h:(\d+):\d+: optimized: loop vectorized", log)
        scalar = set(re.findall(r"box_iou_cpu_kernels\.h:(\d+):\d+: missed: not vectorized: control flow in loop",
                                log))
        want = 2 if name.startswith("pairwise") else 1  # pairwise: the plain and the rescaled row loop (same line)
        if len(vectorized) < want or scalar:
            failures.append(f"{name}: vectorized loops at lines {vectorized}, control flow at {sorted(scalar)}")
    assert not failures, f"{isa}: " + "; ".join(failures)


@pytest.mark.skipif(shutil.which("objdump") is None or os.uname().machine != "x86_64", reason="needs x86-64 objdump")
@needs_variants
def test_built_extension_has_packed_divisions_in_every_x86_variant():
    """The shipped _C: packed single-precision divisions on xmm (baseline), ymm (AVX2) and zmm (AVX-512) registers.
    Before the fix only the AVX-512 clone had any (the others divided one box at a time with (v)divss)."""
    import umedfast._C as C

    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", C.__file__], capture_output=True, text=True,
                         timeout=300).stdout
    assert re.search(r"\sdivps\s+%xmm", dis), "baseline variant: no packed division"
    assert re.search(r"\svdivps\s+%ymm\d+,%ymm", dis), "AVX2 variant: no 256-bit packed division"
    assert re.search(r"\svdivps\s+%zmm\d+,%zmm", dis), "AVX-512 variant: no 512-bit packed division"


# --------------------------------------------------------------------------------------- aarch64 (NEON) build
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                    reason="needs apt packages g++-aarch64-linux-gnu and qemu-user")
def test_aarch64_neon_loops_vectorize_and_match_reference(tmp_path):
    """The same loops cross-compiled for aarch64 (NEON is baseline there): vector divisions in the binary, and the
    results match the float64 reference under qemu-aarch64."""
    exe = tmp_path / "check_arm"
    out = subprocess.run(["aarch64-linux-gnu-g++", "-std=c++17", "-O3", "-static", f"-I{ROOT / 'csrc'}",
                          str(ROOT / "tests" / "ops" / "cpu_kernels_check.cpp"), "-o", str(exe)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(exe)], capture_output=True,
                         text=True, timeout=120).stdout
    assert re.search(r"\sfdiv\s+v\d+\.4s", dis), "no NEON float division: the float loops stayed scalar"
    assert re.search(r"\sfdiv\s+v\d+\.2d", dis), "no NEON double division: the double loops stayed scalar"
    run = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_standalone_kernel_check_native(tmp_path):
    """The same standalone check compiled for this machine (baseline ISA)."""
    exe = tmp_path / "check"
    out = subprocess.run(["g++", "-std=c++17", "-O3", f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "ops" / "cpu_kernels_check.cpp"),
                          "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
