"""Fused token log-probs and entropy straight from the last hidden states and the LM head.

PPO needs, for every response token, ``log p(target)`` and the entropy of the policy's distribution. The usual way
materializes logits ``[N, V]`` (plus log-softmax, softmax and their gradients, each ``[N, V]``), which dominates
memory for real vocabularies (Qwen2-VL: V = 151936). Here the logits are produced one vocabulary chunk at a time
and folded into an online log-sum-exp, so no ``[N, V]`` tensor ever exists, forward or backward.

Math, for one row with logits ``z = (h @ W^T + b) / temperature`` and ``p = softmax(z)``:

    lse      = log sum_j exp(z_j)                       (online: running max m, s = sum e^(z-m), t = sum e^(z-m)(z-m))
    logprob  = z_y - lse
    entropy  = lse - sum_j p_j z_j = log s - t / s
    d logprob / d z_j = 1[j = y] - p_j
    d entropy / d z_j = -p_j (z_j - lse + entropy)

Rows whose target is ``IGNORE_INDEX`` (-100) get logprob 0 and entropy 0 and pass no gradient.

Layout (Liger-Kernel ``ops/<op>.py`` style): the ``@triton.jit`` kernels, the host launchers, a chunked plain-torch
path with the same math, the ``torch.autograd.Function``, the public function, and the full-logits oracle
``token_logprobs_entropy_ref``.

Backends. ``token_logprobs_entropy`` runs the Triton kernels when the tensors are on CUDA or when
``TRITON_INTERPRET=1`` (the CPU tests); on plain CPU it runs the chunked torch path (same math, one ``[N, chunk]``
logits block at a time, fp32 accumulation), because Triton has no CPU backend outside its interpreter.

Triton forward: grid ``(row blocks, vocab splits)``; each program walks its share of the vocabulary in
``BLOCK_V`` chunks, computing the logits tile with ``tl.dot`` over ``BLOCK_H`` slices of the hidden size, and writes
its partial ``(m, s, t, z_target)``; a tiny torch combine over the splits gives ``lse``, logprob and entropy
(flash-decoding style split, so a short sequence still fills the GPU). Triton backward (Liger's fused-linear-cross-
entropy shape, deterministic): the vocabulary is walked in chunks of C columns (N * C elements ~ 64 MiB); per chunk
``_lpe_dlogits_kernel`` recomputes the logits tiles and writes ``dz`` [N, C] in the input dtype, then two Triton GEMMs
with fp32 accumulation: ``dh += dz @ W_c`` into one fp32 [N, H] buffer (each tile read-added-written by its one owner,
chunks in order) and ``dW_c = dz^T @ h`` written once in the parameter's dtype. No atomics: the gradients are bitwise
reproducible, and no fp32 [V, H] copy of dW exists. ``lse`` is saved as (row max, log-sum below it) so
``log p = (z - max) - log_s`` does not cancel.
Status: numerics and determinism are tested under the interpreter (fp32 dots there); the GPU build is compiled ahead
of time for sm_90 in the tests (wgmma dots, no atomics, no spills), not yet run or timed on a GPU.

Use in a policy loss (HF causal LM / VLM): take the last hidden state instead of logits and shift by one,

    hidden = model(..., output_hidden_states=True).hidden_states[-1][:, :-1]   # or the trunk's output, no lm_head
    logprob, entropy = token_logprobs_entropy(hidden, model.lm_head.weight, labels[:, 1:], temperature=T)
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

IGNORE_INDEX = -100


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------


@triton.jit
def _logits_tile(
    h_ptr, w_ptr, b_ptr, offs_n, offs_v, mask_n, mask_v, H,
    stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """fp32 logits tile [BLOCK_N, BLOCK_V] = (h[offs_n] @ W[offs_v]^T + b[offs_v]) * inv_temp."""
    offs_n = offs_n.to(tl.int64)  # V * H passes 2**31 for large heads: 64-bit addressing
    offs_v = offs_v.to(tl.int64)
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        a = tl.load(h_ptr + offs_n[:, None] * stride_hn + offs_h[None, :] * stride_hh,
                    mask=mask_n[:, None] & mask_h[None, :], other=0.0)
        wt = tl.load(w_ptr + offs_v[None, :] * stride_wv + offs_h[:, None] * stride_wh,
                     mask=mask_v[None, :] & mask_h[:, None], other=0.0)  # [BLOCK_H, BLOCK_V]
        if UPCAST:  # the interpreter multiplies bf16 bit patterns in tl.dot: go through fp32 there only
            a = a.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_v, mask=mask_v, other=0.0).to(tl.float32)[None, :]
    return acc * inv_temp


@triton.jit
def _lpe_fwd_kernel(
    h_ptr, w_ptr, b_ptr, tgt_ptr,
    m_ptr, s_ptr, t_ptr, zt_ptr,  # partials, each [SPLITS, N] fp32
    N, V, H, chunks_per_split,
    stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program: BLOCK_N rows x one split of the vocabulary; online (max, sum-exp, sum-exp*(z-max), z_target)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    tgt = tl.load(tgt_ptr + offs_n, mask=mask_n, other=-1)

    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    t = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum e^(z - m) (z - m): keeps entropy free of cancellation
    zt = tl.zeros([BLOCK_N], dtype=tl.float32)
    v_begin = pid_s * chunks_per_split * BLOCK_V
    for c in range(0, chunks_per_split):
        offs_v = v_begin + c * BLOCK_V + tl.arange(0, BLOCK_V)
        mask_v = offs_v < V
        z = _logits_tile(h_ptr, w_ptr, b_ptr, offs_n, offs_v, mask_n, mask_v, H,
                         stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,
                         HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION)
        z = tl.where(mask_v[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a chunk past V (all masked) leaves m at -inf
        alpha = tl.exp(m - m_new_safe)
        shift = tl.where(s > 0, m - m_new_safe, 0.0)  # (m_old - m_new) * s_old, 0 while nothing is accumulated
        zc = tl.where(mask_v[None, :], z - m_new_safe[:, None], 0.0)
        p = tl.where(mask_v[None, :], tl.exp(zc), 0.0)
        t = alpha * (t + shift * s) + tl.sum(p * zc, axis=1)
        s = alpha * s + tl.sum(p, axis=1)
        m = m_new
        hit = (offs_v[None, :] == tgt[:, None]) & mask_v[None, :]
        zt += tl.sum(tl.where(hit, z, 0.0), axis=1)
    out = pid_s * N + offs_n
    tl.store(m_ptr + out, m, mask=mask_n)
    tl.store(s_ptr + out, s, mask=mask_n)
    tl.store(t_ptr + out, t, mask=mask_n)
    tl.store(zt_ptr + out, zt, mask=mask_n)


@triton.jit
def _lpe_dlogits_kernel(
    h_ptr, w_ptr, b_ptr, tgt_ptr, mx_ptr, logs_ptr, ent_ptr, glp_ptr, gent_ptr, dz_ptr,
    N, V, H, v0, C,
    stride_hn, stride_hh, stride_wv, stride_wh, stride_dzn, inv_temp,
    HAS_BIAS: tl.constexpr, IGNORE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program: BLOCK_N rows x BLOCK_V vocabulary entries of the chunk [v0, v0 + C). Recomputes the logits tile
    and writes d loss / d raw logits into dz[:, 0:C] (the chunk buffer, in the input dtype). Plain stores, no atomics:
    every dz element has exactly one writer."""
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # column inside the chunk
    offs_v = v0 + offs_c
    mask_n = offs_n < N
    mask_c = offs_c < C
    mask_v = mask_c & (offs_v < V)

    tgt = tl.load(tgt_ptr + offs_n, mask=mask_n, other=IGNORE)
    valid = mask_n & (tgt != IGNORE)
    mx = tl.load(mx_ptr + offs_n, mask=mask_n, other=0.0)
    log_s = tl.load(logs_ptr + offs_n, mask=mask_n, other=0.0)
    ent = tl.load(ent_ptr + offs_n, mask=mask_n, other=0.0)
    g_lp = tl.where(valid, tl.load(glp_ptr + offs_n, mask=mask_n, other=0.0), 0.0)
    g_ent = tl.where(valid, tl.load(gent_ptr + offs_n, mask=mask_n, other=0.0), 0.0)

    z = _logits_tile(h_ptr, w_ptr, b_ptr, offs_n, offs_v, mask_n, mask_v, H,
                     stride_hn, stride_hh, stride_wv, stride_wh, inv_temp,
                     HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION)
    zl = (z - mx[:, None]) - log_s[:, None]  # log p, without cancelling z against the full lse
    p = tl.exp(zl)
    onehot = (offs_v[None, :] == tgt[:, None]).to(tl.float32)
    dz = g_lp[:, None] * (onehot - p) - g_ent[:, None] * p * (zl + ent[:, None])
    dz = tl.where(mask_v[None, :] & valid[:, None], dz, 0.0) * inv_temp  # d/d(raw logits)
    offs_n64 = offs_n.to(tl.int64)
    tl.store(dz_ptr + offs_n64[:, None] * stride_dzn + offs_c[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=mask_n[:, None] & mask_c[None, :])


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """C[M, N] (+)= A[M, K] @ B[K, N] with fp32 accumulation (any strides, so A may be a transposed view). With
    ACCUMULATE the fp32 C tile is read, added to and written back by its one owner program: the sum over calls is
    ordered and deterministic (no atomics). Grouped tile order along M for L2 reuse (Triton's matmul tutorial)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # 64-bit row offsets (a [V, H] weight passes 2**31 elements for large heads); the pointers then advance by
    # BLOCK_K per step, as in Triton's matmul tutorial. Unit strides are specialized by the JIT (contiguous loads).
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if UPCAST:  # the interpreter multiplies bf16 bit patterns in tl.dot: go through fp32 there only
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    c_mask = mask_m[:, None] & mask_n[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------------------------------


def _prev_pow2(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def _tiles(dtype: torch.dtype) -> dict:
    """Tile sizes of the forward and dlogits kernels on a GPU. Half inputs: tensor-core (wgmma) tiles. fp32: its dots
    run as FMA (IEEE) or tf32 with operands in registers, so smaller tiles (the half tiles spill there; the AOT test
    in tests/kernels/test_logprob_entropy.py compiles every entry for sm_90 and checks registers and shared memory)."""
    if dtype == torch.float32:
        return dict(BLOCK_N=32, BLOCK_V=64, BLOCK_H=32, num_warps=4, num_stages=2)
    return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3)


def _triton_config(n: int, v: int, h: int, chunk_size: int | None, device: torch.device,
                   dtype: torch.dtype = torch.bfloat16) -> dict:
    """Tile sizes. chunk_size sets BLOCK_V (rounded down to a power of two, clamped to [16, 256])."""
    interp = _interpreting()
    tiles = dict(BLOCK_N=16, BLOCK_V=64, BLOCK_H=32, num_warps=4, num_stages=1) if interp else _tiles(dtype)
    if chunk_size:
        tiles["BLOCK_V"] = min(256, max(16, _prev_pow2(chunk_size)))
    n_chunks = triton.cdiv(v, tiles["BLOCK_V"])
    row_blocks = triton.cdiv(n, tiles["BLOCK_N"])
    if interp:
        splits = min(n_chunks, 3)  # exercise the split combine in the CPU tests
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        splits = max(1, min(n_chunks, triton.cdiv(4 * sms, row_blocks)))
    chunks_per_split = triton.cdiv(n_chunks, splits)
    splits = triton.cdiv(n_chunks, chunks_per_split)  # no empty split
    return dict(tiles, splits=splits, chunks_per_split=chunks_per_split)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's own matmul setting (TF32 off by default), so fp32 results match torch fp32.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _fwd_triton(hidden, weight, bias, targets, inv_temp, chunk_size):
    """Returns (logprob, entropy, Float32[2, N] (row max, log sum-exp relative to it))."""
    n, h = hidden.shape
    v = weight.shape[0]
    cfg = _triton_config(n, v, h, chunk_size, hidden.device, hidden.dtype)
    part = torch.zeros((4, cfg["splits"], n), device=hidden.device, dtype=torch.float32)
    if n == 0:
        return _combine_splits(part[0], part[1], part[2], part[3].sum(0), targets)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), cfg["splits"])
    _lpe_fwd_kernel[grid](
        hidden, weight, bias if bias is not None else hidden, targets,
        part[0], part[1], part[2], part[3],
        n, v, h, cfg["chunks_per_split"],
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), inv_temp,
        HAS_BIAS=bias is not None, BLOCK_N=cfg["BLOCK_N"], BLOCK_V=cfg["BLOCK_V"], BLOCK_H=cfg["BLOCK_H"],
        UPCAST=_interpreting(), DOT_PRECISION=_dot_precision(hidden.dtype), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return _combine_splits(part[0], part[1], part[2], part[3].sum(0), targets)


def _combine_splits(m, s, t, zt, targets):
    """Merge per-split online states [S, N] into (logprob, entropy, (row max, log sum-exp below it)), each [N].

    lse = mx + log_s is kept as two parts: log p = (z - mx) - log_s is then exact to rounding even for a peaked
    distribution with large logits, where z - lse would cancel to the ulp of |z|.
    """
    mx = m.max(0).values
    alpha = torch.exp(m - mx)
    s_all = (alpha * s).sum(0)
    shift = torch.where(s > 0, (m - mx) * s, torch.zeros_like(s))
    t_all = (alpha * (t + shift)).sum(0)
    log_s = torch.log(s_all)
    valid = targets != IGNORE_INDEX
    logprob = torch.where(valid, (zt - mx) - log_s, torch.zeros_like(log_s))
    entropy = torch.where(valid, log_s - t_all / s_all, torch.zeros_like(log_s))
    return logprob, entropy, torch.stack([mx, log_s])


_BWD_CHUNK_BYTES = 64 * 2**20  # the [N, C] dlogits buffer of one vocabulary chunk stays near this size


def _bwd_chunk(n: int, v: int, block_v: int, elem_bytes: int) -> int:
    """Vocabulary columns per backward chunk: a multiple of BLOCK_V with N * C * elem_bytes ~ _BWD_CHUNK_BYTES (at least
    8 * BLOCK_V, so each GEMM stays large), never above V rounded up. The interpreter uses 2 * BLOCK_V so the CPU tests
    cross several chunks."""
    if _interpreting():
        c = 2 * block_v
    else:
        c = max(8 * block_v, _prev_pow2(_BWD_CHUNK_BYTES // max(n * elem_bytes, 1)))
    return min(c, triton.cdiv(v, block_v) * block_v)


def _matmul_config(dtype: torch.dtype) -> dict:
    if _interpreting():
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=1)
    if dtype == torch.float32:  # FMA / tf32 dots, operands in registers: small tiles
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)


def _matmul(a, b, c, accumulate: bool, precision: str):
    """c (+)= a @ b, fp32 accumulation, written in c's dtype (Triton; deterministic)."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return
    cfg = _matmul_config(a.dtype)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _matmul_kernel[grid](
        a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        ACCUMULATE=accumulate, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], GROUP_M=8,
        UPCAST=_interpreting(), DOT_PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def _bwd_triton(hidden, weight, bias, targets, lse, entropy, g_lp, g_ent, inv_temp, chunk_size, needs):
    """Deterministic backward, Liger fused-linear-cross-entropy shape, chunked over the vocabulary: per chunk of C
    columns, one kernel writes the dlogits block dz [N, C] (input dtype), then two GEMMs: dh += dz @ W_c (fp32 [N, H]
    accumulator, summed over the chunks in order) and dW_c = dz^T @ h, written once, straight into the parameter's
    dtype (no fp32 [V, H] copy). db_c = column sums of dz. No atomics anywhere: bitwise reproducible."""
    n, h = hidden.shape
    v = weight.shape[0]
    cfg = _triton_config(n, v, h, chunk_size, hidden.device, hidden.dtype)
    dev = hidden.device
    dh = torch.zeros((n, h), device=dev, dtype=torch.float32) if needs[0] else None
    dw = torch.empty((v, h), device=dev, dtype=weight.dtype) if needs[1] else None
    db = torch.empty((v,), device=dev, dtype=bias.dtype) if needs[2] else None
    if n == 0:
        if dw is not None:
            dw.zero_()
        if db is not None:
            db.zero_()
        return dh, dw, db
    precision = _dot_precision(hidden.dtype)
    block_v = cfg["BLOCK_V"]
    chunk = _bwd_chunk(n, v, block_v, hidden.element_size())
    dz = torch.empty((n, chunk), device=dev, dtype=hidden.dtype)
    for v0 in range(0, v, chunk):
        c = min(chunk, v - v0)
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(c, block_v))
        _lpe_dlogits_kernel[grid](
            hidden, weight, bias if bias is not None else hidden, targets, lse[0], lse[1], entropy, g_lp, g_ent, dz,
            n, v, h, v0, c,
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), dz.stride(0), inv_temp,
            HAS_BIAS=bias is not None, IGNORE=IGNORE_INDEX,
            BLOCK_N=cfg["BLOCK_N"], BLOCK_V=block_v, BLOCK_H=cfg["BLOCK_H"],
            UPCAST=_interpreting(), DOT_PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
        dzc = dz[:, :c]
        if dh is not None:
            _matmul(dzc, weight[v0:v0 + c], dh, True, precision)
        if dw is not None:
            _matmul(dzc.T, hidden, dw[v0:v0 + c], False, precision)
        if db is not None:
            db[v0:v0 + c] = dzc.sum(0, dtype=torch.float32)
    return dh, dw, db


