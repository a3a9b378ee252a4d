"""PPO losses and the per-token KL estimators. Inputs are per-token tensors ``[B, T]`` with a response ``mask``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from umedfast.rl.stats import masked_mean


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs (Schulman, "Approximating KL").

    k1 = log pi - log pi_ref (unbiased, can be negative); k3 = (r - 1) - log r with r = pi_ref/pi (unbiased, >= 0);
    k2 = 0.5 * (log r)^2. Float[B, T] -> Float[B, T].
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        # clamp keeps exp finite for tokens the reference finds nearly impossible
        neg = (-log_ratio).clamp(max=20.0)
        return torch.expm1(neg) - neg
    raise ValueError(f"unknown KL estimator {kind!r}; expected k1, k2 or k3")


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                clip_eps: float = 0.2, denom: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Clipped surrogate loss of PPO: ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))`` over response tokens.

    Returns ``(loss scalar, clip_fraction scalar)``. ``denom``: see :func:`~umedfast.rl.stats.masked_mean`.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, denom=denom)
    clip_frac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask, denom=denom)
    return loss, clip_frac.detach()


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range: float = 0.2, denom: float | Tensor | None = None) -> Tensor:
    """Clipped value loss: ``0.5 * mean(max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2))``.

    ``clip_range`` <= 0: plain ``0.5 * mean((v - R)^2)``. ``denom``: see :func:`~umedfast.rl.stats.masked_mean`."""
    if clip_range <= 0:
        return 0.5 * masked_mean((values - returns) ** 2, mask, denom=denom)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask, denom=denom)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: Float[..., V] -> Float[...]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def gather_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token]: logits Float[B, T, V], tokens Long[B, T] -> Float[B, T] (float32)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
