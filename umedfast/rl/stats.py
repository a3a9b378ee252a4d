"""Masked statistics over response tokens (mask = 1 on response tokens, 0 on prompt/padding)."""
from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, denom: float | Tensor | None = None) -> Tensor:
    """Mean of ``x`` where ``mask`` is true. ``x``, ``mask``: same shape. An all-zero mask gives 0, never NaN.

    ``denom`` (full reduction only) replaces the local token count, e.g. by the token count of all ranks divided by
    the world size, so that DDP's gradient average equals the mean over every rank's tokens.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        if denom is not None:
            return (x * mask).sum() / denom
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries (Bessel-corrected when ``unbiased`` and more than one entry)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.to(x.dtype).sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries; masked-out entries are returned as 0.

    ``shift_mean=False`` keeps the mean (as TRL does for rewards) and only rescales.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)
