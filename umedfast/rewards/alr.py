"""Abnormal Localization Reward (ALR): IoU of the boxes a response writes against the ground-truth boxes.

Boxes are xyxy normalized to [0, 1] (``umedfast.boxes`` convention). With several boxes on either side the score is
the best one-to-one matching (``umedfast.box_matching``, the same one the IoU metric uses):
``sum(matched pair scores) / max(n_pred, n_gt)``, so a missed lesion and an extra box both cost. A normal image (no ground truth) scores 1 when the response writes no box and 0 when it writes any.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from umedfast import ops
from umedfast.box_matching import Box, best_matching, boxes_tensor
from umedfast.boxes import parse_boxes

__all__ = ["ALRResult", "alr_score", "alr_from_text", "coordinate_accuracy", "corner_errors", "pair_scores"]


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
    a, b = boxes_tensor(pred), boxes_tensor(gt)
    iou = ops.box_iou_pairwise(a, b).float() if len(a) and len(b) else torch.zeros(len(a), len(b))
    if (giou_weight <= 0 and l1_weight <= 0) or not (len(a) and len(b)):
        return iou, iou
    score = (1 - giou_weight - l1_weight) * iou
    if giou_weight > 0:
        aa = a[:, None, :].expand(-1, len(b), -1).reshape(-1, 4)
        bb = b[None, :, :].expand(len(a), -1, -1).reshape(-1, 4)
        score = score + giou_weight * (ops.generalized_box_iou(aa, bb).float().reshape(len(a), len(b)) + 1) / 2
    if l1_weight > 0:
        score = score + l1_weight * coordinate_accuracy(a, b)
    return score, iou


def corner_errors(pred: Sequence[Box], gt: Sequence[Box], cap: float = 2.0) -> list[tuple[int, list[float]] | None]:
    """For each predicted box: ``(matched ground-truth index, [e_x1, e_y1, e_x2, e_y2])`` or None (unmatched).

    ``e_c = min(|pred_c - gt_c| / size, cap)``, ``size`` the target's width for x and height for y: moving one
    edge by ``d`` changes the IoU of a near-correct box by about ``d / size``, so the four errors are in IoU units.
    Boxes are matched one-to-one on ``IoU + coordinate_accuracy`` (``umedfast.box_matching.best_matching``), so a
    box that misses its target still gets an error to learn from (IoU alone is 0 there); a box whose corners are
    each more than one target size off is left unmatched.

    Why: the expected absolute error of a corner is lowest at the median of where the policy writes it, so the
    error is a per-coordinate signal that, unlike IoU on sampled boxes, does not reward hedged (wider) boxes."""
    if not len(pred) or not len(gt):
        return [None] * len(pred)
    a, b = boxes_tensor(pred), boxes_tensor(gt)
    score = ops.box_iou_pairwise(a, b).float() + coordinate_accuracy(a, b)
    _, pairs = best_matching(score.tolist())
    size = torch.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, dim=1).clamp_min(1e-3)  # [G, 4]: w, h, w, h
    out: list[tuple[int, list[float]] | None] = [None] * len(pred)
    for i, j, _ in pairs:
        out[i] = (j, ((a[i] - b[j]).abs() / size[j]).clamp_max(cap).tolist())
    return out


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
    _, pairs = best_matching(score.tolist())  # the same matching as the IoU metric (umedfast.eval.mau)
    denom = max(len(pred), len(gt))
    r = sum(v for _, _, v in pairs) / denom
    plain = sum(float(iou[i, j]) for i, j, _ in pairs) / denom
    clean = lambda v: min(max(v, 0.0), 1.0) if v == v else 0.0  # noqa: E731 - NaN-proof clamp
    return ALRResult(clean(r), clean(plain), True, len(pred))


def alr_from_text(text: str, gt: Sequence[Box], fmt: str = "norm1000", *, image_size=None,
                  giou_weight: float = 0.0, l1_weight: float = 0.0) -> ALRResult:
    """Parse the boxes written in ``text`` (``umedfast.boxes.parse_boxes``, never raises) and score them."""
    return alr_score(parse_boxes(text, fmt, image_size=image_size), gt, giou_weight, l1_weight)
