"""Boxes as models write them in text, and conversions from dataset conventions.

Inside umedfast a box is a tuple ``(x1, y1, x2, y2)`` of floats normalized to ``[0, 1]`` by the image width and
height (xyxy, origin top-left). Text formats (``FORMATS``):

- ``norm1000``  (default, Qwen2-VL style): ``[x1,y1,x2,y2]`` with integers 0..1000.
- ``shikra``    : ``[0.123,0.456,0.789,0.900]``, floats in 0..1 with 3 decimals.
- ``minigptv2`` : ``{<x1><y1><x2><y2>}`` with integers 0..100.
- ``qwen25_abs``: ``[x1,y1,x2,y2]`` with integer pixels of the processed image (needs ``image_size``).

``parse_boxes`` is written for untrusted model output: it never raises, accepts the bracket styles of all formats
(``[..]``, ``(..)``, ``{<..>..}``, Qwen2-VL ``(x1,y1),(x2,y2)``, and four bare numbers), swaps inverted corners,
clamps to ``[0, 1]``, drops boxes with NaN/inf, and returns boxes in the order they appear.

``image_size`` is always ``(width, height)``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class BoxFormat:
    """One text convention: ``scale`` maps a unit coordinate to the written number (None = image pixels)."""

    name: str
    description: str
    scale: float | None
    needs_image_size: bool = False


FORMATS: dict[str, BoxFormat] = {
    "norm1000": BoxFormat("norm1000", "[x1,y1,x2,y2] integers 0..1000 (Qwen2-VL)", 1000.0),
    "shikra": BoxFormat("shikra", "[x1,y1,x2,y2] floats 0..1, 3 decimals (Shikra)", 1.0),
    "minigptv2": BoxFormat("minigptv2", "{<x1><y1><x2><y2>} integers 0..100 (MiniGPT-v2)", 100.0),
    "qwen25_abs": BoxFormat("qwen25_abs", "[x1,y1,x2,y2] integer pixels of the processed image (Qwen2.5-VL)", None,
                            needs_image_size=True),
}
DEFAULT_FORMAT = "norm1000"


def _get_format(fmt: str) -> BoxFormat:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown box format {fmt!r}; choose one of {sorted(FORMATS)}") from None


def _check_size(image_size) -> tuple[float, float]:
    if image_size is None:
        raise ValueError("this box format needs image_size=(width, height)")
    w, h = float(image_size[0]), float(image_size[1])
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise ValueError(f"image_size must be two positive finite numbers (width, height), got {image_size!r}")
    return w, h


def clip_box01(box: Sequence[float]) -> Box:
    """Order the corners (x1<=x2, y1<=y2) and clamp to [0, 1]. Box[4] -> Box[4]; NaN/inf raise ValueError."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"box has non-finite coordinates: {box!r}")
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    c = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    return (c(x1), c(y1), c(x2), c(y2))


# ----------------------------------------------------------------------------------------------- format
def format_box(box_xyxy01: Sequence[float], fmt: str = DEFAULT_FORMAT, *, image_size=None) -> str:
    """Write one unit xyxy box in format ``fmt``.

    The box is ordered and clamped to [0, 1] first; a non-finite coordinate or an unknown format raises ValueError
    (writing is on our side, so errors are loud; parsing model text never raises).
    """
    f = _get_format(fmt)
    x1, y1, x2, y2 = clip_box01(box_xyxy01)
    if f.name == "qwen25_abs":
        w, h = _check_size(image_size)
        v = [round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h)]
        return "[" + ",".join(str(int(t)) for t in v) + "]"
    if f.name == "shikra":
        return "[" + ",".join(f"{t:.3f}" for t in (x1, y1, x2, y2)) + "]"
    ints = [int(round(t * f.scale)) for t in (x1, y1, x2, y2)]
    if f.name == "minigptv2":
        return "{" + "".join(f"<{t}>" for t in ints) + "}"
    return "[" + ",".join(str(t) for t in ints) + "]"


