"""Fused attention forward that also returns the softmax mass each query puts on a set of "region" keys.

The Vision Relevance Reward (VRR) needs, for every abnormal-class token, the attention probability mass on the image
patches inside the abnormal region. Flash kernels never expose probabilities and the eager path materializes every
N x N map, so this kernel is a flash-attention forward (online softmax over key blocks) that carries one more running
sum: the exp-scores of region keys, rescaled by the same running-max factor as the row sum. At the end
``mass = region_sum / row_sum``, with the FULL softmax row as denominator (every key the query may attend to), not the
region-only denominator of the paper's formula, which would make every row sum to 1 (see DESIGN.md).

Layout (Liger-Kernel style): ``@triton.jit`` kernels, the host launcher ``_vrr_attention_fwd``, the public
``vrr_attention`` and the plain-torch oracle ``vrr_attention_ref``.

Notes on the kernel:
- Causal with ``Nq <= Nk``: queries are the LAST ``Nq`` positions, key ``j`` is allowed for query ``i`` iff
  ``j <= i + Nk - Nq`` (bottom-right aligned, as with a KV cache).
- Key blocks strictly below the diagonal run without the causal/bounds mask; the diagonal blocks run masked.
- The per-block region flag comes from a prefix count over keys (``[B, Nk+1]`` int32, one cumsum on the host), so it
  is valid for any autotuned ``BLOCK_N``: a key block with no region key skips the region reduction. There is no
  second pass over K. With key padding, the all-padding blocks before the first and after the last real key of each
  sample (left / right padding) are not visited at all.
- Under ``TRITON_INTERPRET=1`` the interpreter multiplies the bit patterns of bf16 operands in ``tl.dot``; there
  (only) the operands are upcast to fp32 through a constexpr. On GPU half dots stay on tensor cores; fp32 dots are
  IEEE (FMA, 8-warp tiles that compile without spills at every head dim) or tf32 wgmma as torch's ``allow_tf32``
  says (IEEE at head dim 256, where every tf32 tile spills).
- Variants (``UMEDFAST_VRR_VARIANT`` / ``variant=``): pointer loads (default), K/V through TMA tensor descriptors,
  warp specialization (Blackwell only: a no-op on sm_90); feature-detected, "auto" autotunes over the supported ones.
- Head dims that are not powers of two (80, 96) run in the next power-of-two block (128) with masked loads: the
  dots do 128/D times the work (1.6x at 80, 1.33x at 96); see bench/RESULTS.md for why no 64+32 split (yet).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _vrr_block(
    acc, l_i, m_i, r_i, q, start_n, offs_n0,
    k_src, v_src, stride_kn, stride_vn,
    pad_base, reg_base, regcnt_base,
    offs_m, offs_d, q_pos_off, Nk, qk_scale,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr,
):
    """One key block [start_n, start_n + BLOCK_N): the online-softmax update of (acc, l_i, m_i, r_i)."""
    offs_n = start_n + offs_n0
    kv_mask = offs_n < Nk
    if EVEN_D:
        k_mask = kv_mask[:, None]
    else:
        k_mask = kv_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
    if USE_TMA:
        k = k_src.load([start_n, 0])  # [BN, D]
    else:
        k = tl.load(k_src + offs_n[:, None] * stride_kn + offs_d[None, :], mask=k_mask, other=0.0)  # [BN, D]
    if DOT_FP32:
        k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    else:
        qk = tl.dot(q, tl.trans(k))
    if MASKED:
        keep = kv_mask[None, :]
        if IS_CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None] + q_pos_off)
        qk = tl.where(keep, qk, float("-inf"))
    if HAS_PAD:
        pad = tl.load(pad_base + offs_n, mask=kv_mask, other=0)
        qk = tl.where(pad[None, :] != 0, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    # A row with no allowed key so far keeps m = -inf; shift by 0 there so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk * qk_scale - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    r_i = r_i * alpha
    # Per-block flag from the prefix count: the extra reduction only where the block holds a region key.
    n_reg = tl.load(regcnt_base + tl.minimum(start_n + BLOCK_N, Nk)) - tl.load(regcnt_base + start_n)
    if n_reg > 0:
        reg = tl.load(reg_base + offs_n, mask=kv_mask, other=0)
        r_i += tl.sum(tl.where(reg[None, :] != 0, p, 0.0), 1)
    acc = acc * alpha[:, None]
    if USE_TMA:
        v = v_src.load([start_n, 0])
    else:
        v = tl.load(v_src + offs_n[:, None] * stride_vn + offs_d[None, :], mask=k_mask, other=0.0)  # [BN, D]
    if DOT_FP32:
        v = v.to(tl.float32)
        acc = tl.dot(p, v, acc, input_precision=DOT_PREC)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    m_i = m_new
    return acc, l_i, m_i, r_i


@triton.jit
def _vrr_attend_blocks(
    acc, l_i, m_i, r_i, q,
    k_src, v_src, stride_kn, stride_vn,
    pad_base, reg_base, regcnt_base,
    offs_m, offs_d, lo, hi, q_pos_off, Nk, qk_scale,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i, r_i) over key blocks [lo, hi); m_i lives in the log2 domain.
    The softmax scale (times log2 e, > 0) is folded into the exp2 argument: one FMA per score, as in the Triton
    tutorial. K/V loads stay unconditional at the block top so the GPU pipeliner can prefetch them.
    ``k_src``/``v_src``: base pointers of this (batch, kv head), or, with USE_TMA, tensor descriptors over
    [Nk, HEAD_DIM] (TMA loads; rows past Nk and columns past HEAD_DIM arrive as zeros). WARP_SPEC asks the compiler
    to warp-specialize the loop (producer warps issue the loads, consumer warps the dots and softmax); only that
    branch uses ``tl.range(warp_specialize=)`` (triton >= 3.4), so older tritons compile the plain loop."""
    offs_n0 = tl.arange(0, BLOCK_N)
    if WARP_SPEC:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=True):
            acc, l_i, m_i, r_i = _vrr_block(
                acc, l_i, m_i, r_i, q, start_n, offs_n0, k_src, v_src, stride_kn, stride_vn,
                pad_base, reg_base, regcnt_base, offs_m, offs_d, q_pos_off, Nk, qk_scale,
                MASKED, IS_CAUSAL, HAS_PAD, HEAD_DIM, EVEN_D, BLOCK_N, DOT_FP32, DOT_PREC, USE_TMA,
            )
    else:
        for start_n in range(lo, hi, BLOCK_N):
            acc, l_i, m_i, r_i = _vrr_block(
                acc, l_i, m_i, r_i, q, start_n, offs_n0, k_src, v_src, stride_kn, stride_vn,
                pad_base, reg_base, regcnt_base, offs_m, offs_d, q_pos_off, Nk, qk_scale,
                MASKED, IS_CAUSAL, HAS_PAD, HEAD_DIM, EVEN_D, BLOCK_N, DOT_FP32, DOT_PREC, USE_TMA,
            )
    return acc, l_i, m_i, r_i


