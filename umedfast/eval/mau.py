"""MAU evaluation: diagnosis accuracy, box IoU and format validity of generated responses, per source and overall.

Metric definitions (also in docs/evaluation.md):
- accuracy: abnormal image -> the set of classes the response names equals the set of ground-truth classes (every
  class named, via the per-source synonym table, and no other class of that source named, so listing every class
  cannot score). Normal image -> the response states there is no abnormality, names no class and writes no box.
  Negated mentions ("no effusion") name nothing; generic words (lesion, abnormality) never name a wrong class
  (see umedfast/answers.py).
- mean_iou: over abnormal images, sum of IoUs of the best one-to-one matching between parsed boxes and ground-truth
  boxes, divided by max(#predicted, #ground truth) (extra or missing boxes count as IoU 0). No box -> 0.
- acc_iou50: fraction of abnormal images whose image IoU (as above) is >= 0.5.
- format_ok: the three steps (detection, localization, recognition) are present and, when the image is abnormal,
  at least one box with positive area parses in the configured box format.
Top-level numbers are averaged over images (micro); "macro_accuracy" etc. average the per-source values like the
paper's "Avg" column.
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from umedfast.answers import ClassNamer, build_vocab, says_normal
from umedfast.box_matching import best_matching, iou_matrix
from umedfast.boxes import parse_boxes
from umedfast.data import CLASS_SYNONYMS, MAURecord, record_targets
from umedfast.data.loader import eval_batches
from umedfast.model.collate import model_inputs

METRIC_KEYS = ("accuracy", "mean_iou", "acc_iou50", "format_ok")

# The step-by-step answer: detection -> localization -> recognition (several spellings accepted).
STEP_PATTERNS = {
    "detection": re.compile(r"\bdetect", re.IGNORECASE),
    "localization": re.compile(r"\b(?:locali[sz]|locat)", re.IGNORECASE),
    "recognition": re.compile(r"\b(?:recogni|diagnos|identif)", re.IGNORECASE),
}


def _get(rec: Any, name: str, default=None):
    return rec.get(name, default) if isinstance(rec, dict) else getattr(rec, name, default)


def _targets(rec: Any) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(label, box xyxy in [0,1]) per finding: ``umedfast.data.record_targets`` for a record, the same formula for a
    plain dict (predictions read back from JSONL)."""
    if not isinstance(rec, dict):
        return [(str(lab), tuple(map(float, box))) for lab, box in record_targets(rec)]
    w, h = _get(rec, "image_size")
    out = []
    for f in _get(rec, "findings") or []:
        x1, y1, x2, y2 = map(float, f["box_xyxy"])
        out.append((str(f["label"]), (x1 / w, y1 / h, x2 / w, y2 / h)))
    return out


def _synonym_table() -> dict:
    return CLASS_SYNONYMS


def _parse(text: str, fmt: str, image_size):
    return parse_boxes(text or "", fmt, image_size=tuple(image_size) if image_size is not None else None)


