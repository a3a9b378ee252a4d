"""Abnormal-Aware Rewards of a rollout: relevance (judge), ALR (IoU of written boxes), VRR (attention mass of the
class tokens on the region patches, through ``umedfast.rewards.vrr.vrr_forward``), combined per query group."""
from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch

from umedfast.answers import says_normal
from umedfast.boxes import parse_boxes
from umedfast.config import RewardsConfig, VRRMentions, VRRQuery
from umedfast.data import CLASS_SYNONYMS, record_targets, synonyms
from umedfast.model import image_region_mask, phrase_token_positions
from umedfast.rewards.alr import alr_from_text
from umedfast.rewards.combine import CombinedReward, combine_rewards
from umedfast.rewards.judge import JudgeItem
from umedfast.rewards.vrr import vrr_forward
from umedfast.train.rollout import Rollout


@dataclass
class RawRewards:
    """Un-normalized reward parts of a rollout's B rows: Float[B] ``r_llm``, ``alr``, ``iou``, ``vrr``; Bool[B]
    ``format_ok``, ``class_written`` (VRR counts only where the response writes a ground-truth class)."""

    r_llm: torch.Tensor
    alr: torch.Tensor
    iou: torch.Tensor
    format_ok: torch.Tensor
    vrr: torch.Tensor
    class_written: torch.Tensor


@dataclass
class RolloutRewards(RawRewards):
    """Per candidate: the raw parts (``RawRewards``, plain IoU for logging) and the combined reward."""

    combined: CombinedReward
    anchor_total: torch.Tensor | None = None  # Float[Q]: the greedy anchor's combined reward (ppo.baseline=greedy)
    anchor_alr: torch.Tensor | None = None  # Float[Q]: its weighted, normalized ALR part (span advantages)


VRR_QUERIES = get_args(VRRQuery)
VRR_MENTIONS = get_args(VRRMentions)


def class_token_mask(bundle, ro: Rollout, labels: list[list[str]], query: str = "producer",
                     mentions: str = "all") -> torch.Tensor:
    """Bool[B, P+L]: the VRR query positions of the response tokens that spell a ground-truth class label.

    ``mentions="first"``: only each label's first mention. Why: the class tokens of a repeated finding ("Recognition:
    first, kidney stone. Recognition: second, kidney stone.", after two boxes on the same lesion) attend to the
    region more than the first mention does (measured on the SFT policy: VRR 0.126 for such answers vs 0.094 for
    the one-finding answer), so VRR over all mentions pays PPO to write one lesion as two findings.

    ``query="token"``: the class token's own position (its hidden state READS the token and predicts the next one).
    ``query="producer"`` (default): one position earlier, the query whose attention PRODUCED the class token
    (position ``P-1+j`` predicts response token ``j``). Evidence for the default: docs/training.md, "VRR query"."""
    if query not in VRR_QUERIES:
        raise ValueError(f"rewards.vrr_query must be one of {VRR_QUERIES}, got {query!r}")
    if mentions not in VRR_MENTIONS:
        raise ValueError(f"rewards.vrr_mentions must be one of {VRR_MENTIONS}, got {mentions!r}")
    shift = 1 if query == "producer" else 0

    ids = ro.batch["input_ids"]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for b in range(ids.shape[0]):
        n = int(ro.response_mask[b].sum())
        row = ro.response_ids[b, :n].tolist()
        for lab in set(labels[b]):
            for j in phrase_token_positions(bundle.tokenizer, row, lab, first_only=mentions == "first"):
                mask[b, ro.prompt_width + j - shift] = True
    return mask


def compute_vrr(bundle, ro: Rollout, boxes: list[list], labels: list[list[str]], layers=None, query="producer",
                mentions="all"):
    """(vrr Float[B], class_written Bool[B]); rows whose response names no class get 0 without a kernel call.
    ``query``, ``mentions``: see :func:`class_token_mask`."""
    cls = class_token_mask(bundle, ro, labels, query, mentions)
    written = cls.any(dim=1)
    vrr = torch.zeros(len(ro.texts))
    if not bool(written.any()):
        return vrr, written.cpu()
    region = image_region_mask(bundle, ro.batch, boxes)
    model = bundle.model
    was = model.training
    model.eval()
    try:
        _, v = vrr_forward(model, ro.batch, region, cls, layers=layers)
    finally:
        model.train(was)
    return v.float().cpu(), written.cpu()


