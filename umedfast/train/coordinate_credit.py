"""Coordinate advantages (``ppo.coord_advantages``): each coordinate a candidate writes is credited with its own error.

A box is four numbers, written as tokens. With one reward per answer, every digit of every coordinate is credited
with the whole answer's outcome: the class the answer names, the other three coordinates, and IoU, which on
sampled boxes rewards a hedged (wider) box. Here the tokens of coordinate ``c`` of a box matched to target ``t``
get ``w_alr * (e_base - e)``, ``e`` the coordinate's error in IoU units (``umedfast.rewards.alr.corner_errors``) and
``e_base`` the same coordinate's error of the query's greedy answer (``ppo.baseline=greedy``, when it has a box
on ``t``) or else the mean error of the other candidates that boxed ``t``. A coordinate nobody else wrote keeps the
whole-answer advantage. Every other token is unchanged.
"""
from __future__ import annotations

import torch

from umedfast.boxes import parse_boxes
from umedfast.data import record_targets
from umedfast.model import coordinate_token_slots
from umedfast.rewards.alr import corner_errors
from umedfast.train.rollout import Rollout

Errors = dict[tuple[int, int], float]  # (target index, coordinate 0..3) -> error in IoU units


def _errors(boxes, gt) -> tuple[Errors, list[int | None]]:
    """(errors by (target, coordinate), the target each box is matched to or None)."""
    out: Errors = {}
    targets: list[int | None] = []
    for m in corner_errors(boxes, gt):
        targets.append(None if m is None else m[0])
        if m is not None:
            out.update({(m[0], c): e for c, e in enumerate(m[1])})
    return out, targets


def coordinate_gains(tokenizer, ro: Rollout, k: int, box_format: str, w_alr: float, greedy_baseline: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain Float[B, L], credited Bool[B, L]) over the response positions of a query-major rollout of B = Q*K rows.

    ``greedy_baseline``: use the greedy anchor's error (``ro.anchor``) where it boxed the same target."""
    shape = ro.response_ids.shape
    gain = torch.zeros(shape)
    credited = torch.zeros(shape, dtype=torch.bool)
    errs: list[Errors] = []
    slots: list[list[int]] = []
    targets: list[list[int | None]] = []
    for b, rec in enumerate(ro.records):
        n = int(ro.response_mask[b].sum())
        gt = [box for _, box in record_targets(rec)]
        boxes, sl = coordinate_token_slots(tokenizer, ro.response_ids[b, :n], box_format,
                                           getattr(rec, "image_size", None))
        e, tg = _errors(boxes, gt)
        errs.append(e), slots.append(sl), targets.append(tg)
    anchor: list[Errors] = []
    if greedy_baseline and ro.anchor is not None:
        for rec, text in zip(ro.anchor.records, ro.anchor.texts):
            gt = [box for _, box in record_targets(rec)]
            anchor.append(_errors(parse_boxes(text, box_format, image_size=getattr(rec, "image_size", None)), gt)[0])
    for b in range(shape[0]):
        q = b // k
        others = [errs[o] for o in range(q * k, q * k + k) if o != b]
        gains = {}  # (target, coordinate) -> this row's gain, computed once for all of its tokens
        for key, e in errs[b].items():
            base = _baseline(key, anchor[q] if anchor else {}, others)
            if base is not None:
                gains[key] = w_alr * (base - e)
        for pos, slot in enumerate(slots[b]):
            key = (targets[b][slot // 4], slot % 4) if slot >= 0 else None
            if key in gains:
                gain[b, pos] = gains[key]
                credited[b, pos] = True
    return gain, credited


def _baseline(key: tuple[int, int], anchor: Errors, others: list[Errors]) -> float | None:
    """The greedy answer's error on ``key``, else the mean error of the other candidates that wrote it, else None."""
    if key in anchor:
        return anchor[key]
    vals = [e[key] for e in others if key in e]
    return sum(vals) / len(vals) if vals else None