def score_samples(records: Sequence[Any], responses: Sequence[str], *, box_format: str = "norm1000",
                  synonyms: dict | None = None) -> list[dict]:
    """Score each (record, response) pair. Returns one dict per sample:
    {id, source, split, normal, gt_labels, named, correct, pred_boxes, gt_boxes, iou, iou50, format_ok, steps, response}
    (iou / iou50 are None for normal images, which have nothing to localize).
    """
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    synonyms = _synonym_table() if synonyms is None else synonyms
    targets = [_targets(r) for r in records]
    labels_by_source: dict[str, set[str]] = defaultdict(set)
    for r, t in zip(records, targets):
        labels_by_source[str(_get(r, "source"))].update(lab for lab, _ in t)
    vocab = build_vocab(labels_by_source, synonyms)
    namers = {src: ClassNamer(v) for src, v in vocab.items()}
    canon = {src: {lab.lower(): lab for lab in v} for src, v in vocab.items()}

    out = []
    for rec, resp, tgt in zip(records, responses, targets):
        src = str(_get(rec, "source"))
        resp = resp or ""
        gt_labels = {canon[src].get(lab.lower(), lab) for lab, _ in tgt}
        named = namers[src].named(resp, gt_labels)
        normal = not tgt
        boxes = [tuple(b) for b in _parse(resp, box_format, _get(rec, "image_size"))]
        # a box on a normal image localizes a finding that is not there
        correct = (not named and not boxes and says_normal(resp)) if normal else (named == gt_labels)
        steps = {k: bool(p.search(resp)) for k, p in STEP_PATTERNS.items()}
        has_box = any(b[2] > b[0] and b[3] > b[1] for b in boxes)  # a zero-area box is not a box
        fmt_ok = all(steps.values()) and (normal or has_box)
        iou = iou50 = None
        if not normal:
            gt_boxes = [b for _, b in tgt]
            total, _pairs = best_matching(iou_matrix(boxes, gt_boxes))
            iou = total / max(len(boxes), len(gt_boxes))
            iou50 = iou >= 0.5
        out.append({
            "id": _get(rec, "id"), "source": src, "modality": _get(rec, "modality"), "split": _get(rec, "split"),
            "image": str(_get(rec, "image")), "image_size": list(_get(rec, "image_size") or []), "normal": normal,
            "query": _get(rec, "query"),
            "gt_labels": sorted(gt_labels), "named": sorted(named), "correct": bool(correct),
            "pred_boxes": [list(b) for b in boxes], "gt_boxes": [list(b) for _, b in tgt],
            "iou": iou, "iou50": iou50, "format_ok": bool(fmt_ok), "steps": steps, "response": resp,
        })
    return out


def _mean(xs: Iterable) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _summary(samples: list[dict]) -> dict:
    abn = [s for s in samples if not s["normal"]]
    return {
        "accuracy": _mean(s["correct"] for s in samples),
        "mean_iou": _mean(s["iou"] for s in abn),
        "acc_iou50": _mean(s["iou50"] for s in abn),
        "format_ok": _mean(s["format_ok"] for s in samples),
        "n": len(samples),
        "n_abnormal": len(abn),
    }


