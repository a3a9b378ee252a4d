"""The Triton kernels compiled and run on a CUDA GPU (``pytest -m cuda``; ``bench/gpu_suite.py`` runs them with
TRITON_INTERPRET=0). Skipped on machines without a GPU, and under the interpreter (one process cannot mix both).

Same accuracy rule as the interpreter tests: error against a float64 oracle <= 2x the error of torch computing the same
thing in the same dtype (plus a rounding floor for fp32). Also: the cases that break on first contact (fp32 and head
dim 256 within shared memory, B * Hq beyond the 65535 grid limit) and the bitwise determinism of the log-prob backward.
"""
import os

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                       reason="compiled kernels: run with TRITON_INTERPRET=0 (bench/gpu_suite.py does)"),
]


def _vrr_inputs(B, Hq, Hkv, Nq, Nk, D, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g, device="cuda").to(dtype)
    k = torch.randn(B, Hkv, Nk, D, generator=g, device="cuda").to(dtype)
    v = torch.randn(B, Hkv, Nk, D, generator=g, device="cuda").to(dtype)
    region = torch.rand(B, Nk, generator=g, device="cuda") < 0.3
    pad = torch.ones(B, Nk, dtype=torch.bool, device="cuda")
    pad[-1, : Nk // 3] = False  # left padding on the last sample: some causal rows see no key
    return q, k, v, region, pad


def _vrr_check(q, k, v, region, pad, causal):
    from umedfast.kernels import vrr_attention, vrr_attention_ref

    out, mass = vrr_attention(q, k, v, region, causal=causal, key_padding_mask=pad)
    torch.cuda.synchronize()
    o64, m64 = vrr_attention_ref(q.double(), k.double(), v.double(), region, causal=causal, key_padding_mask=pad)
    o_t, m_t = vrr_attention_ref(q, k, v, region, causal=causal, key_padding_mask=pad, upcast=False)
    floor = 1e-6 if q.dtype == torch.float32 else 0.0
    for ours, same, ref in ((out, o_t, o64), (mass, m_t, m64)):
        err = (ours.double() - ref).abs().max().item()
        err_t = (same.double() - ref).abs().max().item()
        assert torch.isfinite(ours.float()).all()
        assert err <= 2 * err_t + floor, (q.dtype, tuple(q.shape), err, err_t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D", [64, 80, 128, 256])
def test_vrr_matches_float64_every_head_dim_and_dtype(dtype, D):
    """fp32 and D = 256 used to pick configs over the 227 KB shared-memory limit (OutOfResources on launch)."""
    _vrr_check(*_vrr_inputs(2, 4, 2, 129, 129, D, dtype), causal=True)


@pytest.mark.parametrize("D", [64, 128, 256])
def test_vrr_fp32_with_tf32_matches_torch_tf32_rule(D, monkeypatch):
    """torch.backends.cuda.matmul.allow_tf32 on: fp32 dots run as tf32 wgmma (IEEE at D=256, where every tf32 tile
    spills). The bound follows flash-attention's rule against torch in the same precision: the same oracle in fp32
    with tf32 matmuls (upcast=False) against float64."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    _vrr_check(*_vrr_inputs(2, 4, 2, 129, 129, D, torch.float32, seed=D), causal=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("variant", ["ptr", "tma", "ws", "tma_ws"])
def test_vrr_every_variant_matches_float64(variant, dtype, monkeypatch):
    """Each kernel variant (pointer loads, TMA descriptors, warp specialization) that this triton and GPU support,
    forced through UMEDFAST_VRR_VARIANT, at an odd length and a padded head dim (80: TMA zero-fills the columns past
    80 and the rows past Nk)."""
    import importlib

    mod = importlib.import_module("umedfast.kernels.vrr_attention")
    if variant not in mod.supported_variants():
        pytest.skip(f"{variant} not supported here (triton / compute capability)")
    monkeypatch.setenv("UMEDFAST_VRR_VARIANT", variant)
    _vrr_check(*_vrr_inputs(2, 4, 2, 129, 1025, 80, dtype, seed=80), causal=True)
    _vrr_check(*_vrr_inputs(1, 2, 1, 37, 37, 128, dtype, seed=128), causal=False)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Nq,Nk", [(37, 37), (5, 1025), (1025, 1025)])
def test_vrr_odd_lengths(causal, Nq, Nk):
    _vrr_check(*_vrr_inputs(2, 8, 2, Nq, Nk, 128, torch.bfloat16, seed=Nk), causal=causal)


def test_vrr_grid_beyond_65535_batch_heads():
    """B * Hq = 70,000 programs on grid axis 0 (axis 1 is limited to 65,535)."""
    from umedfast.kernels import vrr_attention, vrr_attention_ref

    q, k, v, region, _ = _vrr_inputs(2500, 28, 4, 16, 16, 64, torch.bfloat16, seed=1)
    out, mass = vrr_attention(q, k, v, region, causal=True)
    o_ref, m_ref = vrr_attention_ref(q[-3:], k[-3:], v[-3:], region[-3:], causal=True)
    torch.testing.assert_close(out[-3:].float(), o_ref.float(), atol=2e-2, rtol=0)
    torch.testing.assert_close(mass[-3:], m_ref, atol=1e-2, rtol=0)


def _lp_problem(n, h, v, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, device="cuda", dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, device="cuda", dtype=torch.float64) * h ** -0.5
    targets = torch.randint(0, v, (n,), generator=g, device="cuda")
    targets[:: 7] = -100
    g_lp = torch.randn(n, generator=g, device="cuda", dtype=torch.float64)
    g_ent = torch.randn(n, generator=g, device="cuda", dtype=torch.float64)
    return hidden, weight, targets, g_lp, g_ent


def _lp_run(fn, dtype, hidden, weight, targets, g_lp, g_ent):
    h = hidden.detach().to(dtype).requires_grad_()
    w = weight.detach().to(dtype).requires_grad_()
    lp, ent = fn(h, w, targets)
    ((lp.double() * g_lp).sum() + (ent.double() * g_ent).sum()).backward()
    return {"logprob": lp.detach().double(), "entropy": ent.detach().double(), "dhidden": h.grad.double(),
            "dweight": w.grad.double()}, (h.grad, w.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_logprob_entropy_matches_float64(dtype):
    from umedfast.kernels import token_logprobs_entropy, token_logprobs_entropy_ref

    args = _lp_problem(300, 896, 40_000, dtype)
    ref, _ = _lp_run(token_logprobs_entropy_ref, torch.float64, *args)
    same, _ = _lp_run(token_logprobs_entropy_ref, dtype, *args)
    ours, (dh, dw) = _lp_run(token_logprobs_entropy, dtype, *args)
    assert dh.dtype == dw.dtype == dtype
    floor = 1e-6 if dtype == torch.float32 else 0.0
    for name in ref:
        err = (ours[name] - ref[name]).abs().max().item()
        err_t = (same[name] - ref[name]).abs().max().item()
        assert err <= 2 * err_t + floor * max(1.0, ref[name].abs().max().item()), (name, err, err_t)


def test_logprob_backward_is_bitwise_deterministic():
    """No atomics in the backward: two runs over several vocabulary chunks give identical bits."""
    from umedfast.kernels import token_logprobs_entropy

    args = _lp_problem(1024, 896, 151_936, torch.bfloat16, seed=3)
    _, (dh1, dw1) = _lp_run(token_logprobs_entropy, torch.bfloat16, *args)
    _, (dh2, dw2) = _lp_run(token_logprobs_entropy, torch.bfloat16, *args)
    assert torch.equal(dh1, dh2) and torch.equal(dw1, dw2)
