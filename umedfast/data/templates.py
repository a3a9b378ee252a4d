"""Template writer: deterministic queries and step-by-step answers ("detection -> localization -> recognition").

Every answer names each abnormal class with its exact ``label`` string and writes each box with
``umedfast.boxes.format_box(box, fmt)``; normal images get an answer that says so and writes no box. Phrasings
vary per record but are a pure function of the record id (hash), so datasets rebuild byte for byte.
Styles: "full" (paper-like, ~50-90 words) and "compact" (~25-45 words, for fast demos).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from umedfast.boxes import clip_box01, format_box, pixels_to_unit

FORMAT_HINT = {
    "norm1000": "[x1,y1,x2,y2] on a 0-1000 scale",
    "shikra": "[x1,y1,x2,y2] as fractions of the image size",
    "minigptv2": "{<x1><y1><x2><y2>} on a 0-100 scale",
    "qwen25_abs": "[x1,y1,x2,y2] in pixels",
}

QUERIES = {
    "full": [
        "This is a {modality} image. Is there any abnormality? If so, detect it, localize it with a bounding box "
        "{hint}, and recognize its category. Answer step by step.",
        "Please examine this {modality} image step by step: first detect whether an abnormality is present, then give "
        "its location as {hint}, then name the abnormal category.",
        "Analyze the {modality} image. Report any abnormal finding in three steps: detection, localization "
        "({hint}) and recognition.",
    ],
    "compact": [
        "Find any abnormality in this {modality} image: detect, localize {hint}, recognize.",
        "{modality} image: is anything abnormal? Give the box {hint} and the category.",
    ],
}

# Short appearance notes for classes we know (used by the full style only; unknown labels get none).
DESCRIPTIONS = {
    "liver lesion": "a round hypodense area within the liver",
    "lung lesion": "a dense focus inside the aerated lung",
    "kidney stone": "a very bright, sharply marginated focus in the kidney",
    "nodule": "a small, round, well-defined opacity",
    "mass": "a large, lobulated opacity",
    "effusion": "a homogeneous opacity at the lung base with a curved upper border",
    "active tuberculosis": "patchy, ill-defined cloudy opacities in the upper lung",
    "obsolete tuberculosis": "clustered dense calcified spots with fibrotic streaks",
    "polyp": "a raised, rounded mucosal lesion",
}

_FULL = {
    "det1": ["Detection: there is one abnormal region in this {modality} image.",
             "Detection: the {modality} image shows a focal abnormality.",
             "Detection: an abnormal area is present in this {modality} image."],
    "detN": ["Detection: there are {n} abnormal regions in this {modality} image.",
             "Detection: the {modality} image shows {n} separate abnormalities.",
             "Detection: {n} abnormal areas are present in this {modality} image."],
    "loc": ["Localization: {ord}it is located at {box}, in the {where} part of the image.",
            "Localization: {ord}the abnormal region lies within {box} ({where}).",
            "Localization: {ord}its bounding box is {box}, in the {where} region."],
    "rec": ["Recognition: {ord}the finding shows {desc}, consistent with {label}.",
            "Recognition: {ord}based on {desc}, this is recognized as {label}.",
            "Recognition: {ord}the abnormality is {label}, showing {desc}."],
    "rec_nodesc": ["Recognition: {ord}the finding is consistent with {label}.",
                   "Recognition: {ord}this abnormality is recognized as {label}.",
                   "Recognition: {ord}the abnormal category is {label}."],
    "normal": ["Detection: no abnormality is detected in this {modality} image. Localization: there is no abnormal "
               "region to localize. Recognition: the image appears normal.",
               "Detection: the {modality} image shows no abnormal finding. Localization: no lesion is present, so no "
               "box is given. Recognition: normal study.",
               "Detection: nothing abnormal is seen in this {modality} image. Localization: not applicable. "
               "Recognition: no abnormal category; the image is normal."],
}
_COMPACT = {
    "det1": ["Detection: one abnormal region.", "Detection: an abnormality is present."],
    "detN": ["Detection: {n} abnormal regions.", "Detection: {n} abnormalities are present."],
    "loc": ["Localization: {ord}{box}, {where}.", "Localization: {ord}at {box} in the {where} part."],
    "rec": ["Recognition: {ord}{label}.", "Recognition: {ord}it is {label}."],
    "normal": ["Detection: no abnormality. Localization: none. Recognition: normal.",
               "Detection: nothing abnormal is seen. Localization: no box. Recognition: normal image."],
}
_ORD = ["first, ", "second, ", "third, ", "fourth, ", "fifth, "]


def _pick(options: Sequence[str], key: str, salt: str) -> str:
    h = hashlib.sha256(f"{key}|{salt}".encode()).digest()
    return options[int.from_bytes(h[:4], "little") % len(options)]


def where_words(box01: Sequence[float]) -> str:
    """Coarse position of a unit box's center, e.g. "upper left", "central", "lower right"."""
    cx, cy = (box01[0] + box01[2]) / 2, (box01[1] + box01[3]) / 2
    v = "upper" if cy < 1 / 3 else ("lower" if cy > 2 / 3 else "middle")
    h = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "central")
    if v == "middle" and h == "central":
        return "central"
    return f"{v} {h}" if v != "middle" else f"middle {h}"


