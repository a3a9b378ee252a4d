"""Map abnormal regions and class names onto token positions (what VRR reads).

- :func:`image_region_mask`: Bool[B,T], True at the image tokens whose patch overlaps any box of the sample.
  LLaVA: one token per ViT patch on a fixed (H/p)x(W/p) grid, row-major (plus a leading CLS token under the
  ``"full"`` feature strategy, never in a region). Qwen2-VL / Qwen2.5-VL: ``image_grid_thw`` (t, h, w) in patches,
  one token per ``merge x merge`` block (2x2), row-major within each temporal slice.
- :func:`phrase_token_positions`: indices of the tokens that spell a phrase, found on decoded text, so it works on
  generated ids (no offsets mapping from a fresh tokenization needed).
- :func:`box_token_spans`: which response tokens write a box ``[...]`` and which come after the first box.
- :func:`coordinate_token_slots`: which response tokens spell which coordinate of which box.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from umedfast.boxes import parse_boxes_with_spans

Box = Sequence[float]
_EPS = 1e-6  # a patch that only touches the box edge does not overlap it


def _cells_overlapping(boxes: Sequence[Box], gh: int, gw: int) -> torch.Tensor:
    """Bool[gh*gw] (row-major): cell (i, j) covers [j/gw, (j+1)/gw) x [i/gh, (i+1)/gh) of the image."""
    ys = torch.arange(gh, dtype=torch.float64)
    xs = torch.arange(gw, dtype=torch.float64)
    hit = torch.zeros(gh, gw, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes:
        if not (x2 > x1 and y2 > y1):
            continue  # empty or inverted box: no region
        row = (ys / gh < y2 - _EPS) & ((ys + 1) / gh > y1 + _EPS)
        col = (xs / gw < x2 - _EPS) & ((xs + 1) / gw > x1 + _EPS)
        hit |= row[:, None] & col[None, :]
    return hit.flatten()


def _llava_box_to_processed(box: Box, orig_wh, image_processor) -> tuple[float, float, float, float]:
    """Original-image box (xyxy in [0,1]) -> box in [0,1] of the processed (resized, maybe center-cropped) image."""
    w, h = (float(v) for v in orig_wh)
    size = getattr(image_processor, "size", None) or {}
    size = dict(size) if not isinstance(size, dict) else size
    if size.get("shortest_edge"):
        scale = size["shortest_edge"] / min(w, h)
        rw, rh = w * scale, h * scale
    else:
        rw, rh = float(size.get("width") or w), float(size.get("height") or h)
    cw, ch, ox, oy = rw, rh, 0.0, 0.0
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop:
        crop = dict(crop) if not isinstance(crop, dict) else crop
        cw, ch = float(crop["width"]), float(crop["height"])
        ox, oy = (rw - cw) / 2, (rh - ch) / 2
    x1, y1, x2, y2 = box
    c = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return (c((x1 * rw - ox) / cw), c((y1 * rh - oy) / ch), c((x2 * rw - ox) / cw), c((y2 * rh - oy) / ch))


def image_region_mask(bundle, batch: dict, boxes01: Sequence[Sequence[Box]]) -> torch.Tensor:
    """Bool[B,T]: image-token positions of sample b whose patch overlaps any box in ``boxes01[b]``.

    ``boxes01[b]``: boxes xyxy normalized to the ORIGINAL image (``batch["orig_image_sizes"]`` maps them through
    a center crop when the LLaVA processor does one). One image per sample. An empty list gives an all-False row.
    """
    ids = batch["input_ids"]
    B, T = ids.shape
    if len(boxes01) != B:
        raise ValueError(f"{len(boxes01)} box lists for a batch of {B}")
    mask = torch.zeros(B, T, dtype=torch.bool, device=ids.device)
    is_img = ids == bundle.image_token_id
    cfg = bundle.base_model.config
    for b in range(B):
        pos = torch.nonzero(is_img[b]).flatten()
        if bundle.arch == "llava":
            patch = cfg.vision_config.patch_size
            gh, gw = batch["pixel_values"].shape[-2] // patch, batch["pixel_values"].shape[-1] // patch
            extra = 1 if getattr(cfg, "vision_feature_select_strategy", "default") == "full" else 0  # CLS first
            n = gh * gw + extra
            boxes = boxes01[b]
            if "orig_image_sizes" in batch:
                ip = bundle.processor.image_processor
                boxes = [_llava_box_to_processed(bx, batch["orig_image_sizes"][b].tolist(), ip) for bx in boxes]
            cells = _cells_overlapping(boxes, gh, gw)
            if extra:
                cells = torch.cat([torch.zeros(1, dtype=torch.bool), cells])
        else:
            t, h, w = (int(v) for v in batch["image_grid_thw"][b])
            m = cfg.vision_config.spatial_merge_size
            n = t * (h // m) * (w // m)
            cells = _cells_overlapping(boxes01[b], h // m, w // m).repeat(t)
        # The image's tokens are the first n; an image-token id sampled inside a response is not an image patch.
        if len(pos) < n:
            raise ValueError(f"sample {b}: {len(pos)} image tokens, the image needs {n}")
        pos = pos[:n]
        mask[b, pos] = cells.to(ids.device)
    return mask


def _id_list(token_ids) -> list[int]:
    return [int(t) for t in (token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids)]


def decoded_char_ends(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """(decoded text, ``ends``): ``ends[i]`` is the length of the text decoded from ``ids[:i+1]``, i.e. token ``i``
    covers characters ``ends[i-1] .. ends[i]``. Decoding growing prefixes handles byte-level / sentencepiece pieces
    and leading spaces alike."""
    ends, prev = [], 0
    for i in range(len(ids)):
        n = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        prev = max(prev, n)  # decoding a partial multi-byte char can shrink later; keep spans monotone
        ends.append(prev)
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), ends


_BRACKET = re.compile(r"\[[^\[\]]*\]")


def box_token_spans(tokenizer, token_ids: Sequence[int]) -> tuple[list[bool], list[bool]]:
    """Two flags per token of one response: ``in_box`` (the token overlaps a written box ``[...]``) and
    ``after_box`` (not in a box, and after the first box opens). Tokens before the first ``[`` are neither.

    Used by span advantages: box tokens are credited with the localization reward, the tokens after the first box
    (position words, the class) with the rest; a response without a box has no flagged token."""
    ids = _id_list(token_ids)
    if not ids:
        return [], []
    text, ends = decoded_char_ends(tokenizer, ids)
    spans = [(m.start(), m.end()) for m in _BRACKET.finditer(text)]
    if not spans:
        return [False] * len(ids), [False] * len(ids)
    first = spans[0][0]
    in_box, after = [], []
    lo = 0
    for hi in ends:
        box = hi > lo and any(lo < e and hi > s for s, e in spans)
        in_box.append(box)
        after.append(not box and hi > lo and lo >= first)
        lo = hi
    return in_box, after


def coordinate_token_slots(tokenizer, token_ids: Sequence[int], box_format: str, image_size=None
                           ) -> tuple[list, list[int]]:
    """(boxes, slots) of one response: the boxes it writes (``umedfast.boxes.parse_boxes``, unit xyxy, in order) and
    for each token ``4 * j + c`` when it spells coordinate ``c`` (x1, y1, x2, y2) of box ``j``, else -1.

    Used by coordinate advantages (``ppo.coord_advantages``): each coordinate's tokens are credited with that
    coordinate's own error. A token overlapping two numbers (a merged ",4") takes the first."""
    ids = _id_list(token_ids)
    if not ids:
        return [], []
    text, ends = decoded_char_ends(tokenizer, ids)
    parsed = parse_boxes_with_spans(text, box_format, image_size=image_size)
    spans = [(s, e, 4 * j + c) for j, (_, sp) in enumerate(parsed) for c, (s, e) in enumerate(sp)]
    slots, lo = [], 0
    for hi in ends:
        slots.append(next((slot for s, e, slot in spans if hi > lo and lo < e and hi > s), -1))
        lo = hi
    return [box for box, _ in parsed], slots


def phrase_token_positions(tokenizer, token_ids: Sequence[int], phrase: str, first_only: bool = False) -> list[int]:
    """Sorted indices into ``token_ids`` of every token overlapping an occurrence of ``phrase`` (case-insensitive;
    ``first_only``: of its first occurrence only).

    Character spans come from decoding growing prefixes, so byte-level/sentencepiece pieces, leading spaces and
    generated ids all work. A token that only carries the space before the phrase is not counted.
    """
    ids = _id_list(token_ids)
    needle = phrase.strip().lower()
    if not needle or not ids:
        return []
    text, ends = decoded_char_ends(tokenizer, ids)
    text = text.lower()
    out: set[int] = set()
    start = text.find(needle)
    while start >= 0:
        stop = start + len(needle)
        lo = 0
        for i, hi in enumerate(ends):
            if lo < stop and hi > start and hi > lo:
                out.add(i)
            lo = hi
        start = -1 if first_only else text.find(needle, start + 1)
    return sorted(out)
