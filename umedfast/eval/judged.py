"""Judged diagnosis accuracy: the relevance judge of stage 2 (umedfast.rewards.judge) grades each answer.

judged_accuracy = fraction of graded answers with score >= threshold (0.5). Answers the judge failed to grade are
left out and counted in "judge_failures" (they are not given the training-time neutral score, which would bias
accuracy).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from umedfast.data import CLASS_SYNONYMS, record_targets
from umedfast.rewards.judge import JudgeItem, make_judge


def make_eval_judge(kind: str, *, base_url: str | None = None, model: str | None = None,
                    api_key_env: str = "UMEDFAST_JUDGE_API_KEY", concurrency: int = 8, timeout_s: float = 60.0):
    """The training judge configured for evaluation (failures return NaN instead of a neutral score)."""
    if kind == "openai":
        return make_judge("openai", base_url=base_url, model=model, api_key_env=api_key_env,
                          concurrency=concurrency, timeout_s=timeout_s, neutral=float("nan"))
    return make_judge(kind)


def judge_items(records: Sequence[Any], responses: Sequence[str], *, box_format: str = "norm1000") -> list:

    items = []
    for r, resp in zip(records, responses):
        labels = tuple(dict.fromkeys(lab for lab, _ in record_targets(r)))
        syn = tuple(s for lab in labels for s in CLASS_SYNONYMS.get(r.source, {}).get(lab, []))
        items.append(JudgeItem(query=r.query, response=resp, reference=r.response or "", labels=labels,
                               synonyms=syn, box_format=box_format))
    return items


def judged_accuracy(records: Sequence[Any], responses: Sequence[str], judge, *, threshold: float = 0.5,
                    box_format: str = "norm1000") -> tuple[dict, list[float | None]]:
    """({"judged_accuracy", "judged_mean_score", "judge_failures", "judge"}, per-sample scores or None)."""
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    raw = judge.score(judge_items(records, responses, box_format=box_format))
    scores = [None if (s is None or math.isnan(float(s))) else float(s) for s in raw]
    ok = [s for s in scores if s is not None]
    return {
        "judged_accuracy": sum(s >= threshold for s in ok) / len(ok) if ok else None,
        "judged_mean_score": sum(ok) / len(ok) if ok else None,
        "judge_failures": len(scores) - len(ok),
        "judge": getattr(judge, "name", type(judge).__name__),
    }, scores
