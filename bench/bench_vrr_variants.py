"""VRR kernel variants side by side (issue 14 item 3): what TMA descriptors / warp specialization / each tile buy.

Run on a GPU: ``pytest bench/bench_vrr_variants.py --benchmark-only -s`` (``bench/gpu_suite.py`` runs it as the step
``vrr_variants``). One shape, the issue's headline: B4 H32 N2048 D128 causal bf16. Cases, one run:

- ``<variant>-<BMxBN wW sS>``: the kernel with that variant and that autotune config forced (no autotuning), for every
  config that survives pruning at D=128 bf16 (``configs_for``) and every variant this triton and GPU support
  (``supported_variants``: "ptr" pointer loads, "tma" TMA descriptors; "ws"/"tma_ws" warp specialization on compute
  capability >= 10 only: on sm_90 triton 3.6/3.9 emit the same PTX with and without it);
- ``<variant>-tuned``: the autotuner over the variant's configs (what ``UMEDFAST_VRR_VARIANT=<variant>`` runs);
  ``auto-tuned``: the autotuner over every supported variant at once;
- ``sdpa_cudnn`` / ``sdpa_flash``: torch SDPA pinned to the cuDNN / flash backend (output only, no mass): the goals
  are >= 1.0x flash and >= 0.8x cuDNN while emitting the mass.

Reported per case (``extra_info``): median ms from ``triton.testing.do_bench`` (CUDA events, warm-up and compile
outside), TFLOP/s (4*B*H*N^2*D/t, halved for causal), the config, and ``vs_cudnn`` / ``vs_flash`` (their ms / ours, so
> 1 = faster) when those providers ran earlier in the same session. Each forced case also checks the mass against the
fp32 eager oracle. On a machine without CUDA every case skips (the dry run only collects).
"""
import os

import pytest
import torch

from bench_vrr import pinned_sdpa  # bench/ is on sys.path under pytest (rootdir conftest)

HAS_CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
SHAPE = (4, 32, 32, 2048, 128, True)  # B, Hq, Hkv, N, D, causal
DTYPE = torch.bfloat16
VARIANTS = ["ptr", "tma", "ws", "tma_ws"]
_REFERENCE_MS: dict = {}


def _kernel_module():
    import importlib

    return importlib.import_module("umedfast.kernels.vrr_attention")


def _config_slots() -> int:
    return len(_kernel_module().configs_for(SHAPE[4], DTYPE))


CASES = ([("ref", p) for p in ("sdpa_cudnn", "sdpa_flash")]
         + [(v, i) for v in VARIANTS for i in [*range(_config_slots()), "tuned"]] + [("auto", "tuned")])


def _case_id(case):
    return case[1] if case[0] == "ref" else f"{case[0]}-{case[1] if case[1] == 'tuned' else 'cfg' + str(case[1])}"


def _inputs():
    B, Hq, Hkv, N, D, _ = SHAPE
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, Hq, N, D, dtype=DTYPE, device="cuda", generator=g)
    k = torch.randn(B, Hkv, N, D, dtype=DTYPE, device="cuda", generator=g)
    v = torch.randn(B, Hkv, N, D, dtype=DTYPE, device="cuda", generator=g)
    region = torch.zeros(B, N, dtype=torch.bool, device="cuda")
    region[:, N // 8: N // 8 + N // 4: 2] = True
    return q, k, v, region


_REF_MASS: list = []


def _reference_mass(q, k, region, scale):
    """fp32 eager mass at SHAPE (causal), computed once per session (~6 GB of temporaries)."""
    if not _REF_MASS:
        N = q.shape[2]
        s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
        _REF_MASS.append((torch.softmax(s, -1) * region[:, None, None, :]).sum(-1))
        del s
        torch.cuda.empty_cache()
    return _REF_MASS[0]


def _cfg_name(cfg) -> str:
    return f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']} w{cfg.num_warps} s{cfg.num_stages}"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (compiled Triton, TRITON_INTERPRET unset)")
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_vrr_variant(benchmark, case):
    from triton.testing import do_bench

    mod = _kernel_module()
    variant, which = case
    B, Hq, Hkv, N, D, causal = SHAPE
    q, k, v, region = _inputs()
    cfg_name = None
    if variant == "ref":
        fn = pinned_sdpa(which, q, k, v, causal)
    else:
        if variant != "auto" and variant not in mod.supported_variants():
            pytest.skip(f"variant {variant} not supported by triton {__import__('triton').__version__} on this GPU")
        out = torch.empty_like(q)
        scale = D ** -0.5
        config = None
        if which != "tuned":
            config = mod.configs_for(D, DTYPE, variant=variant)[which]
            cfg_name = _cfg_name(config)

        def fn():
            return mod._vrr_attention_fwd(q, k, v, region, None, causal, scale, out, variant=variant, config=config)

        with torch.no_grad():
            mass = fn()
            torch.cuda.synchronize()
            err = (mass - _reference_mass(q, k, region, scale)).abs().max().item()
            assert err < 1e-2, f"{variant} {cfg_name}: mass differs from fp32 eager by {err}"
    with torch.no_grad():
        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
        benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=1, warmup_rounds=0)
    flops = 4 * B * Hq * N * N * D * (0.5 if causal else 1.0)
    info = dict(provider=which if variant == "ref" else variant, config=cfg_name or ("autotuned" if variant != "ref"
                else None), ms=round(ms, 4), tflops=round(flops / ms / 1e9, 1),
                shape=f"B{B} H{Hq} N{N} D{D} {'causal' if causal else 'full'} bf16")
    if variant == "ref":
        _REFERENCE_MS[which] = ms
    else:
        for ref, key in (("sdpa_cudnn", "vs_cudnn"), ("sdpa_flash", "vs_flash")):
            if ref in _REFERENCE_MS:
                info[key] = round(_REFERENCE_MS[ref] / ms, 3)
    benchmark.extra_info.update(info)
    print(f"\n| {_case_id(case)} | {info['config']} | {info['ms']} | {info['tflops']} | "
          f"{info.get('vs_cudnn', '')} | {info.get('vs_flash', '')} |")