def write_query(modality: str, *, key: str, fmt: str = "norm1000", style: str = "full") -> str:
    """A question asking for detection, localization (in ``fmt``) and recognition."""
    if style not in QUERIES:
        raise ValueError(f"unknown template style {style!r}; choose one of {sorted(QUERIES)}")
    return _pick(QUERIES[style], key, "q").format(modality=modality, hint=FORMAT_HINT.get(fmt, "[x1,y1,x2,y2]"))


def write_response(findings: Sequence[dict], image_size: Sequence[int], modality: str, *, key: str,
                   fmt: str = "norm1000", style: str = "full") -> str:
    """Step-by-step answer for ``findings`` ([{"label", "box_xyxy" pixels}], [] = normal) of an image (W, H)."""
    if style not in QUERIES:
        raise ValueError(f"unknown template style {style!r}; choose one of {sorted(QUERIES)}")
    t = _FULL if style == "full" else _COMPACT
    if not findings:
        return _pick(t["normal"], key, "normal").format(modality=modality)
    n = len(findings)
    parts = [_pick(t["det1"] if n == 1 else t["detN"], key, "det").format(modality=modality, n=_num(n))]
    boxes01 = [clip_box01(pixels_to_unit(f["box_xyxy"], image_size)) for f in findings]
    for i, (f, b) in enumerate(zip(findings, boxes01)):
        ordw = _ORD[i] if n > 1 and i < len(_ORD) else ""
        box_txt = format_box(b, fmt, image_size=image_size)
        parts.append(_pick(t["loc"], key, f"loc{i}").format(ord=ordw, box=box_txt, where=where_words(b)))
    for i, f in enumerate(findings):
        ordw = _ORD[i] if n > 1 and i < len(_ORD) else ""
        desc = DESCRIPTIONS.get(f["label"])
        opts = t["rec"] if (style == "compact" or desc) else t["rec_nodesc"]
        parts.append(_pick(opts, key, f"rec{i}").format(ord=ordw, label=f["label"], desc=desc or ""))
    return " ".join(parts)


def _num(n: int) -> str:
    return {2: "two", 3: "three", 4: "four"}.get(n, str(n))


def apply_template(record, *, fmt: str = "norm1000", style: str = "full"):
    """Fill ``record.query`` and ``record.response`` in place (keyed by ``record.id``); returns the record."""
    record.query = write_query(record.modality, key=record.id, fmt=fmt, style=style)
    record.response = write_response(record.findings, record.image_size, record.modality, key=record.id, fmt=fmt,
                                     style=style)
    record.meta = {**record.meta, "writer": "template", "style": style, "box_format": fmt}
    return record
