"""Metrics for the external benchmarks (VQA-RAD, SLAKE, PMC-VQA, PneumoniaMNIST) and the model-side scoring.

Definitions (docs/evaluation.md):
- closed: answers normalized (lowercase, punctuation -> space). Yes/no ground truth: correct when the first
  "yes"/"no" word of the prediction equals it. Other closed answers ("left", "CT"): correct when the normalized
  answer's words occur contiguously in the normalized prediction.
- open: token recall (LLaVA-Med's evaluation): |answer tokens present in the prediction| / |answer tokens|.
- choice (PMC-VQA): the option letter read from the prediction ("B", "(B)", "B:", "answer is B"), else the one
  option whose text the prediction contains; accuracy over questions (unparseable = wrong).
- binary (PneumoniaMNIST): ROC AUC of the model's probability of the positive answer (Mann-Whitney, ties count 1/2),
  plus accuracy of the generated yes/no.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

import torch
from tqdm.auto import tqdm

from umedfast.eval.mau import for_collate, generate_responses
from umedfast.model import collate_chat
from umedfast.model.collate import model_inputs

_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_text(text: str) -> list[str]:
    """Lowercase word tokens with punctuation removed: "Yes, the LEFT lung." -> ["yes", "the", "left", "lung"]."""
    return _PUNCT.sub(" ", str(text).lower()).split()


def _first_yes_no(tokens: list[str]) -> str | None:
    for t in tokens:
        if t in ("yes", "no"):
            return t
    return None


def closed_correct(prediction: str, answer: str) -> bool:
    """Exact closed-question scoring (yes/no by the first yes/no word; otherwise contiguous normalized match)."""
    gt, pred = normalize_text(answer), normalize_text(prediction)
    if not gt:
        return False
    if gt in (["yes"], ["no"]):
        return _first_yes_no(pred) == gt[0]
    n = len(gt)
    return any(pred[i:i + n] == gt for i in range(len(pred) - n + 1))


def open_recall(prediction: str, answer: str) -> float:
    """Token recall of the answer in the prediction, in [0, 1] (0 for an empty answer)."""
    gt = normalize_text(answer)
    if not gt:
        return 0.0
    pred = set(normalize_text(prediction))
    return sum(t in pred for t in gt) / len(gt)


_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-D])\s*(?:[).:]|$)"),  # "B", "B: ...", "(B) ...", "B. ..." (not the article "A ...")
    re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-D])\b"),  # "the answer is B"
    re.compile(r"\(([A-D])\)"),                                          # "... (B) ..."
]


def parse_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """Index of the option the prediction picks, or None when it cannot be read."""
    text = str(prediction)
    for pat in _LETTER_PATTERNS:
        m = pat.search(text)
        if m:
            return "ABCD".index(m.group(1))
    norm_pred = " ".join(normalize_text(text))
    hits = [i for i, c in enumerate(choices)
            if normalize_text(c) and f" {' '.join(normalize_text(c))} " in f" {norm_pred} "]
    if len(hits) > 1:  # "CT scan" also contains the option "CT": drop options contained in another hit
        norm = {i: f" {' '.join(normalize_text(choices[i]))} " for i in hits}
        hits = [i for i in hits if not any(j != i and norm[i] in norm[j] and norm[i] != norm[j] for j in hits)]
    return hits[0] if len(hits) == 1 else None


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC by the Mann-Whitney statistic with average ranks for ties. None when one class is absent."""
    pairs = sorted(zip(map(float, scores), map(int, labels)))
    n_pos = sum(y for _, y in pairs)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1  # 1-based average rank of the tie block
        rank_sum += avg_rank * sum(y for _, y in pairs[i:j + 1])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def score_benchmark_samples(samples, responses: Sequence[str], scores: Sequence[float] | None = None) -> list[dict]:
    """Per-sample results: {id, benchmark, answer_type, answer, response, correct | recall, choice, score}."""
    if len(samples) != len(responses):
        raise ValueError(f"{len(samples)} samples but {len(responses)} responses")
    if scores is not None and len(scores) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(scores)} scores")
    out = []
    for k, (s, r) in enumerate(zip(samples, responses)):
        row = {"id": s.id, "benchmark": s.benchmark, "answer_type": s.answer_type, "answer": s.answer, "response": r}
        if s.answer_type == "closed":
            row["correct"] = closed_correct(r, s.answer)
        elif s.answer_type == "open":
            row["recall"] = open_recall(r, s.answer)
        elif s.answer_type == "choice":
            row["choice"] = parse_choice(r, s.choices or [])
            row["correct"] = row["choice"] == s.label
        elif s.answer_type == "binary":
            row["label"] = s.label
            row["correct"] = closed_correct(r, "yes" if s.label else "no")
            row["score"] = None if scores is None else float(scores[k])
        else:
            raise ValueError(f"{s.id}: unknown answer_type {s.answer_type!r}")
        out.append(row)
    return out