def format_boxes(boxes: Sequence[Sequence[float]], fmt: str = DEFAULT_FORMAT, *, image_size=None) -> str:
    """Several boxes, comma separated, in order."""
    return ", ".join(format_box(b, fmt, image_size=image_size) for b in boxes)


# ------------------------------------------------------------------------------------------------ parse
# A number, including the NaN/inf spellings a model may emit (so that box is dropped instead of misaligned).
_N = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?))"
_S = r"(?>\s*[,;]\s*|\s+)"  # separator between coordinates; atomic so long whitespace cannot backtrack
# "no fifth number follows": a run of 5+ numbers ("[25,4,32,4,4,429]") is not a box, whatever its first four say.
_NO_5TH = r"(?!\s*[,;]?\s*[-+]?(?:\d|\.\d|nan|inf))"
_PATTERNS = [
    # Qwen2-VL: (x1,y1),(x2,y2)  (also "to" / "-" between the corners)
    rf"\(\s*{_N}{_S}{_N}\s*\)\s*(?:,|-|to)?\s*\(\s*{_N}{_S}{_N}\s*\)",
    # MiniGPT-v2: {<x1><y1><x2><y2>} (braces optional)
    rf"\{{?\s*<\s*{_N}\s*>\s*<\s*{_N}\s*>\s*<\s*{_N}\s*>\s*<\s*{_N}\s*>\s*\}}?",
    # any bracket: [a,b,c,d] (a,b,c,d) {a,b,c,d}; a missing opening or closing bracket is tolerated
    rf"[\[({{]\s*{_N}{_S}{_N}{_S}{_N}{_S}{_N}{_NO_5TH}\s*[\])}}]?",
    # four bare numbers, not glued to words or other numbers
    rf"(?<![\w.]){_N}{_S}{_N}{_S}{_N}{_S}{_N}(?!\w|\.\d){_NO_5TH}",
]
_BOX_RE = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)
# A bare run that starts right after "<number><separator>" is the tail of a longer number run, not a box.
_AFTER_NUMBER_RE = re.compile(r"[\d.]\s*[,;]?\s*$")


def _unit_scale(fmt: str, image_size) -> tuple[float, float] | None:
    f = FORMATS.get(fmt)
    if f is None:
        return None
    if f.scale is not None:
        return f.scale, f.scale
    try:
        return _check_size(image_size)
    except (ValueError, TypeError, IndexError):
        return None


Span = tuple[int, int]


def parse_boxes_with_spans(text, fmt: str = DEFAULT_FORMAT, *, image_size=None) -> list[tuple[Box, tuple[Span, ...]]]:
    """Like :func:`parse_boxes`, with where each coordinate is written: ``[(box, (sx1, sy1, sx2, sy2)), ...]``, each
    ``s*`` the ``(start, end)`` character span in ``text`` of the number that gave that corner of the (ordered,
    clamped) box. Inverted corners swap their spans with their values. Never raises.

    Used to credit the tokens of each coordinate with that coordinate's own error (``ppo.coord_advantages``)."""
    try:
        if not isinstance(text, str):
            return []
        scale = _unit_scale(fmt, image_size)
        if scale is None:
            return []
        sx, sy = scale
        out: list[tuple[Box, tuple[Span, ...]]] = []
        for m in _BOX_RE.finditer(text):
            if m.group(0)[0] not in "[({<" and _AFTER_NUMBER_RE.search(text, 0, m.start()):
                continue
            idx = [g for g in range(1, (m.re.groups or 0) + 1) if m.group(g) is not None]
            if len(idx) != 4:  # cannot happen with the patterns above; be defensive anyway
                continue
            vals = [float(m.group(g)) for g in idx]
            if not all(math.isfinite(v) for v in vals):
                continue
            x1, y1, x2, y2 = vals[0] / sx, vals[1] / sy, vals[2] / sx, vals[3] / sy
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                continue
            spans = [m.span(g) for g in idx]
            if x1 > x2:
                spans[0], spans[2] = spans[2], spans[0]
            if y1 > y2:
                spans[1], spans[3] = spans[3], spans[1]
            out.append((clip_box01((x1, y1, x2, y2)), tuple(spans)))
        return out
    except Exception:  # noqa: BLE001 - the contract is "never raises" on arbitrary model output
        return []


