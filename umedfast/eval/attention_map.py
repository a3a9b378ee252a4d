"""Per-patch attention of the abnormal-class tokens: the VRR heatmap drawn in reports.

For one (image, query, response) the model runs once with eager attention in its language model. The map is

    heat[p] = mean_{layer} mean_{head} sum_{i in class positions} p[layer, head, i, image_token(p)]

(the same averaging as umedfast.rewards.vrr.vrr_forward, so summing heat over the patches of the abnormal region
gives that sample's VRR). Class positions are the response tokens spelling a class name the response uses; when the
response names none, every response token is used instead (reported as `class_tokens=False`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from umedfast.model import collate_chat, phrase_token_positions
from umedfast.model.collate import model_inputs


@dataclass
class PatchAttention:
    """heat: float [gh, gw] over the image-token grid (row-major patches); extent01: (x0, y0, x1, y1) of the grid in
    unit coordinates of the ORIGINAL image (a center crop makes it larger than [0, 1]); class_tokens: True when the
    queries were class-name tokens; positions: their indices in input_ids."""

    heat: np.ndarray
    extent01: tuple[float, float, float, float]
    class_tokens: bool
    positions: list[int]


@contextlib.contextmanager
def eager_attention(model):
    """Temporarily run the whole model with eager attention (the only implementation that returns attention
    weights); every sub-model's previous implementation is restored afterwards, even on error."""
    cfg = model.config
    subs = list(getattr(cfg, "sub_configs", {}) or {})
    previous = {"": cfg._attn_implementation}
    previous.update({k: getattr(cfg, k)._attn_implementation for k in subs if getattr(cfg, k, None) is not None})
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous if subs else previous[""])


def _grid_and_extent(bundle, batch, n_img: int, orig_wh) -> tuple[int, int, int, tuple]:
    """(gh, gw, leading extra tokens, extent01) of sample 0's image-token grid."""
    cfg = bundle.base_model.config
    if bundle.arch == "llava":
        patch = cfg.vision_config.patch_size
        ph, pw = batch["pixel_values"].shape[-2:]
        gh, gw = ph // patch, pw // patch
        extra = n_img - gh * gw  # 1 = CLS token first ("full" feature strategy)
        if extra not in (0, 1):
            raise ValueError(f"{n_img} image tokens for a {gh}x{gw} patch grid")
        return gh, gw, extra, _llava_extent(bundle.processor.image_processor, orig_wh)
    t, h, w = (int(v) for v in batch["image_grid_thw"][0])
    m = cfg.vision_config.spatial_merge_size
    gh, gw = h // m, w // m
    if n_img != t * gh * gw:
        raise ValueError(f"{n_img} image tokens for grid thw=({t},{h},{w}) merge {m}")
    return gh, gw, 0, (0.0, 0.0, 1.0, 1.0)


def _llava_extent(ip, orig_wh) -> tuple[float, float, float, float]:
    """Where the processed (resized, maybe center-cropped) image lies in unit coordinates of the original image."""
    w, h = (float(v) for v in orig_wh)
    size = getattr(ip, "size", None) or {}
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    if get("shortest_edge"):
        s = get("shortest_edge") / min(w, h)
        rw, rh = w * s, h * s
    else:
        rw, rh = float(get("width") or w), float(get("height") or h)
    crop = getattr(ip, "crop_size", None)
    if getattr(ip, "do_center_crop", False) and crop:
        cget = (lambda k: crop.get(k)) if isinstance(crop, dict) else (lambda k: getattr(crop, k))
        cw, ch = float(cget("width")), float(cget("height"))
        ox, oy = (rw - cw) / 2, (rh - ch) / 2
        return (ox / rw, oy / rh, (ox + cw) / rw, (oy + ch) / rh)
    return (0.0, 0.0, 1.0, 1.0)


def class_positions(tokenizer, input_ids: Sequence[int], start: int, phrases: Sequence[str]) -> list[int]:
    """Indices (into input_ids) of the response tokens (from `start`) that spell any of `phrases`."""
    resp = list(input_ids[start:])
    pos = set()
    for ph in phrases:
        pos.update(start + i for i in phrase_token_positions(tokenizer, resp, ph))
    return sorted(pos)


def patch_attention(bundle, image, query: str, response: str, phrases: Sequence[str], *,
                    layers: Sequence[int] | None = None) -> PatchAttention:
    """Attention heatmap of the class tokens of `response` over the image patches (module docstring).

    image: PIL image; phrases: class names / synonyms to look for in the response (all response tokens when none
    occurs). layers: language-model layer indices to average (default all).
    """
    batch = collate_chat(bundle, [{"image": image, "query": query, "response": response}])
    ids = batch["input_ids"][0]
    real = int(batch["attention_mask"][0].sum())
    start = int(batch["prompt_lengths"][0])
    pos = class_positions(bundle.tokenizer, ids[:real].tolist(), start, phrases)
    used_class = bool(pos)
    if not pos:
        pos = list(range(start, real))
    img_pos = torch.nonzero(ids == bundle.image_token_id).flatten()
    gh, gw, extra, extent = _grid_and_extent(bundle, batch, len(img_pos), image.size)
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model), torch.no_grad():
            out = model(**model_inputs(batch), output_attentions=True, use_cache=False)
    finally:
        model.train(was_training)
    atts = out.attentions
    if not atts:
        raise RuntimeError("the model returned no attention weights")
    chosen = range(len(atts)) if layers is None else [int(i) % len(atts) for i in layers]
    q = torch.tensor(pos, device=ids.device)
    acc = torch.zeros(len(img_pos), dtype=torch.float64, device=ids.device)
    for li in chosen:
        a = atts[li][0].double()  # [H, T, T]
        acc += a[:, q][:, :, img_pos].sum(1).mean(0)  # sum over class queries, mean over heads
    acc /= len(chosen)
    heat = acc[extra:].reshape(-1, gh, gw).sum(0).cpu().numpy()  # Qwen: temporal slices of one image add up
    return PatchAttention(heat=heat, extent01=extent, class_tokens=used_class, positions=pos)
