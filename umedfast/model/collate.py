"""Batch MAU records for the model: chat-formatted prompt (+ response), labels on the response only.

Output of :func:`collate_chat` (B samples, T tokens after padding):
``input_ids`` Long[B,T], ``attention_mask`` Long[B,T], ``labels`` Long[B,T] (-100 outside the response; training
only), ``pixel_values`` (LLaVA Float[B,3,H,W]; Qwen2-VL Float[sum of patches, C*t*p*p] with ``image_grid_thw``
Long[B,3]), ``prompt_lengths`` Long[B] (real prompt tokens, image tokens included), ``orig_image_sizes`` Long[B,2]
((W, H) before the processor, for region mapping). Training pads right (response starts at ``prompt_lengths[b]``);
generation pads left (prompt ends at T). Use :func:`model_inputs` to keep only what the model's forward takes.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from umedfast.data import load_image

# Keys of a collated batch that the HF forward accepts; the rest is bookkeeping for losses and rewards.
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``batch`` that ``model(**...)`` / ``model.generate(**...)`` accept."""
    return {k: v for k, v in batch.items() if k in MODEL_KEYS}


def _field(rec, name: str):
    return rec[name] if isinstance(rec, dict) else getattr(rec, name)


def record_image(rec):
    """PIL RGB image of a record. ``rec.image`` may be a PIL image or a path; paths open through
    ``umedfast.data.load_image`` (which windows 16-bit CT with ``rec.meta``)."""
    img = _field(rec, "image")
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    meta = (rec.get("meta") if isinstance(rec, dict) else getattr(rec, "meta", None)) or {}
    return load_image(img, meta=meta)


def user_messages(query: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}]


def prompt_and_suffix(processor, query: str, response: str | None) -> tuple[str, str | None]:
    """Chat-template text of the prompt (ending with the assistant header) and of the response turn after it.

    The suffix is what the model must produce: the response and the template's end-of-turn marker (trailing
    newlines after the marker are dropped so generation can stop on it).
    """
    msgs = user_messages(query)
    prompt = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if response is None:
        return prompt, None
    full = processor.apply_chat_template(
        msgs + [{"role": "assistant", "content": [{"type": "text", "text": response}]}], tokenize=False)
    eos = processor.tokenizer.eos_token or ""
    if full.startswith(prompt):
        suffix = full[len(prompt):]
        if eos and suffix.rstrip().endswith(eos):
            suffix = suffix.rstrip()
        elif eos and eos not in suffix:
            suffix = suffix + eos
    else:  # template re-renders earlier turns differently: fall back to response + eos
        suffix = response + eos
    return prompt, suffix


def collate_chat(bundle, records: Sequence[Any], *, responses: Sequence[str] | None = None,
                 for_generation: bool = False, move: bool = True) -> dict[str, torch.Tensor]:
    """Collate ``records`` (objects or dicts with ``image``, ``query``, ``response``) into model inputs.

    ``responses`` overrides the records' responses (PPO scores sampled candidates). ``for_generation`` drops the
    response, pads left and returns no ``labels``. ``move=False`` returns CPU tensors and never reads
    ``bundle.model`` (input-pipeline workers, ``umedfast.data.loader``); :func:`to_model` moves them later.
    """
    if not records:
        raise ValueError("collate_chat needs at least one record")
    if responses is not None and len(responses) != len(records):
        raise ValueError(f"{len(responses)} responses for {len(records)} records")
    proc, tok = bundle.processor, bundle.tokenizer
    images = [record_image(r) for r in records]
    prompts, suffixes = [], []
    for i, r in enumerate(records):
        resp = None if for_generation else (responses[i] if responses is not None else _field(r, "response"))
        p, s = prompt_and_suffix(proc, _field(r, "query"), resp)
        prompts.append(p)
        suffixes.append(s)
    # The template already wrote BOS if the model uses one; do not let the tokenizer add a second.
    add_special = not (tok.bos_token and prompts[0].startswith(tok.bos_token))
    enc = proc(text=prompts, images=images, return_tensors="pt", padding=True, add_special_tokens=add_special)
    rows = []
    for b in range(len(records)):
        ids = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
        resp_ids = [] if suffixes[b] is None else tok(suffixes[b], add_special_tokens=False)["input_ids"]
        rows.append((ids, resp_ids))
    T = max(len(p) + len(r) for p, r in rows)
    B = len(rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for b, (p, r) in enumerate(rows):
        seq = torch.tensor(p + r, dtype=torch.long)
        start = T - len(seq) if for_generation else 0
        input_ids[b, start:start + len(seq)] = seq
        attention[b, start:start + len(seq)] = 1
        if r:
            labels[b, start + len(p):start + len(seq)] = seq[len(p):]
    out = {"input_ids": input_ids, "attention_mask": attention, "pixel_values": enc["pixel_values"],
           "prompt_lengths": torch.tensor([len(p) for p, _ in rows], dtype=torch.long),
           "orig_image_sizes": torch.tensor([im.size for im in images], dtype=torch.long)}
    if "image_grid_thw" in enc:
        out["image_grid_thw"] = enc["image_grid_thw"]
    if "mm_token_type_ids" in enc:  # Qwen2-VL's M-RoPE reads it: 1 = image token
        out["mm_token_type_ids"] = (input_ids == bundle.image_token_id).long()
    if not for_generation:
        out["labels"] = labels
    return to_model(out, bundle.model) if move else out


def to_model(batch: dict[str, torch.Tensor], model, non_blocking: bool = False) -> dict[str, torch.Tensor]:
    """``batch`` on ``model``'s device, ``pixel_values`` in its dtype (a CPU batch from :func:`collate_chat`)."""
    param = next(model.parameters())
    out = {k: v.to(param.device, non_blocking=non_blocking) for k, v in batch.items()}
    out["pixel_values"] = out["pixel_values"].to(param.dtype)
    return out


def select_rows(batch: dict, idx: torch.Tensor, bundle) -> dict:
    """Rows ``idx`` of a scoring batch (handles Qwen2-VL's flattened ``pixel_values``)."""
    out = {}
    for key, v in batch.items():
        if key == "pixel_values" and bundle.arch != "llava":
            thw = batch["image_grid_thw"]
            counts = (thw[:, 0] * thw[:, 1] * thw[:, 2]).tolist()
            starts = [0]
            for c in counts:
                starts.append(starts[-1] + c)
            out[key] = torch.cat([v[starts[i]:starts[i + 1]] for i in idx.tolist()])
        elif torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch["input_ids"].shape[0]:
            out[key] = v[idx]
        else:
            out[key] = v
    return out
