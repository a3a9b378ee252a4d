"""Combine the AAR rewards of the K candidates of each query (UMed-LVLM eq. for r_t).

``r = w_llm * r_llm + w_alr * ALR / max_K(ALR) + w_vrr * VRR / max_K(VRR) - format_penalty * (not format_ok)``.
ALR and VRR are divided by their maximum over the K candidates of the same query so each contributes on the same
scale; a group whose maximum is 0 contributes 0 (guard). VRR counts only when the response writes the class.
``norm="none"`` keeps a reward's raw value instead (an option beyond the paper: the max-normalization hands the
best box of a group 1.0 even when its IoU is 0.05, which rewards hedging, i.e. bigger boxes, under sampling noise).
Rows are query-major: rows ``q*K .. q*K+K-1`` belong to query ``q``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from umedfast.config import GROUP_NORMS


def normalize_by_group_max(x: Tensor, k: int, eps: float = 1e-8) -> Tensor:
    """Float[B] -> Float[B]: each value divided by the max of its group of K; groups with max <= eps give 0."""
    if x.numel() % k:
        raise ValueError(f"{x.numel()} rewards is not a multiple of K={k}")
    g = x.view(-1, k)
    mx = g.max(dim=1, keepdim=True).values
    return torch.where(mx > eps, g / mx.clamp_min(eps), torch.zeros_like(g)).reshape(-1)


def group_normalize(x: Tensor, k: int, norm: str) -> Tensor:
    """Float[B] -> Float[B]: ``norm="max"`` divides by the group max (the paper), ``"none"`` keeps ``x``."""
    if norm == "max":
        return normalize_by_group_max(x, k)
    if norm == "none":
        return x
    raise ValueError(f"unknown group normalization {norm!r} (choose from {GROUP_NORMS})")


@dataclass
class CombinedReward:
    """Per-candidate reward ``total [B]`` and its parts (already weighted), plus how many inputs were non-finite."""

    total: Tensor
    llm: Tensor
    alr: Tensor
    vrr: Tensor
    format: Tensor
    nonfinite: int


def combine_rewards(r_llm: Tensor, alr: Tensor, vrr: Tensor, k: int, *, class_written: Tensor | None = None,
                    format_ok: Tensor | None = None, w_llm: float = 1.0, w_alr: float = 1.0, w_vrr: float = 1.0,
                    format_penalty: float = 0.0, alr_norm: str = "max", vrr_norm: str = "max") -> CombinedReward:
    """All inputs Float[B] (B = n_queries * K); ``class_written`` / ``format_ok`` Bool[B]. A weight of 0 switches a
    reward off (the ablation flags). Non-finite inputs are replaced by 0 and counted, never propagated.
    ``alr_norm`` / ``vrr_norm``: "max" (divide by the group max, the paper) or "none" (raw value)."""
    nonfinite = 0
    parts = []
    for x in (r_llm, alr, vrr):
        x = x.detach().float()
        bad = ~torch.isfinite(x)
        nonfinite += int(bad.sum())
        parts.append(torch.where(bad, torch.zeros_like(x), x))
    r_llm, alr, vrr = parts
    if class_written is not None:
        vrr = vrr * class_written.float()
    llm_t = w_llm * r_llm
    alr_t = w_alr * group_normalize(alr, k, alr_norm)
    vrr_t = w_vrr * group_normalize(vrr, k, vrr_norm)
    fmt_t = torch.zeros_like(r_llm)
    if format_ok is not None and format_penalty:
        fmt_t = -format_penalty * (~format_ok.bool()).float()
    return CombinedReward(llm_t + alr_t + vrr_t + fmt_t, llm_t, alr_t, vrr_t, fmt_t, nonfinite)
