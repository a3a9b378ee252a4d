"""vrr_attention (Triton, run by the CPU interpreter) against a float64 oracle.

Accuracy rule (flash-attention's tests): the kernel's max error against float64 is at most 2x the error of torch
computing the same thing in the same dtype (plus a tiny absolute floor for float32).
"""
import importlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from umedfast.kernels import vrr_attention, vrr_attention_ref
from _triton_aot import compile_for_sm90


def _inputs(B, Hq, Hkv, Nq, Nk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Nk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Nk, D, generator=g).to(dtype)
    return q, k, v


def _region(kind, B, Nk, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.rand(B, Nk, generator=g) < 0.3
    if kind == "empty":
        return torch.zeros(B, Nk, dtype=torch.bool)
    if kind == "full":
        return torch.ones(B, Nk, dtype=torch.bool)
    if kind == "span":  # a contiguous run of "image patches", as in a VLM prompt: most key blocks hold no region key
        m = torch.zeros(B, Nk, dtype=torch.bool)
        m[:, Nk // 3: Nk // 3 + 7] = True
        return m
    raise ValueError(kind)


def _padding(kind, B, Nk):
    if kind is None:
        return None
    m = torch.ones(B, Nk, dtype=torch.bool)
    if kind == "left":
        m[-1, : Nk // 2] = False  # left padding: early queries of the last sample see no key at all (causal)
    elif kind == "right":
        m[-1, Nk - Nk // 3:] = False
    elif kind == "all":
        m[-1] = False  # a sample made only of padding: every row has no allowed key
    return m


def _check(q, k, v, region, *, causal, pad, scale=None):
    out, mass = vrr_attention(q, k, v, region, causal=causal, key_padding_mask=pad, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert mass.shape == q.shape[:3] and mass.dtype == torch.float32
    assert torch.isfinite(out.float()).all() and torch.isfinite(mass).all()
    o64, m64 = vrr_attention_ref(q.double(), k.double(), v.double(), region, causal=causal, key_padding_mask=pad,
                                 scale=scale)
    o_t, m_t = vrr_attention_ref(q, k, v, region, causal=causal, key_padding_mask=pad, scale=scale, upcast=False)
    floor = 1e-6 if q.dtype == torch.float32 else 0.0
    err_o = (out.double() - o64).abs().max().item()
    err_o_torch = (o_t.double() - o64).abs().max().item()
    err_m = (mass.double() - m64).abs().max().item()
    err_m_torch = (m_t.double() - m64).abs().max().item()
    assert err_o <= 2 * err_o_torch + floor, (err_o, err_o_torch)
    assert err_m <= 2 * err_m_torch + floor, (err_m, err_m_torch)
    return out, mass, o64, m64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Nq,Nk", [(37, 37), (37, 129)])
def test_matches_reference_gqa_padding(dtype, causal, Nq, Nk):
    q, k, v = _inputs(2, 4, 2, Nq, Nk, 80, dtype)
    _check(q, k, v, _region("random", 2, Nk), causal=causal, pad=_padding("right" if causal else "left", 2, Nk))


@pytest.mark.parametrize("region", ["empty", "full", "span"])
@pytest.mark.parametrize("pad", [None, "left", "all"])
def test_region_and_padding_edge_cases(region, pad):
    q, k, v = _inputs(2, 2, 1, 37, 37, 32, torch.bfloat16, seed=3)
    out, mass, o64, m64 = _check(q, k, v, _region(region, 2, 37), causal=True, pad=_padding(pad, 2, 37))
    no_key = ~(torch.isfinite(o64).all(-1)) | (o64 == 0).all(-1)  # rows with no allowed key (oracle gives exactly 0)
    if pad in ("left", "all"):
        assert no_key[-1].any()
        assert (out[no_key] == 0).all() and (mass[no_key] == 0).all()
    if region == "empty":
        assert (mass == 0).all()
    if region == "full":  # every row with a key puts all its mass on the region
        torch.testing.assert_close(mass[~no_key], torch.ones_like(mass[~no_key]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("D", [20, 64, 96, 128])
def test_head_dims(D):
    q, k, v = _inputs(1, 2, 2, 17, 45, D, torch.float16, seed=D)
    _check(q, k, v, _region("random", 1, 45), causal=True, pad=None, scale=0.3)


@pytest.mark.parametrize("causal", [True, False])
def test_long_odd_key_length(causal):
    """Nk = 1025 (33 key blocks, a 1-key tail) with a few decode-like queries at the end, GQA and left padding."""
    q, k, v = _inputs(2, 4, 1, 5, 1025, 32, torch.bfloat16, seed=11)
    pad = torch.ones(2, 1025, dtype=torch.bool)
    pad[1, :300] = False
    _check(q, k, v, _region("span", 2, 1025), causal=causal, pad=pad)


@pytest.mark.parametrize("blocks", [(16, 64), (64, 16)])
def test_other_block_shapes(blocks):
    """The autotuned GPU path picks other tiles: the two-stage (unmasked / diagonal) split must hold for any of them."""
    from umedfast.kernels.vrr_attention import _vrr_attention_fwd

    q, k, v = _inputs(2, 4, 2, 37, 129, 32, torch.float32, seed=7)
    region, pad = _region("span", 2, 129), _padding("left", 2, 129)
    for causal in (True, False):
        out = torch.empty_like(q)
        mass = _vrr_attention_fwd(q, k, v, region, pad, causal, 32 ** -0.5, out, blocks=blocks)
        o64, m64 = vrr_attention_ref(q.double(), k.double(), v.double(), region, causal=causal, key_padding_mask=pad)
        torch.testing.assert_close(out.double(), o64, atol=2e-5, rtol=0)
        torch.testing.assert_close(mass.double(), m64, atol=2e-6, rtol=0)


def test_strided_inputs_and_out_view():
    """HF hands [B,N,H,D] buffers transposed to [B,H,N,D]; the output may go straight into a [B,N,H,D] buffer."""
    B, N, H, D = 2, 37, 4, 32
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, N, H, D, generator=g).transpose(1, 2)
    k = torch.randn(B, N, 2, D, generator=g).transpose(1, 2)
    v = torch.randn(B, N, 2, D, generator=g).transpose(1, 2)
    region = _region("random", B, N)
    buf = torch.empty(B, N, H, D)
    out, mass = vrr_attention(q, k, v, region, out=buf.transpose(1, 2))
    assert out.data_ptr() == buf.data_ptr()
    o64, m64 = vrr_attention_ref(q.double(), k.double(), v.double(), region)
    torch.testing.assert_close(buf.double(), o64.transpose(1, 2), atol=2e-6, rtol=0)
    torch.testing.assert_close(mass.double(), m64, atol=1e-6, rtol=0)


def test_forward_only_and_input_errors():
    q, k, v = _inputs(1, 2, 1, 8, 8, 32, torch.float32)
    region = torch.zeros(1, 8, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="forward-only"):
        vrr_attention(q.requires_grad_(), k, v, region)
    q = q.detach()
    with torch.no_grad():  # allowed under no_grad even if the tensor requires grad
        vrr_attention(q.clone().requires_grad_(), k, v, region)
    with pytest.raises(ValueError, match="GQA"):
        vrr_attention(q, *_inputs(1, 3, 3, 8, 8, 32, torch.float32)[1:], region)
    with pytest.raises(ValueError, match="Nq <= Nk"):
        vrr_attention(torch.randn(1, 2, 9, 32), k, v, region)
    with pytest.raises(ValueError, match="region_mask"):
        vrr_attention(q, k, v, region.float())
    with pytest.raises(TypeError, match="share a dtype"):
        vrr_attention(q, k.half(), v, region)


@pytest.mark.parametrize("seed", range(6))
def test_random_padding_layouts_and_tiles(seed):
    """Random Nq <= Nk, tiles, and padding patterns (left, right, both, holes, none) against the float64 oracle:
    covers the trimming of all-padding blocks and the unmasked/diagonal split at block-unaligned boundaries."""
    from umedfast.kernels.vrr_attention import _vrr_attention_fwd

    g = torch.Generator().manual_seed(100 + seed)
    Nk = int(torch.randint(20, 90, (1,), generator=g))
    Nq = int(torch.randint(1, Nk + 1, (1,), generator=g))
    bm, bn = (16, 32, 64)[seed % 3], (16, 32, 64)[(seed // 3 + seed) % 3]
    q, k, v = _inputs(3, 2, 1, Nq, Nk, 32, torch.float32, seed=seed)
    pad = torch.ones(3, Nk, dtype=torch.bool)
    a, b = sorted(torch.randint(0, Nk, (2,), generator=g).tolist())
    pad[0, :a] = False  # left
    pad[1, b:] = False  # right
    pad[2] = torch.rand(Nk, generator=g) < 0.6  # holes
    region = torch.rand(3, Nk, generator=g) < 0.2
    for causal in (True, False):
        out = torch.empty_like(q)
        mass = _vrr_attention_fwd(q, k, v, region, pad, causal, 32 ** -0.5, out, blocks=(bm, bn))
        o64, m64 = vrr_attention_ref(q.double(), k.double(), v.double(), region, causal=causal, key_padding_mask=pad)
        torch.testing.assert_close(out.double(), o64, atol=2e-5, rtol=0)
        torch.testing.assert_close(mass.double(), m64, atol=2e-6, rtol=0)


_SM90_SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
mod = importlib.import_module("umedfast.kernels.vrr_attention")  # the package name itself is the function

fn = mod._vrr_attention_fwd_kernel
sig = {n: "*bf16" for n in ("Q", "K", "V", "Out")}
sig.update(Mass="*fp32", Pad="*u8", KeyRange="*i32", Reg="*u8", RegCnt="*i32", qk_scale="fp32")
for n in fn.arg_names:
    if n.startswith("stride_") or n in ("Hq", "Nq", "Nk", "NQ_BUCKET", "NK_BUCKET"):
        sig[n] = "i32"
cfg = mod._AUTOTUNE_CONFIGS[0]
const = dict(GROUP=2, IS_CAUSAL=True, HAS_PAD=True, HEAD_DIM=80, BLOCK_D=128, DOT_FP32=False, IEEE=False, **cfg.kwargs)
sig.update({k: "constexpr" for k in const})
# what the runtime infers for 16-aligned pointers and strides (it enables the pipelined loads)
aligned = [n for n in fn.arg_names if n in ("Q", "K", "V", "Out") or n.startswith(("stride_q", "stride_k", "stride_v",
                                                                                    "stride_o"))]
attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
try:
    k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
except RuntimeError as e:
    if "ptxas" in str(e).lower():
        print(json.dumps({"skip": str(e)[:300]})); sys.exit(0)
    raise
ptx = k.asm["ptx"]
res = {"wgmma": ptx.count("wgmma.mma_async"), "cp_async": ptx.count("cp.async"), "shared": k.metadata.shared}
print(json.dumps(res))
"""


def test_compiles_for_sm90_without_gpu():
    """No GPU here: compile the kernel ahead of time for an H100 (sm_90, through the ptxas shipped with triton) so a
    GPU-only compile error (types across branches, shared memory) fails CI. Checks tensor-core (wgmma) dots and
    pipelined (cp.async) K/V loads for bf16 at D=80 (padded head dim), causal, GQA, key padding.
    Runs in a subprocess: triton cannot mix interpreted and compiled kernels in one process."""
    res = compile_for_sm90(_SM90_SCRIPT)
    assert res["wgmma"] > 0, res
    assert res["cp_async"] > 0, res
    assert res["shared"] <= 228 * 1024, res