# ----------------------------------------------------------------------------------------------------------------------
# Chunked plain-torch path (plain CPU): same math, one [N, chunk] block of logits at a time
# ----------------------------------------------------------------------------------------------------------------------

_TORCH_CHUNK = 4096


def _scaled_inputs(hidden, bias, inv_temp):
    """Fold 1/temperature into hidden and bias once (fp32), so each chunk's logits come from one addmm."""
    hs = hidden.float() * inv_temp if inv_temp != 1.0 else hidden.float()
    bs = bias.float() * inv_temp if bias is not None else None
    return hs, bs


def _chunk_logits(hs, weight, bs, v0, v1):
    """Float32[N, C] logits of vocabulary rows [v0, v1), temperature already folded into hs / bs."""
    wc = weight[v0:v1].float().T
    return torch.addmm(bs[v0:v1], hs, wc) if bs is not None else hs @ wc


def _fwd_torch(hidden, weight, bias, targets, inv_temp, chunk_size):
    n = hidden.shape[0]
    v = weight.shape[0]
    chunk = chunk_size or _TORCH_CHUNK
    hs, bs = _scaled_inputs(hidden, bias, inv_temp)
    m = torch.full((n,), float("-inf"), device=hidden.device)
    s = torch.zeros(n, device=hidden.device)
    t = torch.zeros(n, device=hidden.device)
    zt = torch.zeros(n, device=hidden.device)
    for v0 in range(0, v, chunk):
        v1 = min(v, v0 + chunk)
        z = _chunk_logits(hs, weight, bs, v0, v1)
        m_new = torch.maximum(m, z.max(1).values)
        alpha = torch.exp(m - m_new)
        shift = torch.where(s > 0, m - m_new, torch.zeros_like(m))
        inside = (targets >= v0) & (targets < v1)
        picked = z.gather(1, (targets - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1)
        zt = torch.where(inside, picked, zt)
        z -= m_new[:, None]  # z - m_new, in place
        p = torch.exp(z)
        pz = torch.bmm(p[:, None, :], z[:, :, None]).view(n)  # row-wise dot, no [N, C] product tensor
        t = alpha * (t + shift * s) + pz
        s = alpha * s + p.sum(1)
        m = m_new
        del z, p
    return _combine_splits(m[None], s[None], t[None], zt, targets)


def _bwd_torch(hidden, weight, bias, targets, lse, entropy, g_lp, g_ent, inv_temp, chunk_size, needs):
    n, h = hidden.shape
    v = weight.shape[0]
    chunk = chunk_size or _TORCH_CHUNK
    hs, bs = _scaled_inputs(hidden, bias, inv_temp)
    valid = targets != IGNORE_INDEX
    g_lp = torch.where(valid, g_lp, torch.zeros_like(g_lp))
    g_ent = torch.where(valid, g_ent, torch.zeros_like(g_ent))
    # d loss / d z = p (a log p + b) + g_lp 1[j = y], a = -g_ent, b = -(g_ent H + g_lp): row constants
    a = (-g_ent)[:, None]
    b = (-(g_ent * entropy + g_lp))[:, None]
    dh = torch.zeros((n, h), device=hidden.device) if needs[0] else None
    # each chunk of dW / db is written once, so they go straight into the parameter's dtype (no fp32 [V, H] copy)
    dw = torch.empty((v, h), device=hidden.device, dtype=weight.dtype) if needs[1] else None
    db = torch.empty((v,), device=hidden.device, dtype=bias.dtype) if needs[2] else None
    for v0 in range(0, v, chunk):
        v1 = min(v, v0 + chunk)
        zl = _chunk_logits(hs, weight, bs, v0, v1).sub_(lse[0][:, None]).sub_(lse[1][:, None])  # log p
        p = torch.exp(zl)
        dz = zl.mul_(a).add_(b).mul_(p)  # in place: one [N, C] live besides p
        del p
        inside = valid & (targets >= v0) & (targets < v1)
        rows = inside.nonzero().squeeze(1)
        dz[rows, targets[rows] - v0] += g_lp[rows]
        # z = (h W^T + b) / T: dh = (dz @ W) / T, dW = dz^T @ (h / T) = dz^T @ hs, db = sum(dz) / T
        if dh is not None:
            dh.addmm_(dz, weight[v0:v1].float(), alpha=inv_temp)
        if dw is not None:
            dw[v0:v1] = dz.T @ hs
        if db is not None:
            db[v0:v1] = dz.sum(0) * inv_temp
        del dz
    return dh, dw, db


# ----------------------------------------------------------------------------------------------------------------------
# Autograd and public function
# ----------------------------------------------------------------------------------------------------------------------


class _TokenLogprobsEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_temp, chunk_size, backend):
        fwd = _fwd_triton if backend == "triton" else _fwd_torch
        logprob, entropy, lse = fwd(hidden, weight, bias, targets, inv_temp, chunk_size)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.inv_temp, ctx.chunk_size, ctx.backend = inv_temp, chunk_size, backend
        return logprob, entropy

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        if not any(needs):
            return (None,) * 7
        n = hidden.shape[0]
        g_lp = torch.zeros(n, device=hidden.device) if g_lp is None else g_lp.float().contiguous()
        g_ent = torch.zeros(n, device=hidden.device) if g_ent is None else g_ent.float().contiguous()
        bwd = _bwd_triton if ctx.backend == "triton" else _bwd_torch
        dh, dw, db = bwd(hidden, weight, bias, targets, lse, entropy, g_lp, g_ent,
                         ctx.inv_temp, ctx.chunk_size, needs)
        dh = dh.to(hidden.dtype) if dh is not None else None
        dw = dw.to(weight.dtype) if dw is not None else None
        db = db.to(bias.dtype) if db is not None else None
        return dh, dw, db, None, None, None, None