def credit_normal_answers(texts: list[str], normal: list[bool], vrr: torch.Tensor, written: torch.Tensor,
                          box_format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """VRR for normal images (Float[B], Bool[B] -> same): an answer that says "normal" and writes no box earns the
    full VRR (1.0), any other answer 0.

    The paper defines VRR for abnormal images only. Left at 0, a normal image can earn at most 2 of the 3 reward
    points while an abnormal one earns 3; a critic that cannot yet tell the two apart then gives every "normal"
    answer a negative advantage, and PPO learns never to answer normal (measured: 8 of 40 normal test images
    answered correctly after SFT, 0 after full-AAR PPO; 8 after PPO without VRR). Crediting the correct normal
    answer restores parity: "there is nothing to attend to" is perfectly grounded."""
    vrr, written = vrr.clone(), written.clone()
    for i, (text, is_normal) in enumerate(zip(texts, normal)):
        if is_normal:
            ok = says_normal(text) and not parse_boxes(text, box_format)
            vrr[i], written[i] = float(ok), ok
    return vrr, written


def raw_rewards(bundle, ro: Rollout, judge, cfg: RewardsConfig, box_format: str) -> RawRewards:
    """Every reward part of every row before the group normalization. A part whose weight is 0 is not computed."""
    tg = [record_targets(r) for r in ro.records]
    labels = [[lab for lab, _ in t] for t in tg]
    boxes = [[box for _, box in t] for t in tg]
    B = len(ro.texts)
    alr, iou, fmt = torch.zeros(B), torch.zeros(B), torch.ones(B, dtype=torch.bool)
    for i, (text, bx) in enumerate(zip(ro.texts, boxes)):
        res = alr_from_text(text, bx, box_format, image_size=getattr(ro.records[i], "image_size", None),
                            giou_weight=cfg.giou_weight, l1_weight=cfg.box_l1_weight)
        alr[i], iou[i], fmt[i] = res.reward, res.iou, res.format_ok
    if cfg.w_llm:
        items = [JudgeItem(query=r.query, response=t, reference=r.response, labels=tuple(lab),
                           synonyms=tuple(s for x in lab for s in synonyms(r.source, x)), box_format=box_format,
                           other_classes=tuple(c for c in CLASS_SYNONYMS.get(r.source, {}) if c not in lab))
                 for r, t, lab in zip(ro.records, ro.texts, labels)]
        r_llm = torch.tensor(judge.score(items), dtype=torch.float32)
    else:
        r_llm = torch.zeros(B)
    if cfg.w_vrr:
        vrr, written = compute_vrr(bundle, ro, boxes, labels, list(cfg.vrr_layers) or None, cfg.vrr_query,
                                   cfg.vrr_mentions)
        if cfg.vrr_normal_credit:
            vrr, written = credit_normal_answers(ro.texts, [not t for t in tg], vrr, written, box_format)
    else:
        vrr, written = torch.zeros(B), torch.zeros(B, dtype=torch.bool)
    return RawRewards(r_llm, alr, iou, fmt, vrr, written)


def _combine(raw: RawRewards, k: int, cfg: RewardsConfig) -> CombinedReward:
    return combine_rewards(raw.r_llm, raw.alr, raw.vrr, k, class_written=raw.class_written,
                           format_ok=raw.format_ok, w_llm=cfg.w_llm, w_alr=cfg.w_alr, w_vrr=cfg.w_vrr,
                           format_penalty=cfg.format_penalty, alr_norm=cfg.alr_norm, vrr_norm=cfg.vrr_norm)


def with_anchor(raw: RawRewards, anchor: RawRewards, k: int) -> RawRewards:
    """Interleave one anchor row per query after its K candidates: B = Q*K rows + Q rows -> Q*(K+1) rows."""
    def join(a, b):
        return torch.cat([a.view(-1, k, *a.shape[1:]), b.view(-1, 1, *b.shape[1:])], dim=1).flatten(0, 1)

    return RawRewards(*(join(getattr(raw, f), getattr(anchor, f)) for f in RawRewards.__dataclass_fields__))


def score_rollout(bundle, ro: Rollout, judge, cfg: RewardsConfig, k: int, *,
                  box_format: str = "norm1000") -> RolloutRewards:
    """All AAR rewards of a rollout of ``k`` candidates per query (``cfg``: the config's ``rewards`` section). A
    reward whose weight is 0 is not computed (ablations cost nothing).

    With a greedy anchor (``ro.anchor``, ``ppo.baseline=greedy``) the anchor joins its query's group for the ALR /
    VRR max-normalization (K+1 rows) and its combined reward comes back as ``anchor_total`` Float[Q] (its ALR
    part as ``anchor_alr``)."""
    raw = raw_rewards(bundle, ro, judge, cfg, box_format)
    anchor_total = anchor_alr = None
    if ro.anchor is not None:
        both = _combine(with_anchor(raw, raw_rewards(bundle, ro.anchor, judge, cfg, box_format), k), k + 1, cfg)
        rows = torch.arange(len(ro.texts) + len(ro.anchor.texts)).view(-1, k + 1)
        cand, anc = rows[:, :k].flatten(), rows[:, k]
        comb = CombinedReward(*(getattr(both, f)[cand] for f in ("total", "llm", "alr", "vrr", "format")),
                              both.nonfinite)
        anchor_total, anchor_alr = both.total[anc], both.alr[anc]
    else:
        comb = _combine(raw, k, cfg)
    return RolloutRewards(raw.r_llm, raw.alr, raw.iou, raw.format_ok, raw.vrr, raw.class_written, comb,
                          anchor_total, anchor_alr)