def parse_boxes(text, fmt: str = DEFAULT_FORMAT, *, image_size=None) -> list[Box]:
    """Every box written in ``text``, in order of appearance, as unit xyxy tuples. Never raises.

    Returns [] for non-string input, an unknown format, ``qwen25_abs`` without a valid ``image_size``, or text with
    no box. Corners are swapped when inverted and clamped to [0, 1]; a box with NaN/inf (or an overflowing number)
    is dropped.
    """
    return [box for box, _ in parse_boxes_with_spans(text, fmt, image_size=image_size)]


def parse_box(text, fmt: str = DEFAULT_FORMAT, *, image_size=None) -> Box | None:
    """The first box in ``text`` or None. Never raises."""
    boxes = parse_boxes(text, fmt, image_size=image_size)
    return boxes[0] if boxes else None


def quantization_step(fmt: str, image_size=None) -> tuple[float, float]:
    """Largest round-trip error (x, y) of ``format_box`` -> ``parse_boxes`` in unit coordinates."""
    f = _get_format(fmt)
    if f.scale is None:
        w, h = _check_size(image_size)
        return 0.5 / w, 0.5 / h
    step = 0.0005 if f.name == "shikra" else 0.5 / f.scale
    return step, step


# ------------------------------------------------------------------------------------------ conversions
def xywh_to_xyxy(box_xywh: Sequence[float]) -> Box:
    """(x, y, w, h) top-left + size -> (x1, y1, x2, y2), same units (NIH, COCO)."""
    x, y, w, h = (float(v) for v in box_xywh)
    return (x, y, x + w, y + h)


def xyxy_to_xywh(box_xyxy: Sequence[float]) -> Box:
    """(x1, y1, x2, y2) -> (x, y, w, h), same units."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return (x1, y1, x2 - x1, y2 - y1)


def yolo_to_xyxy(box_cxcywh01: Sequence[float], image_size=None) -> Box:
    """YOLO (cx, cy, w, h) normalized to [0, 1] -> xyxy; in pixels when ``image_size=(W, H)`` is given, else unit."""
    cx, cy, w, h = (float(v) for v in box_cxcywh01)
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return unit_to_pixels(box, image_size) if image_size is not None else box


def pixels_to_unit(box_xyxy_px: Sequence[float], image_size) -> Box:
    """xyxy in pixels of an image of ``image_size=(W, H)`` -> unit xyxy (not clamped)."""
    w, h = _check_size(image_size)
    x1, y1, x2, y2 = (float(v) for v in box_xyxy_px)
    return (x1 / w, y1 / h, x2 / w, y2 / h)


def unit_to_pixels(box01: Sequence[float], image_size) -> Box:
    """Unit xyxy -> xyxy in pixels of an image of ``image_size=(W, H)`` (floats, not rounded)."""
    w, h = _check_size(image_size)
    x1, y1, x2, y2 = (float(v) for v in box01)
    return (x1 * w, y1 * h, x2 * w, y2 * h)


__all__ = [
    "Box", "BoxFormat", "FORMATS", "DEFAULT_FORMAT", "clip_box01", "format_box", "format_boxes", "parse_boxes",
    "parse_boxes_with_spans", "parse_box", "quantization_step", "xywh_to_xyxy", "xyxy_to_xywh", "yolo_to_xyxy",
    "pixels_to_unit", "unit_to_pixels",
]
