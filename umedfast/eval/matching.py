"""Box matching for evaluation: best one-to-one assignment of predicted boxes to ground-truth boxes.

Boxes are xyxy normalized to [0, 1]. The IoU matrix comes from `umedfast.ops.box_iou_pairwise` when that façade
exists, else from the plain-torch formula below (same semantics: empty/inverted boxes have area 0, IoU 0, never NaN).
"""
from __future__ import annotations

from typing import Sequence

import torch

Box = Sequence[float]


def _iou_matrix_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain torch IoU. a: Tensor[N, 4], b: Tensor[M, 4] (xyxy) -> Tensor[N, M] float32 in [0, 1]."""
    a = torch.nan_to_num(a.float(), nan=0.0, posinf=0.0, neginf=0.0)
    b = torch.nan_to_num(b.float(), nan=0.0, posinf=0.0, neginf=0.0)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def iou_matrix(pred: Sequence[Box], gt: Sequence[Box]) -> list[list[float]]:
    """IoU of every predicted box against every ground-truth box: [len(pred)][len(gt)] floats."""
    if not pred or not gt:
        return [[0.0] * len(gt) for _ in pred]
    a = torch.tensor([list(map(float, p)) for p in pred], dtype=torch.float32)
    b = torch.tensor([list(map(float, g)) for g in gt], dtype=torch.float32)
    try:
        from umedfast import ops  # the one façade over compiled ops (may not exist in a partial checkout)
        m = ops.box_iou_pairwise(a, b)
    except (ImportError, AttributeError):
        m = _iou_matrix_torch(a, b)
    return m.float().clamp(0, 1).tolist()


def best_matching(iou: list[list[float]]) -> tuple[float, list[tuple[int, int, float]]]:
    """Maximum-total-IoU one-to-one assignment.

    iou: [P][G] matrix. Returns (total IoU, [(pred_index, gt_index, iou), ...]) for matched pairs with IoU > 0.
    Exact dynamic programming over subsets of ground-truth boxes (G <= 16; images carry a handful of lesions),
    greedy by descending IoU beyond that.
    """
    p = len(iou)
    g = len(iou[0]) if p else 0
    if p == 0 or g == 0:
        return 0.0, []
    if g > 16:
        pairs = sorted(((iou[i][j], i, j) for i in range(p) for j in range(g)), reverse=True)
        used_p, used_g, out = set(), set(), []
        for v, i, j in pairs:
            if v > 0 and i not in used_p and j not in used_g:
                used_p.add(i), used_g.add(j), out.append((i, j, v))
        return sum(v for _, _, v in out), out
    # dp[mask] = best total after the predictions seen so far, using exactly the GT boxes in mask
    neg = float("-inf")
    dp = [neg] * (1 << g)
    dp[0] = 0.0
    choice: list[list[int]] = []  # choice[i][mask] = GT index taken by prediction i to reach mask (-1 = none)
    for i in range(p):
        new = dp[:]
        ch = [-1] * (1 << g)
        for mask in range(1 << g):
            if dp[mask] == neg:
                continue
            for j in range(g):
                bit = 1 << j
                if mask & bit:
                    continue
                v = dp[mask] + iou[i][j]
                if v > new[mask | bit]:
                    new[mask | bit] = v
                    ch[mask | bit] = j
        dp = new
        choice.append(ch)
    best_mask = max(range(1 << g), key=lambda m: dp[m])
    total = dp[best_mask]
    # walk back: at step i, if choice says GT j was added there, prediction i took j
    pairs, mask = [], best_mask
    for i in range(p - 1, -1, -1):
        j = choice[i][mask]
        if j >= 0 and mask & (1 << j):
            pairs.append((i, j, iou[i][j]))
            mask ^= 1 << j
    pairs = [(i, j, v) for i, j, v in reversed(pairs) if v > 0]
    return total, pairs