def token_logprobs_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs and entropies of ``softmax((hidden @ weight^T + bias) / temperature)``, without [N, V] logits.

    Args:
        hidden: Tensor[N, H] (or [B, T, H]) last hidden states, fp32/bf16/fp16.
        weight: Tensor[V, H] LM head weight, same dtype and device as ``hidden``.
        targets: Long[N] (or [B, T]) token ids in [0, V); ``-100`` (IGNORE_INDEX) marks rows to skip.
        bias: optional Tensor[V].
        temperature: logits are divided by it (> 0), as at sampling time.
        chunk_size: vocabulary chunk. Triton: BLOCK_V, rounded down to a power of two in [16, 256] (default 128);
            torch path: columns of logits held at once (default 4096).
        backend: ``"triton"``, ``"torch"`` or None (auto: Triton on CUDA or under ``TRITON_INTERPRET=1``, the
            chunked torch path on plain CPU).

    Returns:
        (logprob, entropy), each Float32[N] (or [B, T]). Ignored rows give 0 for both and no gradient.
        Differentiable w.r.t. ``hidden``, ``weight`` and ``bias``, through both outputs.
    """
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be [N, H] or [B, T, H], got shape {tuple(hidden.shape)}")
    lead = hidden.shape[:-1]
    if tuple(targets.shape) != tuple(lead):
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal hidden's leading dims {tuple(lead)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, {hidden.shape[-1]}], got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(f"hidden ({hidden.dtype}, {hidden.device}) and weight ({weight.dtype}, {weight.device}) "
                         "must share dtype and device")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    v = weight.shape[0]
    h2 = hidden.reshape(-1, hidden.shape[-1])
    tgt = targets.reshape(-1).to(torch.int64).contiguous()
    bad = (tgt != IGNORE_INDEX) & ((tgt < 0) | (tgt >= v))
    if bool(bad.any()):
        raise ValueError(f"targets must be in [0, {v}) or {IGNORE_INDEX}; got {tgt[bad][:5].tolist()}")
    if backend is None:
        backend = "triton" if (hidden.is_cuda or _interpreting()) else "torch"
    if backend not in ("triton", "torch"):
        raise ValueError(f"backend must be 'triton', 'torch' or None, got {backend!r}")
    if bias is not None:
        bias = bias.contiguous()
    logprob, entropy = _TokenLogprobsEntropy.apply(h2, weight, bias, tgt, 1.0 / float(temperature), chunk_size,
                                                   backend)
    return logprob.reshape(lead), entropy.reshape(lead)


def token_logprobs_entropy_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: full [N, V] logits, log_softmax, gather, entropy, all in the inputs' dtype (float64 for the tests).

    Same signature and sentinel as ``token_logprobs_entropy`` (``chunk_size``/``backend`` are accepted and unused).
    Returns outputs in float32, or in float64 when the inputs are float64 (so the oracle keeps its precision).
    """
    del chunk_size, backend
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    valid = targets != IGNORE_INDEX
    picked = logp.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    zero = torch.zeros_like(picked)
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return torch.where(valid, picked, zero).to(out_dtype), torch.where(valid, entropy, zero).to(out_dtype)
