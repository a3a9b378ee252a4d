"""VRR attention: the fused kernel (output + region mass) against torch SDPA (output only) and eager + masked sum.

Run: ``pytest bench/bench_vrr.py --benchmark-only -s`` (add ``-k cuda`` / ``-k cpu``). Providers run side by side
for each shape:

- ``umedfast_vrr``: ``kernels.vrr_attention`` -> (out, mass), the default variant (pointer loads; set
  UMEDFAST_VRR_VARIANT to time another, or see ``bench/bench_vrr_variants.py`` for all variants and configs side by
  side). On CPU it runs only under ``TRITON_INTERPRET=1``, at the smallest shape, and that timing measures the
  Python interpreter, not the kernel (reported for completeness).
- ``sdpa``: ``F.scaled_dot_product_attention`` with the backend torch picks; ``sdpa_cudnn`` / ``sdpa_flash`` pin the
  cuDNN / flash backends (CUDA only) so the fastest SDPA backend is on the table; no mass.
- ``eager_mass``: what HF ``eager`` + ``output_attentions`` costs: materialized scores, fp32 softmax, P @ V, then the
  masked row sum of P over region keys.
- ``flash_attn``: ``flash_attn_func`` when the optional flash-attn package is installed (no mass).

Reported per row: median ms, TFLOP/s = 4*B*H*Nq*Nk*D / t (halved for causal), peak extra memory over the inputs
(CUDA only; ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call), and device name.
GPU timing: ``triton.testing.do_bench`` (CUDA events around back-to-back calls after a warm-up that also autotunes,
L2 flushed between calls, median), so a host synchronize, the first call's autotuning and the Python dispatch are
not in the figure unless the GPU waits on them; the public call is timed as a user calls it (its small
per-call torch ops, the region prefix count and the output allocation from the caching allocator, included).
``extra_info["ms"]`` is the figure of record on CUDA (pytest-benchmark's own stats there time one synchronized call).
GPU shapes are the issue's, in bf16; CPU shapes are small fp32.
"""
import os
import platform

import pytest
import torch
import torch.nn.functional as F

from umedfast.kernels import vrr_attention

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# (B, Hq, Hkv, N, D, causal)
GPU_SHAPES = [
    (4, 32, 32, 2048, 128, True),
    (8, 32, 32, 1024, 128, True),
    (2, 32, 32, 4096, 128, True),
    (8, 16, 16, 1024, 64, False),
]
CPU_SHAPES = [
    (1, 4, 4, 128, 32, True),
    (2, 8, 8, 512, 64, True),
]
PROVIDERS = ["umedfast_vrr", "sdpa", "sdpa_cudnn", "sdpa_flash", "eager_mass", "flash_attn"]


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name} ({torch.get_num_threads()} threads)"