def _group(samples: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        for k in key(s):
            groups[str(k)].append(s)
    return {k: _summary(v) for k, v in sorted(groups.items())}


def aggregate(samples: list[dict]) -> dict:
    """Overall (micro over images), per source / modality / label, and macro (mean over sources) metrics.

    per_label[label] covers the abnormal images that carry that label (Table 7, unseen categories);
    per_modality groups by the record's modality (Table 9).
    """
    per_source = _group(samples, lambda s: [s["source"]])
    res = _summary(samples)
    res["per_source"] = per_source
    res["per_modality"] = _group(samples, lambda s: [s["modality"]] if s.get("modality") else [])
    res["per_label"] = _group(samples, lambda s: s["gt_labels"])
    for k in METRIC_KEYS:
        res[f"macro_{k}"] = _mean(v[k] for v in per_source.values())
    return res


def mau_metrics(records: Sequence[Any], responses: Sequence[str], *, box_format: str = "norm1000",
                synonyms: dict | None = None) -> dict:
    """{"accuracy", "mean_iou", "acc_iou50", "format_ok", "n", "per_source": {src: {...}}, "macro_*"}.

    Values are fractions in [0, 1], or None where undefined (e.g. mean_iou on a set without abnormal images).
    synonyms: {source: {label: [synonym, ...]}}; default umedfast.data.CLASS_SYNONYMS.
    """
    return aggregate(score_samples(records, responses, box_format=box_format, synonyms=synonyms))


def for_collate(records: Sequence[Any]) -> list:
    """Records as collate_chat takes them. MAURecords pass through; any other record whose `image` is a path
    (benchmark samples) becomes {"image": PIL RGB image, "query": ...}, loaded here, one batch at a time."""
    from PIL import Image  # here: scoring saved predictions (umedfast-eval table/compare) needs no image library

    out = []
    for r in records:
        img = _get(r, "image")
        pixels = _get(r, "pixels")
        if isinstance(r, MAURecord) or isinstance(img, Image.Image):
            out.append(r)
            continue
        if img is None and pixels is not None:  # in-memory benchmark images (PneumoniaMNIST)
            pil = Image.fromarray(pixels).convert("RGB")
        elif isinstance(img, (str, os.PathLike)):
            with Image.open(img) as im:
                pil = im.convert("RGB")
        else:
            raise ValueError(f"record {_get(r, 'id')!r} has no image")
        out.append({"image": pil, "query": _get(r, "query"), "response": _get(r, "response")})
    return out


def _prepare_one(rec):
    """A benchmark sample (image path or pixels) as ``collate_chat`` reads it (runs in the loader's workers)."""
    return for_collate([rec])[0]


def generate_responses(bundle, records: Sequence[Any], *, batch_size: int = 8, max_new_tokens: int = 64,
                       greedy: bool = True, progress: bool = True, workers: int = 0, bad: list | None = None,
                       **generate_kwargs) -> list[str]:
    """Batched generation for MAU records. Returns one decoded response (prompt excluded) per record, in order.

    Uses umedfast.model.collate_chat(for_generation=True) (left-padded prompts), so the new tokens of every row
    start at column input_ids.shape[1]. Greedy by default (deterministic). Images are decoded and preprocessed by
    ``workers`` processes (``umedfast.data.loader.eval_batches``; 0 = in this process), batches seen before in
    this process come from its cache. A record whose image cannot be read gets the response "" (scored wrong) and
    is appended to ``bad`` (``BadImage``) when given.
    """
    model = bundle.model
    tok = bundle.tokenizer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = [""] * len(records)
    try:
        with torch.no_grad():
            for _start, fed in tqdm(eval_batches(bundle, records, batch_size, workers=workers, prepare=_prepare_one),
                                    total=-(-len(records) // batch_size), desc="generate", unit="batch",
                                    disable=not progress):
                if bad is not None:
                    bad.extend(fed.bad)
                if fed.batch is None:  # every image of the chunk unreadable: their responses stay ""
                    continue
                inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in model_inputs(fed.batch).items()}
                kw = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=pad_id)
                if greedy:
                    kw.update(temperature=None, top_p=None, top_k=None)
                kw.update(generate_kwargs)
                seq = model.generate(**inputs, **kw)
                new = seq[:, inputs["input_ids"].shape[1]:]
                for i, t in zip(fed.indices, tok.batch_decode(new, skip_special_tokens=True)):
                    out[i] = t.strip()
    finally:
        model.train(was_training)
    return out


def write_predictions(samples: list[dict], path: str | os.PathLike) -> None:
    """One JSON object per line: the per-sample scores from `score_samples` (response included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")


def evaluate_and_write(bundle, records: Sequence[Any], out_path: str | os.PathLike, *, batch_size: int = 8,
                       max_new_tokens: int = 64, greedy: bool = True, box_format: str = "norm1000",
                       progress: bool = True, responses: Sequence[str] | None = None, judge=None,
                       workers: int = 0) -> dict:
    """Generate (unless `responses` is given), score, and write `out_path` (eval.json) plus
    `<stem>.predictions.jsonl` beside it. Returns the metrics dict (with "predictions" = that file's name).

    judge: optional relevance judge (umedfast.eval.judged.make_eval_judge) -> adds "judged_accuracy" etc.
    workers: image decode processes (``generate_responses``); with generation, "bad_images" counts the records
    whose image could not be read (their response is "", scored wrong, still in ``n``).
    """
    bad: list = []
    generated = responses is None
    if generated:
        responses = generate_responses(bundle, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       greedy=greedy, progress=progress, workers=workers, bad=bad)
    samples = score_samples(records, responses, box_format=box_format)
    metrics = aggregate(samples)
    if generated:
        metrics["bad_images"] = len(bad)
    if judge is not None:
        from umedfast.eval.judged import judged_accuracy
        jm, scores = judged_accuracy(records, responses, judge, box_format=box_format)
        metrics.update(jm)
        for s, sc in zip(samples, scores):
            s["judge_score"] = sc
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pred_path = out_path.with_name(out_path.stem + ".predictions.jsonl")
    write_predictions(samples, pred_path)
    metrics["predictions"] = pred_path.name
    metrics["box_format"] = box_format
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    os.replace(tmp, out_path)  # atomic: a reader never sees half a file
    return metrics
