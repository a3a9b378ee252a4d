"""Box matching: the best one-to-one assignment of predicted boxes to ground-truth boxes.

The one matching behind both the ALR reward (``umedfast.rewards.alr``) and the IoU metric (``umedfast.eval.mau``),
so the reward and the metric always pair the same boxes. Boxes are xyxy normalized to [0, 1]; overlaps come from
``umedfast.ops`` (compiled, or its own pure-torch fallback): empty/inverted boxes have area 0 and IoU 0, a box with
a non-finite coordinate has IoU 0, never NaN.
"""
from __future__ import annotations

from typing import Sequence

import torch

from umedfast import ops

Box = Sequence[float]

__all__ = ["Box", "boxes_tensor", "iou_matrix", "best_matching", "EXACT_UP_TO"]

EXACT_UP_TO = 16  # exact matching while min(#pred, #gt) <= this; greedy by descending score beyond (never seen)


def boxes_tensor(boxes: Sequence[Box]) -> torch.Tensor:
    """A list of xyxy boxes as ``Float32[N, 4]`` (``[0, 4]`` for an empty list)."""
    return torch.tensor([list(map(float, b)) for b in boxes], dtype=torch.float32).reshape(-1, 4)


def iou_matrix(pred: Sequence[Box], gt: Sequence[Box]) -> list[list[float]]:
    """IoU of every predicted box against every ground-truth box: ``[len(pred)][len(gt)]`` floats in [0, 1]."""
    if not pred or not gt:
        return [[0.0] * len(gt) for _ in pred]
    return ops.box_iou_pairwise(boxes_tensor(pred), boxes_tensor(gt)).float().clamp(0, 1).tolist()


def best_matching(score: Sequence[Sequence[float]]) -> tuple[float, list[tuple[int, int, float]]]:
    """Maximum-total one-to-one assignment on a ``[P][G]`` score matrix (IoU, or the ALR's shaped score; >= 0).

    Returns ``(total, [(pred_index, gt_index, score), ...])`` for the matched pairs with score > 0, sorted by
    ``pred_index``. Exact (dynamic programming over subsets of the smaller side) while ``min(P, G) <=
    EXACT_UP_TO``; greedy by descending score beyond that.
    """
    p = len(score)
    g = len(score[0]) if p else 0
    if p == 0 or g == 0:
        return 0.0, []
    if g > p:  # run the subset DP over the smaller side: cost max(P, G) * 2^min(P, G) * min(P, G)
        total, pairs = best_matching([[score[i][j] for i in range(p)] for j in range(g)])
        return total, sorted((i, j, v) for j, i, v in pairs)
    if g > EXACT_UP_TO:
        ranked = sorted(((score[i][j], i, j) for i in range(p) for j in range(g)), reverse=True)
        used_p, used_g, out = set(), set(), []
        for v, i, j in ranked:
            if v > 0 and i not in used_p and j not in used_g:
                used_p.add(i), used_g.add(j), out.append((i, j, v))
        return sum(v for _, _, v in out), sorted(out)
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
                v = dp[mask] + score[i][j]
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
            pairs.append((i, j, score[i][j]))
            mask ^= 1 << j
    return total, [(i, j, v) for i, j, v in reversed(pairs) if v > 0]
