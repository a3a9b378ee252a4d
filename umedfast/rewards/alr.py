"""Abnormal Localization Reward (ALR): IoU of the boxes a response writes against the ground-truth boxes.

Boxes are xyxy normalized to [0, 1] (``umedfast.boxes`` convention). With several boxes on either side the score is
the best one-to-one matching: ``sum(matched pair scores) / max(n_pred, n_gt)``, so a missed lesion and an extra box
both cost. A normal image (no ground truth) scores 1 when the response writes no box and 0 when it writes any.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch

Box = Sequence[float]

__all__ = ["ALRResult", "alr_score", "alr_from_text", "pair_scores"]


def _ops():
    try:  # the façade over compiled ops; a local formula keeps this module usable before it lands
        from umedfast import ops
        return ops.box_iou_pairwise, ops.generalized_box_iou
    except Exception:  # pragma: no cover - exercised only without umedfast.ops
        return _iou_pairwise_ref, _giou_ref


def _iou_pairwise_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: a Float[N, 4], b Float[M, 4] (xyxy) -> Float[N, M]; empty boxes give 0."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def _giou_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Paired GIoU: a, b Float[N, 4] -> Float[N] in [-1, 1]."""
    iou = torch.diagonal(_iou_pairwise_ref(a, b)) if len(a) else a.new_zeros(0)
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0).prod(-1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp_min(0).prod(-1)
    return torch.where(hull > 0, iou - (hull - union) / hull.clamp_min(1e-12), iou)


def coordinate_accuracy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Float[P, 4], Float[G, 4] (xyxy) -> Float[P, G]: ``max(0, 1 - mean|a - b| / s)``, ``s`` the target's mean
    side (a box whose corners are each one target size off scores 0; scale-free like IoU).

    Why next to IoU: under position noise the expected IoU of a box is highest for a box LARGER than the target
    (a "hedged" box), so PPO sampling at T = 1 learns to widen its boxes and greedy decoding then loses IoU
    (measured: predicted area / target area 1.2 -> 1.4-2.9 on the small-target sources). The expected absolute
    error of each corner is lowest at the noise's median, i.e. the unbiased box: this term pulls back."""
    err = (a[:, None, :] - b[None, :, :]).abs().mean(-1)
    side = ((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1])).clamp_min(1e-6) / 2
    return (1 - err / side[None, :]).clamp_min(0.0)


def pair_scores(pred: Sequence[Box], gt: Sequence[Box], giou_weight: float = 0.0,
                l1_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Score matrix for matching: ``(1 - w - v) * IoU + w * (GIoU + 1) / 2 + v * coordinate_accuracy`` and the
    plain IoU, both Float[P, G] (``w = giou_weight``, ``v = l1_weight``).

    The GIoU part is positive for a near miss, so a box that does not overlap still gets a signal that grows as it
    approaches the target (IoU alone is flat 0 there: VLM-R1 #21). The coordinate part also rewards near misses
    and does not reward hedging (:func:`coordinate_accuracy`).
    """
    iou_pw, giou_fn = _ops()
    a = torch.tensor([list(map(float, p)) for p in pred], dtype=torch.float32).reshape(-1, 4)
    b = torch.tensor([list(map(float, g)) for g in gt], dtype=torch.float32).reshape(-1, 4)
    iou = iou_pw(a, b).float() if len(a) and len(b) else torch.zeros(len(a), len(b))
    if (giou_weight <= 0 and l1_weight <= 0) or not (len(a) and len(b)):
        return iou, iou
    score = (1 - giou_weight - l1_weight) * iou
    if giou_weight > 0:
        aa = a[:, None, :].expand(-1, len(b), -1).reshape(-1, 4)
        bb = b[None, :, :].expand(len(a), -1, -1).reshape(-1, 4)
        score = score + giou_weight * (giou_fn(aa, bb).float().reshape(len(a), len(b)) + 1) / 2
    if l1_weight > 0:
        score = score + l1_weight * coordinate_accuracy(a, b)
    return score, iou


def _best_matching(score: torch.Tensor) -> list[tuple[int, int]]:
    """Maximum-total one-to-one matching on Float[P, G]: exact for min(P, G) <= 6, greedy beyond."""
    p, g = score.shape
    if p == 0 or g == 0:
        return []
    s = score.tolist()
    if min(p, g) <= 6 and max(p, g) <= 8:
        best, best_pairs = -1.0, []
        if p <= g:
            for cols in itertools.permutations(range(g), p):
                tot = sum(s[i][c] for i, c in enumerate(cols))
                if tot > best:
                    best, best_pairs = tot, [(i, c) for i, c in enumerate(cols)]
        else:
            for rows in itertools.permutations(range(p), g):
                tot = sum(s[r][j] for j, r in enumerate(rows))
                if tot > best:
                    best, best_pairs = tot, [(r, j) for j, r in enumerate(rows)]
        return best_pairs
    pairs, used_r, used_c = [], set(), set()
    for flat in torch.argsort(score.flatten(), descending=True).tolist():
        r, c = divmod(flat, g)
        if r not in used_r and c not in used_c:
            pairs.append((r, c)); used_r.add(r); used_c.add(c)
    return pairs


@dataclass(frozen=True)
class ALRResult:
    """``reward`` in [0, 1] (the ALR, GIoU-shaped if asked); ``iou`` the plain matched IoU (for logging/eval);
    ``format_ok`` False when ground truth exists but no box could be parsed (the caller may apply a penalty)."""

    reward: float
    iou: float
    format_ok: bool
    n_pred: int


def alr_score(pred: Sequence[Box], gt: Sequence[Box], giou_weight: float = 0.0, l1_weight: float = 0.0) -> ALRResult:
    """ALR of predicted boxes ``pred`` against ground truth ``gt`` (lists of xyxy in [0, 1])."""
    if len(gt) == 0:
        ok = len(pred) == 0
        return ALRResult(1.0 if ok else 0.0, 1.0 if ok else 0.0, True, len(pred))
    if len(pred) == 0:
        return ALRResult(0.0, 0.0, False, 0)
    score, iou = pair_scores(pred, gt, giou_weight, l1_weight)
    pairs = _best_matching(score)
    denom = max(len(pred), len(gt))
    r = sum(float(score[i, j]) for i, j in pairs) / denom
    plain = sum(float(iou[i, j]) for i, j in pairs) / denom
    clean = lambda v: min(max(v, 0.0), 1.0) if v == v else 0.0  # noqa: E731 - NaN-proof clamp
    return ALRResult(clean(r), clean(plain), True, len(pred))


def alr_from_text(text: str, gt: Sequence[Box], fmt: str = "norm1000", *, image_size=None,
                  giou_weight: float = 0.0, l1_weight: float = 0.0) -> ALRResult:
    """Parse the boxes written in ``text`` (``umedfast.boxes.parse_boxes``, never raises) and score them."""
    from umedfast.boxes import parse_boxes

    return alr_score(parse_boxes(text, fmt, image_size=image_size), gt, giou_weight, l1_weight)
