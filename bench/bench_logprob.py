"""Fused token log-prob / entropy vs the unfused torch path, at a real vocabulary (Qwen2: V = 151936), T = 1024.

Run: ``pytest bench/bench_logprob.py --benchmark-only`` (add ``-s`` to print the memory table).

Providers, side by side in one run:
  fused          umedfast.kernels.token_logprobs_entropy: Triton on CUDA; on plain CPU the chunked torch path
                 (same online log-sum-exp over vocabulary chunks, never [N, V])
  unfused_torch  logits = h @ W^T, log_softmax, gather, entropy = -sum p log p (the TRL-style path)
Modes:
  score_fwd      forward under no_grad (old / reference log-probs when scoring rollouts)
  train_fwd_bwd  forward + backward to hidden and LM-head weight (the PPO loss)

Peak memory is the most bytes allocated above what was live before the step (inputs excluded; the weight gradient
[V, H], the same for both providers, included): on CUDA from ``torch.cuda.max_memory_allocated``; on CPU from the
torch profiler's allocation events (each carries the allocator's running total), so it counts exactly what torch
allocates, including peaks inside one op (conftest.peak_memory_mb nets memory per op). ``extra_info`` carries
``peak_mib`` (and ``peak_mem_mb`` in 1e6 bytes, the name bench/conftest.py uses), ``mem_ratio_vs_unfused``, device.

Sizes: V=151936, T=1024 fixed; H defaults to 896 on CUDA and 256 on CPU (the [N, V] tensors that dominate the
unfused path do not depend on H; a CPU GEMM at H=896 takes ~15 s on 2 shared cores). Override with
UMEDFAST_BENCH_H, UMEDFAST_BENCH_ROUNDS (default 1 on CPU, 5 on CUDA).
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import device_name  # bench/conftest.py: shared device naming
from umedfast.kernels import token_logprobs_entropy

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
V, T = 151936, 1024
H = int(os.environ.get("UMEDFAST_BENCH_H", 896 if CUDA else 256))
DTYPE = torch.bfloat16 if CUDA else torch.float32
ROUNDS = int(os.environ.get("UMEDFAST_BENCH_ROUNDS", 5 if CUDA else 1))
MODES = ["score_fwd", "train_fwd_bwd"]


def fused(hidden, weight, targets):
    # on CPU force the chunked torch path even if TRITON_INTERPRET=1 leaked in: the interpreter is for tests
    return token_logprobs_entropy(hidden, weight, targets, backend=None if CUDA else "torch")


def unfused_torch(hidden, weight, targets):
    logits = (hidden @ weight.T).float()  # [N, V]
    logp = torch.log_softmax(logits, dim=-1)
    valid = targets != -100
    lp = logp.gather(-1, targets.clamp_min(0)[:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp * valid, ent * valid


PROVIDERS = {"fused": fused, "unfused_torch": unfused_torch}


def _device_name() -> str:
    return device_name(DEVICE)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _step(fn, mode, hidden, weight, targets):
    if mode == "score_fwd":
        with torch.no_grad():
            fn(hidden, weight, targets)
    else:
        hidden.grad = weight.grad = None
        lp, ent = fn(hidden, weight, targets)
        (lp.sum() - 0.01 * ent.sum()).backward()
    _sync()


def _peak_bytes(run) -> int:
    """Most bytes allocated above the starting level while ``run()`` executes."""
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        return torch.cuda.max_memory_allocated() - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:  # total_allocated counts from the start of profiling, so it is already relative to the inputs
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            peak = max(peak, node.extra_fields.total_allocated)
        stack.extend(node.children)
    return peak


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(T, H, generator=g, device=DEVICE, dtype=DTYPE).requires_grad_()
    weight = (torch.randn(V, H, generator=g, device=DEVICE, dtype=DTYPE) * H ** -0.5).requires_grad_()
    targets = torch.randint(0, V, (T,), generator=g, device=DEVICE)
    targets[: T // 8] = -100  # a prompt part, as in PPO batches
    return hidden, weight, targets


@pytest.fixture(scope="module")
def peaks(inputs):
    """Peak bytes for every (provider, mode), measured once (this run also warms up each provider)."""
    out = {}
    for mode in MODES:
        for name, fn in PROVIDERS.items():
            out[(name, mode)] = _peak_bytes(lambda: _step(fn, mode, *inputs))
    print(f"\n[bench_logprob] {_device_name()}  V={V} T={T} H={H} {DTYPE}")
    for mode in MODES:
        f, u = out[("fused", mode)], out[("unfused_torch", mode)]
        print(f"  {mode:14s} peak MiB fused {f / 2**20:9.1f}  unfused {u / 2**20:9.1f}  ratio {u / max(f, 1):5.1f}x")
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_logprob_entropy(benchmark, provider, mode, inputs, peaks):
    peak = peaks[(provider, mode)]
    ratio = peaks[("unfused_torch", mode)] / max(peak, 1)
    benchmark.group = f"logprob_entropy-{mode}"
    benchmark.extra_info.update(
        provider=provider, mode=mode, device=_device_name(), torch=torch.__version__, V=V, T=T, H=H,
        dtype=str(DTYPE), peak_mib=round(peak / 2**20, 1), peak_mem_mb=round(peak / 1e6, 3),
        mem_ratio_vs_unfused=round(ratio, 2),
        backend="triton" if (CUDA and provider == "fused") else "torch",
    )
    benchmark.pedantic(_step, args=(PROVIDERS[provider], mode, *inputs), rounds=ROUNDS, iterations=1)
    if provider == "fused":  # the memory goal (memory, not time: deterministic)
        assert ratio >= 4.0, f"{mode}: fused peak {peak / 2**20:.0f} MiB is only {ratio:.1f}x below unfused"
