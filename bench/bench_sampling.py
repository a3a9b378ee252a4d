"""Per-token cost of PPO's counter-based sampler vs HF's sampler (softmax + ``torch.multinomial``).

    python -m pytest bench/bench_sampling.py --benchmark-only [--benchmark-columns=median,iqr,rounds]

Providers (one generated token for a batch of B rows, logits Float32[B, V] given):
- ``counter`` : ``umedfast.train.sampling.CounterGumbelSampler`` + argmax (what PPO rollouts use: keyed, world-size
  independent samples).
- ``hf``      : what HF ``generate(do_sample=True)`` does: top-p warper (when < 1), softmax, ``torch.multinomial``.
Shapes: B = 32 rows; V = 816 (the tiny demo tokenizer), 32,000 (LLaMA/LLaVA-1.5) and 151,936 (Qwen2-VL); top-p 1.0
and 0.9 (the nucleus sort then dominates both).
"""
import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from umedfast.train.sampling import CounterGumbelSampler, row_keys

from conftest import cuda_devices, record, synchronized

B = 32


def _providers(vocab, top_p, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    scores = torch.randn(B, vocab, generator=g).to(device)
    ids = torch.zeros(B, 10, dtype=torch.long, device=device)
    counter = CounterGumbelSampler(row_keys(0, 0, [str(i) for i in range(B)], [0] * B).to(device), 5, 1.0, top_p)
    warp = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def run_counter():
        return counter(ids, scores).argmax(-1)

    def run_hf():
        s = scores if warp is None else warp(ids, scores.clone())
        return torch.multinomial(torch.softmax(s, -1), 1)

    return {"counter": run_counter, "hf": run_hf}


@pytest.mark.parametrize("device", ["cpu", *cuda_devices()])
@pytest.mark.parametrize("top_p", [1.0, 0.9])
@pytest.mark.parametrize("vocab", [816, 32000, 151936])
@pytest.mark.parametrize("provider", ["counter", "hf"])
def test_sample_token(benchmark, provider, vocab, top_p, device):
    fn = synchronized(_providers(vocab, top_p, device)[provider], device)
    benchmark.group = f"sample B={B} V={vocab} top_p={top_p} {device}"
    record(benchmark, fn, device, vocab=vocab, top_p=top_p, batch=B)
    benchmark(fn)