@triton.jit
def _vrr_attention_fwd_kernel(
    Q, K, V, Out, Mass, Pad, KeyRange, Reg, RegCnt,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_mb, stride_mh,
    stride_padb, stride_regb, stride_regcb,
    Hq, Nq, Nk, qk_scale,
    NQ_BUCKET, NK_BUCKET,  # autotune keys only (sizes rounded to powers of two)
    GROUP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr = False, WARP_SPEC: tl.constexpr = False,
):
    """One program = BLOCK_M query rows of one (batch, query head). Grid (B * Hq, row blocks): batch x heads on axis 0
    (limit 2**31 - 1), the row blocks on axis 1 (limit 65535, i.e. Nq up to 4M at BLOCK_M = 64)."""
    num_m = tl.cdiv(Nq, BLOCK_M)
    pid_bh = tl.program_id(0)
    pid_m = num_m - 1 - tl.program_id(1)  # causal: the longest rows start first
    b = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    m_valid = offs_m < Nq
    if EVEN_D:
        q_mask = m_valid[:, None]
    else:
        q_mask = m_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    if USE_TMA:  # device-side TMA descriptors over this head's [Nk, HEAD_DIM] keys / values
        k_src = tl.make_tensor_descriptor(k_base, shape=[Nk, HEAD_DIM], strides=[stride_kn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(v_base, shape=[Nk, HEAD_DIM], strides=[stride_vn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
    else:
        k_src = k_base
        v_src = v_base
    pad_base = Pad + b * stride_padb
    reg_base = Reg + b * stride_regb
    regcnt_base = RegCnt + b * stride_regcb

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    r_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    q_pos_off = Nk - Nq
    m0 = pid_m * BLOCK_M
    if IS_CAUSAL:
        hi = tl.minimum(Nk, m0 + BLOCK_M + q_pos_off)
        # blocks ending at or before the first row's diagonal need no causal mask
        full_end = tl.minimum((m0 + q_pos_off + 1) // BLOCK_N * BLOCK_N, Nk // BLOCK_N * BLOCK_N)
    else:
        hi = Nk
        full_end = Nk // BLOCK_N * BLOCK_N
    lo = 0
    if HAS_PAD:
        # Skip the all-padding blocks before the first / after the last real key (left / right padding); padding
        # inside [first, last] is masked per key.
        lo = tl.load(KeyRange + b * 2) // BLOCK_N * BLOCK_N
        kv_end = tl.load(KeyRange + b * 2 + 1)
        hi = tl.minimum(hi, kv_end)
        full_end = tl.minimum(full_end, kv_end)

    acc, l_i, m_i, r_i = _vrr_attend_blocks(
        acc, l_i, m_i, r_i, q, k_src, v_src, stride_kn, stride_vn,
        pad_base, reg_base, regcnt_base,
        offs_m, offs_d, lo, full_end, q_pos_off, Nk, qk_scale,
        False, IS_CAUSAL, HAS_PAD, HEAD_DIM, EVEN_D, BLOCK_N, DOT_FP32, DOT_PREC, USE_TMA, WARP_SPEC,
    )
    # full_end (clipped to kv_end) may not be block aligned; resume at the block after the last one processed
    mid = tl.maximum((full_end + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo)
    acc, l_i, m_i, r_i = _vrr_attend_blocks(
        acc, l_i, m_i, r_i, q, k_src, v_src, stride_kn, stride_vn,
        pad_base, reg_base, regcnt_base,
        offs_m, offs_d, mid, hi, q_pos_off, Nk, qk_scale,
        True, IS_CAUSAL, HAS_PAD, HEAD_DIM, EVEN_D, BLOCK_N, DOT_FP32, DOT_PREC, USE_TMA, WARP_SPEC,
    )

    # Rows with no allowed key: out 0 and mass 0, never NaN.
    valid = l_i > 0.0
    l_safe = tl.where(valid, l_i, 1.0)
    out = tl.where(valid[:, None], acc / l_safe[:, None], 0.0)
    mass = tl.where(valid, r_i / l_safe, 0.0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=q_mask)
    tl.store(Mass + b * stride_mb + h * stride_mh + offs_m, mass, mask=m_valid)


# Autotune configs for GPUs (never used under the interpreter, where one fixed tile runs: autotuning there would only
# multiply the slow emulation). Three kinds, each with its own tiles, because the dots differ:
# - half (bf16/fp16): wgmma tensor-core dots. The Triton tutorial's space trimmed to tiles that make sense for H100/H200
#   (wgmma wants BLOCK_M a multiple of 64); pruned per head dim by the shared-memory and register estimates below.
# - fp32 with IEEE dots (torch's default, allow_tf32 off): FMA dots hold their operands in registers, with a layout
#   that replicates the reduction dim per thread, so register use does not follow the tile area: small tiles on
#   8 warps fit (64-103 registers, no spills at D = 64..256), while 4 warps or 32x32 tiles spill (up to 5 KB at
#   D = 256). Each tile carries the largest BLOCK_D at which ptxas (triton 3.6 and 3.9, sm_90) compiled it spill-free.
# - fp32 with tf32 dots (torch.backends.cuda.matmul.allow_tf32 on): wgmma on fp32 operands, 64-row tiles; every tile
#   spills at D = 256, where the launcher runs IEEE dots instead (more accurate, spill-free).
# ``_prune_configs`` keeps, per head dim and kind, the configs that fit, so the autotuner never benchmarks (or launches)
# one that fails with OutOfResources or spills. tests/kernels/test_vrr_attention.py compiles every survivor ahead of
# time for sm_90 and fails on any spill or shared memory over 227 KB.
def _config(kind, bm, bn, warps, stages, max_block_d=None, **flags):
    cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, **flags}, num_warps=warps, num_stages=stages)
    cfg.vrr_kind, cfg.vrr_max_block_d = kind, max_block_d
    return cfg


_HALF_TILES = [  # (BLOCK_M, BLOCK_N, warps, stages)
    (128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 4, 3), (128, 32, 4, 4), (128, 32, 8, 3), (64, 64, 4, 3),
    (64, 64, 4, 4), (64, 128, 4, 2), (64, 32, 4, 4), (64, 64, 8, 2),
]
_FP32_TILES = [  # (BLOCK_M, BLOCK_N, warps, stages, largest spill-free BLOCK_D); the first runs under UMEDFAST_AUTOTUNE=0
    (16, 32, 8, 2, 256), (16, 16, 8, 2, 256), (16, 32, 8, 3, 256), (16, 16, 8, 3, 256), (16, 64, 8, 2, 64),
]  # 32x16 w8 dropped: triton 3.6 gave it an 8-byte stack frame at D=64 (spill-free at 128 / 256, and with 3.9)
_TF32_TILES = [
    (64, 32, 8, 2, 128), (64, 16, 4, 2, 128), (128, 32, 8, 2, 128), (64, 32, 4, 3, 128), (64, 32, 4, 2, 128),
    (64, 64, 4, 2, 64), (128, 64, 8, 2, 64),
]

# Kernel variants (issue 14 item 3), forced with UMEDFAST_VRR_VARIANT or ``variant=``; "auto" autotunes over every
# variant this triton and GPU support. Flags: (USE_TMA, WARP_SPEC).
#   ptr     pointer loads (cp.async pipelined by the software pipeliner); the default until a GPU run measures the others
#   tma     K/V through device-side TMA tensor descriptors (tl.make_tensor_descriptor; triton >= 3.4 has it, the
#           device's 3.6 and this box's 3.9 do): fewer address registers (sm_90 AOT: 225 vs 248 at 128x64, D=128)
#   ws      tl.range(..., warp_specialize=True). On sm_90 triton 3.6 and 3.9 emit bit-identical PTX with and without it
#           (upstream's automatic warp specialization targets Blackwell, sm_100, where the loop is partitioned), so
#           it is offered only on compute capability >= 10
#   tma_ws  both
VARIANT_FLAGS = {"ptr": (False, False), "tma": (True, False), "ws": (False, True), "tma_ws": (True, True)}
_VARIANT_ENV = "UMEDFAST_VRR_VARIANT"


def _has_tma_api() -> bool:
    return hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")


def _has_warp_spec_api() -> bool:
    import inspect

    try:
        return "warp_specialize" in inspect.signature(tl.range.__init__).parameters
    except (TypeError, ValueError):
        return False


def supported_variants(capability=None) -> list:
    """Variants this triton can compile, for a GPU of compute capability ``capability`` ((major, minor); None = the
    current CUDA device, or API support only when there is none)."""
    if capability is None and torch.cuda.is_available() and not _INTERPRET:
        capability = torch.cuda.get_device_capability()
    out = ["ptr"]
    tma = _has_tma_api() and (capability is None or capability[0] >= 9)
    if tma:
        out.append("tma")
    if _has_warp_spec_api() and (capability is None or capability[0] >= 10):
        out += ["ws"] + (["tma_ws"] if tma else [])
    return out


_BASE_CONFIGS = (
    [_config("half", *t) for t in _HALF_TILES] + [_config("fp32", *t) for t in _FP32_TILES]
    + [_config("tf32", *t) for t in _TF32_TILES]
)


def _with_variant(cfg, variant: str):
    use_tma, warp_spec = VARIANT_FLAGS[variant]
    return _config(cfg.vrr_kind, cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages,
                   cfg.vrr_max_block_d, USE_TMA=use_tma, WARP_SPEC=warp_spec)


_AUTOTUNE_CONFIGS = [_with_variant(c, "ptr") for c in _BASE_CONFIGS]
_HALF_CONFIGS = [c for c in _AUTOTUNE_CONFIGS if c.vrr_kind == "half"]
_FP32_CONFIGS = [c for c in _AUTOTUNE_CONFIGS if c.vrr_kind != "half"]  # fp32 inputs: IEEE and tf32 tiles
SMEM_LIMIT = 227 * 1024  # H100 / H200: max dynamic shared memory per block (232448 bytes)
_SMEM_SLACK = 2 * 1024  # triton's allocation exceeds the estimate by up to 1 KB (barriers, alignment, TMA)


def _estimate_smem(cfg, block_d: int, elem_bytes: int) -> int:
    """Shared memory of one config: the Q tile plus ``num_stages`` buffers of the K and V tiles (what the software
    pipeliner allocates), in bytes; FMA (IEEE fp32) dots also stage the probability tile through shared memory for
    the layout change. Matches triton's allocation for sm_90 within 1 KB (tests/kernels/test_vrr_attention.py compiles
    every surviving config ahead of time and checks the real figure)."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    smem = (bm * block_d + max(cfg.num_stages, 1) * 2 * bn * block_d) * elem_bytes
    if getattr(cfg, "vrr_kind", "half") == "fp32":
        smem += bm * bn * 4
    return smem


def _register_estimate(cfg, block_d: int, dot_fp32: bool) -> int:
    """A register-pressure score per thread for the half (wgmma) configs, fitted to the AOT sweep of every config at
    head dims 64/128/256 (triton 3.9's ptxas, sm_90; bench/RESULTS.md): the fp32 accumulator (BLOCK_M x BLOCK_D),
    twice the score tile (scores and probabilities, BLOCK_M x BLOCK_N) and 2 per pipeline stage (addresses). Half
    configs up to 166 compiled without spills, every config above spilled. 8 warps on 64 rows: the two warpgroups
    cannot split the 64-row wgmma, each holds the whole tile (counted twice). fp32 configs do not follow a formula
    (see above): they carry their measured largest spill-free BLOCK_D instead."""
    threads = 32 * cfg.num_warps
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    regs = (bm * block_d + 2 * bm * bn) // threads + 2 * cfg.num_stages
    if dot_fp32:
        regs += (bm * block_d + bn * block_d) // threads
    elif cfg.num_warps == 8 and bm < 128:
        regs *= 2
    return regs


_REGISTER_BUDGET = 166


def _kind(dot_fp32: bool, dot_prec: str) -> str:
    return "half" if not dot_fp32 else ("tf32" if dot_prec == "tf32" else "fp32")


def _config_fits(cfg, block_d: int, kind: str) -> bool:
    if cfg.vrr_kind != kind:
        return False
    smem = _estimate_smem(cfg, block_d, 2 if kind == "half" else 4) + _SMEM_SLACK
    if smem > SMEM_LIMIT:
        return False
    if kind == "half":
        return _register_estimate(cfg, block_d, False) <= _REGISTER_BUDGET
    return block_d <= cfg.vrr_max_block_d


def _prune_configs(configs, named_args, **kwargs):
    """``prune_configs_by`` hook: keep the configs that fit this head dim and kind (at least one: the smallest)."""
    args = {**named_args, **kwargs}
    block_d = int(args["BLOCK_D"])
    kind = _kind(bool(args["DOT_FP32"]), str(args.get("DOT_PREC", "ieee")))
    kept = [c for c in configs if _config_fits(c, block_d, kind)]
    if kept:
        return kept
    pool = [c for c in configs if c.vrr_kind == kind] or list(configs)
    return [min(pool, key=lambda c: (_estimate_smem(c, block_d, 2 if kind == "half" else 4), c.kwargs["BLOCK_M"]))]


def _dot_precision(dtype: torch.dtype, block_d: int = 0) -> str:
    """fp32 dots follow torch's matmul setting (TF32 off by default, so fp32 results match torch fp32) except at
    BLOCK_D > 128, where every tf32 tile spills and IEEE runs instead; the interpreter and half inputs (upcast under
    the interpreter only) use IEEE."""
    if dtype == torch.float32 and not _INTERPRET and torch.backends.cuda.matmul.allow_tf32 and block_d <= 128:
        return "tf32"
    return "ieee"


def configs_for(head_dim: int, dtype: torch.dtype, *, tf32: bool = False, variant: str = "ptr") -> list:
    """The autotune configs that survive pruning for ``head_dim`` and ``dtype`` on a GPU (the AOT test compiles each).
    ``tf32``: fp32 inputs with torch's allow_tf32 on (ignored at BLOCK_D > 128, where IEEE dots run). ``variant``:
    a key of VARIANT_FLAGS."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    fp32 = dtype == torch.float32
    prec = "tf32" if (fp32 and tf32 and block_d <= 128) else "ieee"
    kept = _prune_configs(_BASE_CONFIGS, {}, BLOCK_D=block_d, DOT_FP32=fp32, DOT_PREC=prec)
    return [_with_variant(c, variant) for c in kept]


_AUTOTUNE_KEY = ["NQ_BUCKET", "NK_BUCKET", "HEAD_DIM", "GROUP", "IS_CAUSAL", "HAS_PAD", "DOT_FP32", "DOT_PREC"]
_vrr_attention_fwd_kernel_tuned = triton.autotune(
    configs=_AUTOTUNE_CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs},
)(_vrr_attention_fwd_kernel)
_TUNED_BY_VARIANTS = {("ptr",): _vrr_attention_fwd_kernel_tuned}


def _tuned_kernel(variants: tuple):
    """The autotuner over every base config times each variant in ``variants``."""
    if variants not in _TUNED_BY_VARIANTS:
        configs = [_with_variant(c, v) for v in variants for c in _BASE_CONFIGS]
        _TUNED_BY_VARIANTS[variants] = triton.autotune(
            configs=configs, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs},
        )(_vrr_attention_fwd_kernel)
    return _TUNED_BY_VARIANTS[variants]


_INTERPRET_BLOCKS = (32, 32)


def _prefix_count(mask: torch.Tensor) -> torch.Tensor:
    """Bool[B, Nk] -> Int32[B, Nk+1] with c[b, j] = number of True among mask[b, :j] (block flag = difference)."""
    c = torch.zeros(mask.shape[0], mask.shape[1] + 1, dtype=torch.int32, device=mask.device)
    torch.cumsum(mask, dim=1, dtype=torch.int32, out=c[:, 1:])
    return c


def _real_key_range(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Bool[B, Nk] -> Int32[B, 2]: (first real key, last real key + 1), (0, 0) for a sample with no real key."""
    B, Nk = key_padding_mask.shape
    idx = torch.arange(Nk, device=key_padding_mask.device, dtype=torch.int32)
    first = torch.where(key_padding_mask, idx, Nk).amin(1)
    last = torch.where(key_padding_mask, idx + 1, 0).amax(1)
    return torch.stack([torch.where(last > 0, first, 0), last], 1).to(torch.int32).contiguous()


def _tma_ok(*tensors) -> bool:
    """TMA descriptors need 16-byte aligned bases and 16-byte multiples for every stride but the last (contiguous)."""
    for t in tensors:
        e = t.element_size()
        if t.data_ptr() % 16 or t.stride(-1) != 1 or any((s * e) % 16 for s in t.stride()[:-1]):
            return False
    return True


def _ensure_tma_allocator():
    """Device-side descriptors live in a global scratch buffer that triton asks the registered allocator for; register
    a torch one unless the caller registered their own."""
    from triton.runtime import _allocation

    current = _allocation._allocator.get() if hasattr(_allocation._allocator, "get") else None
    if current is None or isinstance(current, _allocation.NullAllocator):
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def _resolve_variant(variant, q, k, v) -> tuple:
    """-> the variants to run: one forced variant, or every supported one for "auto" ("ptr" only for fp32 inputs:
    the AOT sweep checks the fp32 tiles with pointer loads). TMA variants fall back to "ptr" / "ws" when the inputs
    are not TMA-aligned."""
    name = variant or os.environ.get(_VARIANT_ENV, "ptr") or "ptr"
    if name != "auto" and name not in VARIANT_FLAGS:
        raise ValueError(f"{_VARIANT_ENV} / variant must be 'auto' or one of {sorted(VARIANT_FLAGS)}; got {name!r}")
    if name == "auto":
        names = ["ptr"] if q.dtype == torch.float32 else supported_variants(None if q.is_cuda else (9, 0))
    else:
        names = [name]
    if any(n not in ("ptr",) and not (_has_tma_api() if "tma" in n else _has_warp_spec_api()) for n in names):
        raise ValueError(f"variant {name!r} needs a triton with "
                         f"{'tl.make_tensor_descriptor' if 'tma' in name else 'tl.range(warp_specialize=)'}")
    if not _tma_ok(k, v):
        names = [n.replace("tma_ws", "ws").replace("tma", "ptr") for n in names]
    return tuple(dict.fromkeys(names))


def _vrr_attention_fwd(q, k, v, region_mask, key_padding_mask, causal, scale, out, blocks=None, variant=None,
                       config=None):
    """Host launcher. q [B,Hq,Nq,D], k/v [B,Hkv,Nk,D] (last dim contiguous), masks Bool[B,Nk] contiguous,
    ``out`` a [B,Hq,Nq,D] view to write into (any strides, last dim contiguous). ``variant``: see VARIANT_FLAGS
    (default: $UMEDFAST_VRR_VARIANT, else "ptr"). ``config``: one entry of ``configs_for`` to launch instead of
    autotuning (bench/bench_vrr_variants.py times each). Returns mass Float32[B,Hq,Nq]."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    mass = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    if B == 0 or Hq == 0 or Nq == 0:
        return mass
    if Nk == 0:
        out.zero_()
        return mass.zero_()
    block_d = max(16, triton.next_power_of_2(D))
    reg = region_mask.view(torch.uint8)
    regcnt = _prefix_count(region_mask)
    has_pad = key_padding_mask is not None
    if has_pad:
        pad = key_padding_mask.view(torch.uint8)
        key_range = _real_key_range(key_padding_mask)
    else:  # dummies, never read
        pad, key_range = reg, regcnt
    qk_scale = scale * 1.4426950408889634  # log2(e): the kernel uses exp2
    variants = _resolve_variant(variant, q, k, v)
    if q.is_cuda and any(VARIANT_FLAGS[n][0] for n in variants):
        _ensure_tma_allocator()
    common = dict(
        GROUP=Hq // Hkv, IS_CAUSAL=bool(causal), HAS_PAD=has_pad, HEAD_DIM=D, BLOCK_D=block_d,
        DOT_FP32=_INTERPRET or q.dtype == torch.float32, DOT_PREC=_dot_precision(q.dtype, block_d),
    )
    args = (
        q, k, v, out, mass, pad, key_range, reg, regcnt,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        mass.stride(0), mass.stride(1),
        pad.stride(0), reg.stride(0), regcnt.stride(0),
        Hq, Nq, Nk, qk_scale,
        triton.next_power_of_2(Nq), triton.next_power_of_2(Nk),
    )
    if _INTERPRET or blocks is not None:
        bm, bn = blocks or _INTERPRET_BLOCKS
        use_tma, warp_spec = VARIANT_FLAGS[variants[0]]
        grid = (B * Hq, triton.cdiv(Nq, bm))
        _vrr_attention_fwd_kernel[grid](*args, **common, BLOCK_M=bm, BLOCK_N=bn, USE_TMA=use_tma, WARP_SPEC=warp_spec)
    elif config is not None or os.environ.get("UMEDFAST_AUTOTUNE", "1") == "0":  # no tuning (CUDA tests, benches)
        # the first config that fits, unless one is given
        cfg = config or configs_for(D, q.dtype, tf32=common["DOT_PREC"] == "tf32", variant=variants[0])[0]
        grid = (B * Hq, triton.cdiv(Nq, cfg.kwargs["BLOCK_M"]))
        _vrr_attention_fwd_kernel[grid](*args, **common, **cfg.kwargs, num_warps=cfg.num_warps,
                                        num_stages=cfg.num_stages)
    else:
        grid = lambda meta: (B * Hq, triton.cdiv(Nq, meta["BLOCK_M"]))  # noqa: E731
        _tuned_kernel(variants)[grid](*args, **common)
    return mass


def _check_inputs(q, k, v, region_mask, causal, key_padding_mask):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B,H,N,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Hq, Nq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k/v [B,Hkv,Nk,D] do not match q [B,Hq,Nq,D]: {tuple(k.shape)} vs {tuple(q.shape)}")
    Hkv, Nk = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"GQA needs Hq % Hkv == 0; got Hq={Hq}, Hkv={Hkv}")
    if causal and Nq > Nk:
        raise ValueError(f"causal attention needs Nq <= Nk (queries are the last Nq positions); got Nq={Nq}, Nk={Nk}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"vrr_attention supports float16/bfloat16/float32, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, m in (("region_mask", region_mask), ("key_padding_mask", key_padding_mask)):
        if m is None:
            continue
        if m.dtype != torch.bool or tuple(m.shape) != (B, Nk):
            raise ValueError(f"{name} must be bool [B, Nk] = [{B}, {Nk}]; got {m.dtype} {tuple(m.shape)}")
    devices = {t.device for t in (q, k, v, region_mask) if t is not None}
    if key_padding_mask is not None:
        devices.add(key_padding_mask.device)
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device; got {sorted(map(str, devices))}")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(
            "vrr_attention is forward-only (it scores rollouts): call it under torch.no_grad() or pass detached tensors"
        )


def vrr_attention(q, k, v, region_mask, *, causal=True, key_padding_mask=None, scale=None, out=None, variant=None):
    """Softmax attention plus the probability mass every query puts on the region keys.

    Args:
        q: Tensor[B, Hq, Nq, D] (float16 / bfloat16 / float32).
        k, v: Tensor[B, Hkv, Nk, D], same dtype, ``Hq % Hkv == 0`` (GQA: query head h reads kv head h // (Hq/Hkv)).
        region_mask: Bool[B, Nk], True = key is an image patch inside the abnormal region.
        causal: key j allowed for query i iff ``j <= i + Nk - Nq`` (queries are the last Nq positions; needs Nq <= Nk).
        key_padding_mask: Bool[B, Nk], True = real token, or None (all real).
        scale: softmax scale, default ``1/sqrt(D)``.
        out: optional Tensor[B, Hq, Nq, D] view to write the output into (e.g. a transposed [B,Nq,Hq,D] buffer).
        variant: kernel variant, "ptr" / "tma" / "ws" / "tma_ws" / "auto" (see ``VARIANT_FLAGS``); default
            $UMEDFAST_VRR_VARIANT, else "ptr". Every variant computes the same thing; they differ in speed only.

    Returns:
        out: Tensor[B, Hq, Nq, D] in q.dtype, equal to softmax attention.
        mass: Float32[B, Hq, Nq], ``mass[b,h,i] = sum_{j in region} p[b,h,i,j]`` where p is the FULL softmax row over
        all allowed keys. Rows with no allowed key give out = 0 and mass = 0.

    Runs the Triton kernel on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``; other CPU calls use
    :func:`vrr_attention_ref` (plain torch, materializes the N x N map), so the same code path works everywhere.
    """
    _check_inputs(q, k, v, region_mask, causal, key_padding_mask)
    B, Hq, Nq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (q.is_cuda or _INTERPRET):
        o, mass = vrr_attention_ref(q, k, v, region_mask, causal=causal, key_padding_mask=key_padding_mask, scale=scale)
        if out is None:
            return o, mass
        out.copy_(o)
        return out, mass
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {q.dtype} view of shape {tuple(q.shape)} with a contiguous last dim")

    def last_dim_contig(t):
        return t if t.stride(-1) == 1 else t.contiguous()

    q, k, v = last_dim_contig(q), last_dim_contig(k), last_dim_contig(v)
    region_mask = region_mask.contiguous()
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.contiguous()
    mass = _vrr_attention_fwd(q, k, v, region_mask, key_padding_mask, causal, scale, out, variant=variant)
    return out, mass


def vrr_attention_ref(q, k, v, region_mask, *, causal=True, key_padding_mask=None, scale=None, upcast=True):
    """Plain-torch oracle with the signature of :func:`vrr_attention`.

    ``upcast=True`` computes in float32 (float64 stays float64); ``upcast=False`` computes in the input dtype, which is
    the "torch doing the same in the same dtype" baseline of the accuracy rule. Materializes [B, Hq, Nq, Nk].
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cdt = q.dtype
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        cdt = torch.float32
    qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
    if Hkv != Hq:
        kc = kc.repeat_interleave(Hq // Hkv, dim=1)
        vc = vc.repeat_interleave(Hq // Hkv, dim=1)
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale  # [B,Hq,Nq,Nk]
    allowed = torch.ones(B, 1, Nq, Nk, dtype=torch.bool, device=q.device)
    if causal:
        i = torch.arange(Nq, device=q.device)[:, None]
        j = torch.arange(Nk, device=q.device)[None, :]
        allowed = allowed & (j <= i + (Nk - Nq))
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_ok = allowed.any(-1, keepdim=True)  # [B,1,Nq,1]
    p = torch.softmax(scores.masked_fill(~row_ok, 0.0), dim=-1).masked_fill(~allowed, 0.0)
    out = torch.matmul(p, vc).masked_fill(~row_ok, 0.0)
    mass = (p * region_mask[:, None, None, :].to(p.dtype)).sum(-1).masked_fill(~row_ok[..., 0], 0.0)
    return out.to(q.dtype), mass.float() if mass.dtype != torch.float64 else mass