def benchmark_metrics(samples, responses: Sequence[str], scores: Sequence[float] | None = None) -> dict:
    """{benchmark: {"closed_acc", "open_recall", "choice_acc", "auc", "binary_acc", "n", "n_closed", ...}}.

    Keys appear only where the benchmark has questions of that type; values are fractions in [0, 1].
    scores: per-sample probability of the positive answer (needed for "auc"; ignored for non-binary samples).
    """
    rows = score_benchmark_samples(samples, responses, scores)
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["benchmark"]].append(r)
    res = {}
    for name, rs in sorted(by.items()):
        m: dict = {"n": len(rs)}
        closed = [r for r in rs if r["answer_type"] == "closed"]
        opened = [r for r in rs if r["answer_type"] == "open"]
        choice = [r for r in rs if r["answer_type"] == "choice"]
        binary = [r for r in rs if r["answer_type"] == "binary"]
        if closed:
            m.update(closed_acc=_mean(r["correct"] for r in closed), n_closed=len(closed))
        if opened:
            m.update(open_recall=_mean(r["recall"] for r in opened), n_open=len(opened))
        if choice:
            m.update(choice_acc=_mean(r["correct"] for r in choice), n_choice=len(choice),
                     choice_unparsed=sum(r["choice"] is None for r in choice))
        if binary:
            m.update(binary_acc=_mean(r["correct"] for r in binary), n_binary=len(binary))
            if all(r["score"] is not None for r in binary):
                m["auc"] = roc_auc([r["label"] for r in binary], [r["score"] for r in binary])
        res[name] = m
    return res


def answer_token_ids(tokenizer, word: str) -> list[int]:
    """First token id of each casing/spacing variant of `word` ("yes", " yes", "Yes", " Yes"), deduplicated."""
    ids = []
    for v in (word, " " + word, word.capitalize(), " " + word.capitalize()):
        toks = tokenizer.encode(v, add_special_tokens=False)
        if toks and toks[0] not in ids:
            ids.append(toks[0])
    return ids


def positive_probability(bundle, samples, *, positive: str = "yes", negative: str = "no", batch_size: int = 8,
                         progress: bool = True) -> list[float]:
    """P(positive) / (P(positive) + P(negative)) for the model's first answer token, per sample.

    One forward per batch of left-padded prompts (collate_chat(for_generation=True)); the next-token distribution
    is read at the last prompt position. Token variants (case, leading space) of each word are summed.
    """
    model = bundle.model
    device = next(model.parameters()).device
    pos_ids = answer_token_ids(bundle.tokenizer, positive)
    neg_ids = [i for i in answer_token_ids(bundle.tokenizer, negative) if i not in pos_ids]
    if not pos_ids or not neg_ids:
        raise ValueError(f"tokenizer cannot tell {positive!r} from {negative!r} by their first token")
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(samples), batch_size), desc="score", unit="batch", disable=not progress):
                batch = collate_chat(bundle, for_collate(samples[start:start + batch_size]), for_generation=True)
                inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in model_inputs(batch).items()}
                logits = model(**inputs).logits[:, -1, :].float()  # left padding: last column = last prompt token
                probs = torch.softmax(logits, dim=-1)
                p = probs[:, pos_ids].sum(-1)
                n = probs[:, neg_ids].sum(-1)
                out.extend((p / (p + n).clamp(min=1e-30)).tolist())
    finally:
        model.train(was_training)
    return out


def evaluate_benchmark(bundle, samples, *, batch_size: int = 8, max_new_tokens: int = 32,
                       progress: bool = True) -> tuple[dict, list[dict]]:
    """Generate answers (greedy), score binary samples' positive probability, and compute `benchmark_metrics`.

    Returns (metrics, per-sample rows).
    """
    responses = generate_responses(bundle, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   progress=progress)
    scores = None
    if any(s.answer_type == "binary" for s in samples):
        idx = [i for i, s in enumerate(samples) if s.answer_type == "binary"]
        probs = positive_probability(bundle, [samples[i] for i in idx], batch_size=batch_size, progress=progress)
        scores = [0.0] * len(samples)
        for i, p in zip(idx, probs):
            scores[i] = p
    return benchmark_metrics(samples, responses, scores), score_benchmark_samples(samples, responses, scores)