def _inputs(B, Hq, Hkv, N, D, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, Hq, N, D, dtype=dtype, device=device, generator=g)
    k = torch.randn(B, Hkv, N, D, dtype=dtype, device=device, generator=g)
    v = torch.randn(B, Hkv, N, D, dtype=dtype, device=device, generator=g)
    region = torch.zeros(B, N, dtype=torch.bool, device=device)
    region[:, N // 8: N // 8 + N // 4: 2] = True  # an image span of N/4 tokens, half of its patches in the region
    return q, k, v, region


def _eager_mass(q, k, v, region, causal):
    """HF eager: materialize scores, softmax in fp32, P @ V, then mass = sum of P over region keys."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        n = q.shape[2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.float32)
    out = torch.matmul(p.to(q.dtype), v)
    mass = (p * region[:, None, None, :]).sum(-1)
    return out, mass



def pinned_sdpa(provider: str, q, k, v, causal: bool):
    """A callable running SDPA pinned to one backend (``provider``: "sdpa_cudnn" or "sdpa_flash"); skips the
    benchmark when the backend is unavailable here (CPU, or the GPU/dtype/shape it does not support)."""
    if not q.is_cuda:
        pytest.skip("backend-pinned SDPA is measured on CUDA only")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = SDPBackend.CUDNN_ATTENTION if provider == "sdpa_cudnn" else SDPBackend.FLASH_ATTENTION

    def pinned():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    try:
        pinned()
    except RuntimeError as e:
        pytest.skip(f"{provider} unavailable here: {e}")
    return pinned

def _provider_fn(provider, q, k, v, region, causal):
    if provider == "umedfast_vrr":
        if not (q.is_cuda or INTERPRET):
            pytest.skip("the Triton kernel runs on CUDA, or on CPU under TRITON_INTERPRET=1")
        if not q.is_cuda and q.numel() > 4 * 128 * 32:
            pytest.skip("interpreter: only the smallest CPU shape")
        return lambda: vrr_attention(q, k, v, region, causal=causal)
    if provider == "sdpa":
        gqa = q.shape[1] != k.shape[1]
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    if provider in ("sdpa_cudnn", "sdpa_flash"):
        return pinned_sdpa(provider, q, k, v, causal)
    if provider == "eager_mass":
        return lambda: _eager_mass(q, k, v, region, causal)
    if provider == "flash_attn":
        try:
            from flash_attn import flash_attn_func
        except ImportError:
            pytest.skip("flash-attn not installed (optional extra)")
        if not q.is_cuda:
            pytest.skip("flash-attn is CUDA only")
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        return lambda: flash_attn_func(qt, kt, vt, causal=causal)
    raise ValueError(provider)


def _run(benchmark, provider, shape, dtype, device):
    B, Hq, Hkv, N, D, causal = shape
    q, k, v, region = _inputs(B, Hq, Hkv, N, D, dtype, device)
    fn = _provider_fn(provider, q, k, v, region, causal)
    cuda = device == "cuda"

    def timed():
        r = fn()
        if cuda:
            torch.cuda.synchronize()
        return r

    with torch.no_grad():
        result = timed()  # warm-up (autotune, cuDNN plans) and the memory probe
        extra_mib = None
        if cuda:
            del result
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            result = timed()
            extra_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        if cuda:
            from triton.testing import do_bench

            gpu_ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
            benchmark.pedantic(timed, rounds=1, warmup_rounds=0)  # pytest-benchmark's record; figure: gpu_ms
        else:
            benchmark.pedantic(timed, rounds=3 if provider == "umedfast_vrr" else 10, warmup_rounds=0)

        max_err = None
        if provider in ("umedfast_vrr", "eager_mass"):  # both emit the mass: check it against the fp32 oracle
            _, ref_mass = _eager_mass(q.float(), k.float(), v.float(), region, causal)
            max_err = (result[1].float() - ref_mass).abs().max().item()
            assert max_err < 1e-2, f"{provider} mass differs from fp32 eager by {max_err}"

    med = gpu_ms / 1e3 if cuda else benchmark.stats.stats.median
    flops = 4 * B * Hq * N * N * D * (0.5 if causal else 1.0)
    dev_name = torch.cuda.get_device_name() if cuda else _cpu_name()
    info = dict(provider=provider, shape=f"B{B} H{Hq}/{Hkv} N{N} D{D} {'causal' if causal else 'full'}",
                dtype=str(dtype).replace("torch.", ""), ms=round(med * 1e3, 3), tflops=flops / med / 1e12,
                extra_mib=None if extra_mib is None else round(extra_mib, 1), mass_max_err=max_err, device=dev_name,
                interpreter=(not cuda and provider == "umedfast_vrr"), timer="do_bench" if cuda else "pytest-benchmark")
    benchmark.extra_info.update(info)
    mem = "n/a" if extra_mib is None else f"{extra_mib:.1f} MiB"
    print(f"\n| {info['shape']} | {info['dtype']} | {provider}{' (interpreter)' if info['interpreter'] else ''} "
          f"| {info['ms']:.3f} | {info['tflops']:.4g} | {mem} | {dev_name} |")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"B{s[0]}H{s[1]}N{s[3]}D{s[4]}{'c' if s[5] else 'f'}")
def test_vrr_cuda(benchmark, provider, shape):
    _run(benchmark, provider, shape, torch.bfloat16, "cuda")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: f"B{s[0]}H{s[1]}N{s[3]}D{s[4]}{'c' if s[5] else 'f'}")
def test_vrr_cpu(benchmark, provider, shape):
    torch.set_num_threads(1)  # the 2-core CI box is shared: one thread avoids thread-sync stalls under load
    _run(benchmark, provider, shape, torch.float32, "cpu")

