"""Counter-based sampling: every sampled token is a pure function of (run seed, PPO step, query id, candidate index,
response position) and the logits, whatever the world size, the batch composition or the padding.

HF's sampler draws from one global RNG stream, so the candidates of a query depend on which other rows share the
batch (and on the rank): 2 processes cannot reproduce 1. Here each row carries a 64-bit key (a hash of seed, step,
query id and candidate index); at response position ``t`` the uniform for vocabulary entry ``v`` is
``splitmix64(mix(key, t) + v)``, turned into Gumbel noise ``g = -log(-log u)``. Generation then runs greedy
(``do_sample=False``) on ``logits / T`` (top-p applied) ``+ g``: the argmax of Gumbel-perturbed logits is an exact
sample from ``softmax(logits / T)`` restricted to the nucleus (the Gumbel-max trick).

Cost per generated token: one chain of ~12 elementwise int64/float ops over [B, V] (no sort unless top-p < 1),
instead of HF's softmax + ``torch.multinomial``.
"""
from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor
from transformers.generation.logits_process import TopPLogitsWarper

_M64 = (1 << 64) - 1


def _s64(x: int) -> int:
    """A Python int taken modulo 2^64 as a signed int64 (torch integer arithmetic wraps the same way)."""
    x &= _M64
    return x - (1 << 64) if x >> 63 else x


GOLDEN = _s64(0x9E3779B97F4A7C15)
_C1 = _s64(0xBF58476D1CE4E5B9)
_C2 = _s64(0x94D049BB133111EB)
UNIFORM_BITS = 23  # float32 holds (bits + 0.5) exactly for bits < 2^23, so u is strictly inside (0, 1)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic on signed integers)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """splitmix64's finalizer on an int64 tensor (any shape), wrapping arithmetic; a bijection of 64-bit words.

    ``inplace`` overwrites ``x`` and reuses one scratch buffer (the [B, V] case: 3x fewer allocations)."""
    if not inplace:
        x = x.clone()
    t = torch.empty_like(x)
    for shift, mult in ((30, _C1), (27, _C2), (31, None)):
        torch.bitwise_right_shift(x, shift, out=t)
        t &= (1 << (64 - shift)) - 1  # logical shift
        x ^= t
        if mult is not None:
            x *= mult
    return x


def row_keys(seed: int, step: int, query_ids: list[str], candidates: list[int]) -> torch.Tensor:
    """Long[B] keys, one per generated row, from the run seed, the PPO step, the query's id and the candidate index."""
    out = []
    for q, j in zip(query_ids, candidates):
        h = hashlib.blake2b(f"{seed}\x1f{step}\x1f{q}\x1f{j}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "little", signed=True))
    return torch.tensor(out, dtype=torch.long)


def uniforms(keys: torch.Tensor, position: int, vocab: int, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Float32[B, V] uniforms in (0, 1): row ``b``, column ``v`` is a hash of (keys[b], position, v).

    ``offsets`` (optional) is ``arange(V) * GOLDEN`` on the keys' device, cached by the caller.
    """
    if offsets is None:
        offsets = torch.arange(vocab, device=keys.device, dtype=torch.long) * GOLDEN
    k = mix64(keys + _s64((position + 1) * 0xD1B54A32D192ED03))  # [B] per-position stream key
    z = mix64(k[:, None] + offsets[None, :vocab], inplace=True)  # [B, V]: splitmix64 outputs of the row's stream
    u = _srl(z, 64 - UNIFORM_BITS).float()
    return u.add_(0.5).mul_(2.0 ** -UNIFORM_BITS)


class CounterGumbelSampler(LogitsProcessor):
    """Logits processor that turns greedy generation into keyed sampling (temperature, top-p, Gumbel-max).

    keys Long[B]: one per row of the generation batch (see :func:`row_keys`); prompt_width: the input width of
    ``generate`` (the response position is ``input_ids.shape[1] - prompt_width``, independent of left padding).
    Use with ``do_sample=False``; it must come last (HF appends custom processors after its own, e.g. suppression).
    """

    def __init__(self, keys: torch.Tensor, prompt_width: int, temperature: float = 1.0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.keys = keys
        self.prompt_width = prompt_width
        self.temperature = float(temperature)
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self._offsets: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """scores Float[B, V] -> perturbed Float32[B, V]; its row-wise argmax is the sampled token."""
        s = scores.float()
        if self.temperature != 1.0:
            s = s / self.temperature
        if self.top_p is not None:
            s = self.top_p(input_ids, s)
        v = s.shape[-1]
        if self._offsets is None or self._offsets.shape[0] < v or self._offsets.device != s.device:
            self._offsets = torch.arange(v, device=s.device, dtype=torch.long) * GOLDEN
            self.keys = self.keys.to(s.device)  # once, not one host-to-device copy per token
        g = uniforms(self.keys, input_ids.shape[1] - self.prompt_width, v, self._offsets)
        g = g.log_().neg_().log_()  # -Gumbel noise, in place
        return s - g  # -inf (suppressed / outside the nucleus) stays -inf
