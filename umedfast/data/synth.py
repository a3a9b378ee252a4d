"""MAU-Synth: procedural medical-looking images with known lesions, the offline default dataset.

Five synthetic sources mirror the real ones (record ``source`` = "synth-<name>"):

=================  ==========  ==========================================================================
source             modality    abnormal classes (label: visual cue)
=================  ==========  ==========================================================================
synth-deeplesion   CT          liver lesion (dark smooth oval in the liver, abdomen slice),
                               lung lesion (bright spiculated focus in a dark lung, thorax slice)
synth-kidneystone  CT          kidney stone (very bright compact focus with halo inside a kidney)
synth-nih          X-ray       nodule (small bright sharp disc), mass (large lobulated textured opacity),
                               effusion (homogeneous opacity filling a lung base under a curved meniscus)
synth-tbx11k       X-ray       active tuberculosis (patchy cloudy upper-lung opacity),
                               obsolete tuberculosis (cluster of tiny calcified dots with streaks)
synth-kvasir       endoscopy   polyp (raised pale dome with a specular highlight, RGB)
=================  ==========  ==========================================================================

Backgrounds carry anatomy-like structure (body outline, organs, spine, ribs, mucosal folds), low-frequency
texture and noise with random gain, so class and location have to be read from the pixels; class cues
(shape, size, intensity, texture, organ) are deliberately distinct so that a tiny VLM learns them in minutes.
Lesions span about 10-35 % of the image side. About ``normal_frac`` of the images are normal and
``two_lesion_frac`` carry two non-overlapping lesions. Abnormal images are class-balanced (the first lesion's class
is uniform over all classes; normal images are uniform over sources). Boxes are the tight box of the rendered lesion mask.

Determinism: image ``i`` depends only on ``(seed, i, image_size)`` (its own generator), so any number of worker
processes gives identical files.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from umedfast.data.records import MAURecord, write_mau
from umedfast.data.templates import apply_template

SYNTH_SOURCES = ("synth-deeplesion", "synth-kidneystone", "synth-nih", "synth-tbx11k", "synth-kvasir")
SYNTH_CLASSES = {
    "synth-deeplesion": ("liver lesion", "lung lesion"),
    "synth-kidneystone": ("kidney stone",),
    "synth-nih": ("nodule", "mass", "effusion"),
    "synth-tbx11k": ("active tuberculosis", "obsolete tuberculosis"),
    "synth-kvasir": ("polyp",),
}
SYNTH_MODALITY = {"synth-deeplesion": "CT", "synth-kidneystone": "CT", "synth-nih": "X-ray",
                  "synth-tbx11k": "X-ray", "synth-kvasir": "endoscopy"}
JSONL_NAME = "mau_synth.jsonl"


class _Canvas:
    """Per-process constants for one (seed, size): coordinate grids and noise banks (built once)."""

    def __init__(self, seed: int, size: int):
        self.S = size
        ax = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.xx, self.yy = np.meshgrid(ax, ax)  # [S, S] each, x to the right, y down, in [0, 1]
        rng = np.random.default_rng([seed, 0xB4C])
        self.noise = rng.standard_normal((2 * size, 2 * size), dtype=np.float32)  # white noise bank
        # low-frequency texture bank: bilinear upsampling of a coarse random grid, values ~ [0, 1]
        coarse = rng.random((18, 18), dtype=np.float32)
        self.tex = _upsample(coarse, 2 * size)

    def crop(self, bank: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        oy, ox = rng.integers(0, bank.shape[0] - h + 1), rng.integers(0, bank.shape[1] - w + 1)
        return bank[oy:oy + h, ox:ox + w]


def _upsample(a: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of a square [m, m] array to [n, n]."""
    m = a.shape[0]
    t = np.linspace(0, m - 1, n, dtype=np.float32)
    i0 = np.floor(t).astype(int).clip(0, m - 2)
    f = t - i0
    rows = a[i0] * (1 - f)[:, None] + a[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _ellipse(c: _Canvas, cx, cy, rx, ry, soft=0.04) -> np.ndarray:
    """Soft ellipse mask [S, S] in [0, 1] (1 inside, ramp of width ``soft`` in radius units)."""
    d = np.sqrt(((c.xx - cx) / rx) ** 2 + ((c.yy - cy) / ry) ** 2)
    return np.clip((1.0 - d) / soft, 0.0, 1.0)


def _oval(c: _Canvas, img, cx, cy, rx, ry, soft=0.04, *, value):
    """Paint a soft ellipse of scalar ``value`` into ``img`` [S, S] in place, computing only its bounding window."""
    S = c.S
    x0, x1 = max(0, int((cx - rx) * S)), min(S, int(math.ceil((cx + rx) * S)) + 1)
    y0, y1 = max(0, int((cy - ry) * S)), min(S, int(math.ceil((cy + ry) * S)) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    xs, ys = c.xx[0, x0:x1], c.yy[y0:y1, 0:1]
    d = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)  # broadcast [h, 1] x [w] -> [h, w]
    m = np.clip((1.0 - d) / soft, 0.0, 1.0)
    win = img[y0:y1, x0:x1]
    win -= m * (win - value)


def _paint(img, mask, value):
    """img = img * (1 - mask) + value * mask, in place; value scalar or array broadcastable to img."""
    img -= mask * (img - value)


# ----------------------------------------------------------------------------------------------- anatomy
def _ct_abdomen(c, rng):
    """Axial abdominal CT: body, fat rim, liver (image left), spleen, kidneys, spine, aorta. Returns img, organs."""
    img = np.zeros((c.S, c.S), np.float32) + 0.03
    bx, by = 0.5 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.02, 0.02)
    rx, ry = 0.44 * rng.uniform(0.95, 1.05), 0.36 * rng.uniform(0.95, 1.05)
    _oval(c, img, bx, by, rx, ry, value=0.30)          # subcutaneous fat
    _oval(c, img, bx, by, rx * 0.9, ry * 0.88, value=0.45)  # muscle / soft tissue
    img += 0.05 * (c.crop(c.tex, rng, c.S, c.S) - 0.5) * (img > 0.2)  # bowel / fat texture
    liver = (bx - rx * 0.42, by - ry * 0.15, rx * 0.42, ry * 0.5)
    _oval(c, img, *liver, value=0.60)
    _oval(c, img, bx + rx * 0.55, by - ry * 0.25, rx * 0.16, ry * 0.22, value=0.56)  # spleen
    kid = [(bx - rx * 0.38, by + ry * 0.38, rx * 0.13, ry * 0.2), (bx + rx * 0.38, by + ry * 0.38, rx * 0.13, ry * 0.2)]
    for k in kid:
        _oval(c, img, *k, value=0.63)
    _oval(c, img, bx, by + ry * 0.62, rx * 0.11, ry * 0.15, value=0.92)  # vertebral body
    _oval(c, img, bx, by + ry * 0.62, rx * 0.06, ry * 0.08, value=0.55)
    _oval(c, img, bx + rx * 0.08, by + ry * 0.3, rx * 0.05, ry * 0.06, value=0.72)  # aorta
    return img, {"liver": liver, "kidneys": kid}


def _ct_thorax(c, rng):
    img = np.zeros((c.S, c.S), np.float32) + 0.03
    bx, by = 0.5 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.02, 0.02)
    rx, ry = 0.45 * rng.uniform(0.95, 1.05), 0.35 * rng.uniform(0.95, 1.05)
    _oval(c, img, bx, by, rx, ry, value=0.32)
    _oval(c, img, bx, by, rx * 0.92, ry * 0.9, value=0.46)
    lungs = [(bx - rx * 0.45, by - ry * 0.05, rx * 0.36, ry * 0.66), (bx + rx * 0.45, by - ry * 0.05, rx * 0.36,
                                                                      ry * 0.66)]
    for l in lungs:
        _oval(c, img, *l, soft=0.08, value=0.08)
    img += 0.04 * (c.crop(c.tex, rng, c.S, c.S) - 0.5)  # vessels / parenchyma texture
    _oval(c, img, bx + rx * 0.05, by + ry * 0.05, rx * 0.2, ry * 0.3, value=0.55)  # heart
    _oval(c, img, bx, by + ry * 0.72, rx * 0.1, ry * 0.14, value=0.92)  # spine
    return img, {"lungs": lungs}


def _kidney_ct(c, rng):
    """Zoomed axial CT at the renal hilum: body filling the frame, psoas, large kidneys with darker sinus, spine."""
    img = np.zeros((c.S, c.S), np.float32) + 0.03
    bx, by = 0.5 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.02, 0.02)
    _oval(c, img, bx, by, 0.5, 0.44, value=0.30)
    _oval(c, img, bx, by, 0.46, 0.4, value=0.44)
    img += 0.06 * (c.crop(c.tex, rng, c.S, c.S) - 0.5) * (img > 0.2)  # bowel texture
    kid = []
    for side in (-1, 1):
        k = (bx + side * 0.25 + rng.uniform(-0.02, 0.02), by + 0.08 + rng.uniform(-0.03, 0.03),
             0.12 * rng.uniform(0.9, 1.1), 0.18 * rng.uniform(0.9, 1.1))
        _oval(c, img, bx + side * 0.1, by + 0.2, 0.05, 0.1, value=0.5)  # psoas
        _oval(c, img, *k, value=0.64)
        _oval(c, img, k[0] - side * 0.035, k[1], 0.035, 0.06, value=0.38)  # sinus fat
        kid.append(k)
    _oval(c, img, bx, by + 0.24, 0.07, 0.08, value=0.92)  # vertebral body
    _oval(c, img, bx, by + 0.24, 0.035, 0.04, value=0.55)
    _oval(c, img, bx + 0.03, by + 0.08, 0.03, 0.03, value=0.72)  # aorta
    return img, {"kidneys": kid}


def _chest_xray(c, rng, tb_style=False):
    img = np.zeros((c.S, c.S), np.float32) + 0.08
    cx = 0.5 + rng.uniform(-0.02, 0.02)
    _oval(c, img, cx, 0.58, 0.46, 0.55, soft=0.15, value=0.62)  # thorax soft tissue
    lungs = [(cx - 0.19, 0.47, 0.14, 0.3), (cx + 0.19, 0.47, 0.14, 0.3)]
    lung_mask = np.maximum(_ellipse(c, *lungs[0], soft=0.15), _ellipse(c, *lungs[1], soft=0.15))
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (c.yy * 8.5 + 1.4 * (c.xx - cx) ** 2))  # curved rib shadows
    _paint(img, lung_mask, 0.2 + 0.1 * ribs)
    _oval(c, img, cx + 0.03, 0.66, 0.12, 0.14, soft=0.2, value=0.68)  # heart
    _oval(c, img, cx, 0.35, 0.045, 0.3, soft=0.3, value=0.66)  # mediastinum / spine
    if tb_style:  # TBX11K-like: wider field, burned-in side marker
        img *= 0.9
        img[int(0.05 * c.S):int(0.11 * c.S), int(0.86 * c.S):int(0.92 * c.S)] = 0.95
    return img, {"lungs": lungs, "lung_mask": lung_mask}


def _endoscopy(c, rng):
    """RGB colonoscopy-like frame: pink mucosa, dark lumen, concentric folds, vignette. Returns [S,S,3]."""
    lx, ly = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    d = np.sqrt((c.xx - lx) ** 2 + (c.yy - ly) ** 2)
    lum = 0.55 + 0.25 * np.clip(d * 2.2, 0, 1) + 0.08 * np.sin(d * rng.uniform(38, 48))  # folds
    lum += 0.15 * (c.crop(c.tex, rng, c.S, c.S) - 0.5)
    lum *= np.clip(1.15 - 0.9 * ((c.xx - 0.5) ** 2 + (c.yy - 0.5) ** 2), 0, 1)  # vignette
    _paint(lum, np.clip((0.1 - d) / 0.05, 0, 1), 0.05)  # lumen
    tint = np.array([0.95, 0.45, 0.40], np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    return lum[..., None] * tint, {"lumen": (lx, ly)}


# ------------------------------------------------------------------------------------------------ lesions
def _window(c, cx, cy, r):
    S = c.S
    x0, x1 = max(0, int((cx - r) * S)), min(S, int(math.ceil((cx + r) * S)) + 1)
    y0, y1 = max(0, int((cy - r) * S)), min(S, int(math.ceil((cy + r) * S)) + 1)
    return y0, y1, x0, x1


def _upper_lung_site(c, rng, org, *, up, radius, margin):
    """A lesion site in the upper part of a random lung: centre (cx, cy) drawn ``up`` = (lo, hi) half-heights above
    the lung's centre, radius ``r`` from ``radius``, and its ``_window`` of ``r * margin``. Draws from ``rng`` in a
    fixed order (lung, x, y, radius), so a seed gives the same images."""
    lx, ly, lrx, lry = org["lungs"][rng.integers(2)]
    cx, cy = lx + rng.uniform(-0.3, 0.3) * lrx, ly - lry * rng.uniform(*up)
    r = rng.uniform(*radius)
    return cx, cy, r, _window(c, cx, cy, r * margin)


def _blob(c, rng, win, cx, cy, rx, ry, lobes=0, amp=0.0, soft=0.12, angle=0.0):
    """Soft (optionally lobulated/spiculated) blob alpha in window ``win`` [h, w] in [0, 1]."""
    y0, y1, x0, x1 = win
    u, v = c.xx[y0:y1, x0:x1] - cx, c.yy[y0:y1, x0:x1] - cy
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = u * ca + v * sa, -u * sa + v * ca
    d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    if lobes:
        th = np.arctan2(v, u)
        d = d / (1.0 + amp * np.sin(lobes * th + rng.uniform(0, 6.28)) + 0.5 * amp * np.sin((lobes + 3) * th))
    return np.clip((1.0 - d) / soft, 0.0, 1.0)


def _in_ellipse_point(rng, e, frac=0.55):
    cx, cy, rx, ry = e
    t, rho = rng.uniform(0, 2 * math.pi), frac * math.sqrt(rng.uniform(0, 1))
    return cx + rx * rho * math.cos(t), cy + ry * rho * math.sin(t)


def _draw_lesion(c, rng, img, label, org):
    """Render one lesion of class ``label`` into ``img`` in place; returns (y0, y1, x0, x1, alpha) where alpha
    (window-sized) defines the lesion's box."""
    box_alpha = None
    if label == "liver lesion":
        cx, cy = _in_ellipse_point(rng, org["liver"], 0.45)
        r = rng.uniform(0.06, 0.14)
        win = _window(c, cx, cy, r * 1.3)
        a = _blob(c, rng, win, cx, cy, r, r * rng.uniform(0.8, 1.0), soft=0.25)
        value = 0.24
    elif label == "lung lesion":
        cx, cy = _in_ellipse_point(rng, org["lungs"][rng.integers(2)], 0.4)
        r = rng.uniform(0.05, 0.1)
        win = _window(c, cx, cy, r * 1.6)
        a = _blob(c, rng, win, cx, cy, r, r, lobes=7, amp=0.3, soft=0.15)
        value = 0.62
    elif label == "kidney stone":
        cx, cy = _in_ellipse_point(rng, org["kidneys"][rng.integers(2)], 0.35)
        r = rng.uniform(0.045, 0.075)
        win = _window(c, cx, cy, r * 1.4)
        a = _blob(c, rng, win, cx, cy, r, r * rng.uniform(0.7, 1.0), lobes=3, amp=0.15, soft=0.1,
                  angle=rng.uniform(0, 3.14))
        value = 1.0
    elif label == "nodule":
        cx, cy = _in_ellipse_point(rng, org["lungs"][rng.integers(2)], 0.5)
        r = rng.uniform(0.05, 0.07)
        win = _window(c, cx, cy, r * 1.3)
        a = _blob(c, rng, win, cx, cy, r, r, soft=0.12)
        value = 0.85
    elif label == "mass":
        cx, cy = _in_ellipse_point(rng, org["lungs"][rng.integers(2)], 0.3)
        r = rng.uniform(0.11, 0.16)
        win = _window(c, cx, cy, r * 1.4)
        a = _blob(c, rng, win, cx, cy, r, r * rng.uniform(0.8, 1.0), lobes=3, amp=0.18, soft=0.2)
        tex = 0.72 + 0.12 * (c.crop(c.tex, rng, win[1] - win[0], win[3] - win[2]) - 0.5)
        value = tex
    elif label == "effusion":
        lx, ly, lrx, lry = org["lungs"][rng.integers(2)]
        top = ly + lry * rng.uniform(0.05, 0.35)  # meniscus level
        win = _window(c, lx, (top + ly + lry) / 2, max(lrx, (ly + lry - top) / 2) * 1.25)
        y0, y1, x0, x1 = win
        lung = np.clip((1.0 - np.sqrt(((c.xx[y0:y1, x0:x1] - lx) / lrx) ** 2
                                      + ((c.yy[y0:y1, x0:x1] - ly) / lry) ** 2)) / 0.05, 0, 1)
        side = 1.0 if lx > 0.5 else -1.0  # meniscus rises toward the lateral wall
        level = top - 0.25 * np.clip(side * (c.xx[y0:y1, x0:x1] - lx) / lrx, -1, 1) * lry * 0.5
        a = lung * np.clip((c.yy[y0:y1, x0:x1] - level) * c.S / 2.0, 0, 1)
        value = 0.7
    elif label == "active tuberculosis":
        cx, cy, r, win = _upper_lung_site(c, rng, org, up=(0.3, 0.5), radius=(0.11, 0.15), margin=1.4)
        patch = c.crop(c.tex, rng, win[1] - win[0], win[3] - win[2])
        envelope = _blob(c, rng, win, cx, cy, r, r * 0.8, soft=0.35)
        a = envelope * np.clip(patch * 1.8 + 0.1, 0, 1)  # patchy cloud inside a soft envelope
        box_alpha = envelope  # the box covers the whole cloud, not only its densest patches
        value = 0.68
    elif label == "obsolete tuberculosis":
        cx, cy, r, win = _upper_lung_site(c, rng, org, up=(0.1, 0.45), radius=(0.06, 0.09), margin=1.25)
        a = np.zeros((win[1] - win[0], win[3] - win[2]), np.float32)
        for _ in range(rng.integers(5, 9)):  # calcified dots
            px, py = cx + rng.uniform(-r, r) * 0.85, cy + rng.uniform(-r, r) * 0.85
            np.maximum(a, _blob(c, rng, win, px, py, 0.012, 0.012, soft=0.3), out=a)
        for _ in range(2):  # fibrotic streaks
            np.maximum(a, 0.6 * _blob(c, rng, win, cx, cy, r * 0.9, 0.006, soft=0.5, angle=rng.uniform(0, 3.14)),
                       out=a)
        value = 0.98
    elif label == "polyp":
        lx, ly = org["lumen"]
        for _ in range(8):  # away from the lumen
            cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
            if (cx - lx) ** 2 + (cy - ly) ** 2 > 0.05:
                break
        r = rng.uniform(0.07, 0.16)
        win = _window(c, cx, cy, r * 1.3)
        y0, y1, x0, x1 = win
        a = _blob(c, rng, win, cx, cy, r, r * rng.uniform(0.75, 1.0), lobes=2, amp=0.08, soft=0.12)
        shade = 1.0 - 0.35 * np.clip((c.xx[y0:y1, x0:x1] - cx + c.yy[y0:y1, x0:x1] - cy) / r, -1, 1)  # dome light
        spec = _blob(c, rng, win, cx - r * 0.3, cy - r * 0.3, r * 0.15, r * 0.1, soft=0.6)
        col = np.array([1.0, 0.72, 0.62], np.float32)
        value = (shade[..., None] * col) * (1 - spec[..., None]) + spec[..., None]
        img[y0:y1, x0:x1] -= a[..., None] * (img[y0:y1, x0:x1] - value)
        return (*win, a)
    else:
        raise ValueError(f"unknown synthetic class {label!r}")
    y0, y1, x0, x1 = win
    img[y0:y1, x0:x1] -= a * (img[y0:y1, x0:x1] - value)
    return (*win, a if box_alpha is None else box_alpha)


def _alpha_box(y0, y1, x0, x1, a, thr=0.5):
    """Tight pixel box [x1, y1, x2, y2) of alpha >= thr inside the window, or None when empty."""
    m = a >= thr
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    return [float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1)]


def _overlaps(b, boxes, margin=2.0):
    return any(b[0] < o[2] + margin and o[0] < b[2] + margin and b[1] < o[3] + margin and o[1] < b[3] + margin
               for o in boxes)


# -------------------------------------------------------------------------------------------------- one image
_CANVAS: dict = {}


def _canvas(seed, size) -> _Canvas:
    key = (seed, size)
    if key not in _CANVAS:
        _CANVAS.clear()
        _CANVAS[key] = _Canvas(seed, size)
    return _CANVAS[key]


def render(i: int, *, seed: int = 0, image_size: int = 224, normal_frac: float = 0.15,
           two_lesion_frac: float = 0.12, sources=SYNTH_SOURCES):
    """Render image ``i``: returns (uint8 array [S,S] or [S,S,3], source, findings, split)."""
    c = _canvas(seed, image_size)
    rng = np.random.default_rng([seed, i, image_size])
    u = rng.random()
    split = "train" if u < 0.8 else ("val" if u < 0.9 else "test")
    n_les = 0 if rng.random() < normal_frac else (2 if rng.random() < two_lesion_frac else 1)
    if n_les == 0:  # normal image: uniform over sources
        source = sources[rng.integers(len(sources))]
        labels = []
    else:  # class-balanced: the first class is uniform over all classes, its source follows
        all_classes = [(s, k) for s in sources for k in SYNTH_CLASSES[s]]
        source, first = all_classes[rng.integers(len(all_classes))]
        classes = SYNTH_CLASSES[source]
        labels = [first] + [classes[rng.integers(len(classes))] for _ in range(n_les - 1)]
    if source == "synth-deeplesion":  # one slice type per image: both lesions come from it
        slice_kind = labels[0] if labels else ("liver lesion" if rng.random() < 0.5 else "lung lesion")
        labels = [slice_kind] * n_les
        img, org = (_ct_abdomen(c, rng) if slice_kind == "liver lesion" else _ct_thorax(c, rng))
    elif source == "synth-kidneystone":
        img, org = _kidney_ct(c, rng)
    elif source == "synth-nih":
        img, org = _chest_xray(c, rng)
    elif source == "synth-tbx11k":
        img, org = _chest_xray(c, rng, tb_style=True)
    else:
        img, org = _endoscopy(c, rng)
    findings = []
    for lab in labels:
        for _attempt in range(6):
            scratch = img.copy() if findings else img  # a rejected second lesion must leave no trace
            win = _draw_lesion(c, rng, scratch, lab, org)
            box = _alpha_box(*win)
            if box is not None and not _overlaps(box, [f["box_xyxy"] for f in findings]):
                img = scratch
                findings.append({"label": lab, "box_xyxy": box})
                break
    # global acquisition effects: gain/offset, noise
    gain, off, sigma = rng.uniform(0.9, 1.1), rng.uniform(-0.04, 0.04), rng.uniform(0.02, 0.045)
    noise = c.crop(c.noise, rng, image_size, image_size)
    if img.ndim == 3:
        img = img * gain + (off + sigma * noise)[..., None]
    else:
        img = img * gain + (off + sigma * noise)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), source, findings, split


def _make_records(args):
    idx, seed, image_size, out_dir, fmt, style, normal_frac, two_lesion_frac = args
    out = []
    img_dir = Path(out_dir) / "images"
    for i in idx:
        arr, source, findings, split = render(i, seed=seed, image_size=image_size, normal_frac=normal_frac,
                                              two_lesion_frac=two_lesion_frac)
        rid = f"synth{seed}-{i:06d}"
        path = img_dir / f"{rid}.png"
        Image.fromarray(arr, "RGB" if arr.ndim == 3 else "L").save(path, compress_level=1)
        rec = MAURecord(id=rid, image=str(path), source=source, modality=SYNTH_MODALITY[source], findings=findings,
                        query="", response="", split=split, image_size=[image_size, image_size],
                        meta={"synthetic": True, "seed": seed, "index": i})
        out.append(apply_template(rec, fmt=fmt, style=style))
    return out


def generate(n: int, out_dir, *, seed: int = 0, image_size: int = 224, box_format: str = "norm1000",
             style: str = "full", normal_frac: float = 0.15, two_lesion_frac: float = 0.12, workers: int | None = None,
             progress: bool = True) -> list[MAURecord]:
    """Write ``n`` MAU-Synth images to ``out_dir/images/*.png`` and ``out_dir/mau_synth.jsonl``; return the records.

    Deterministic by ``seed`` (independent of ``workers``; default: up to 2 forked processes for n >= 256, one when
    torch is already imported).
    ``box_format`` / ``style`` select the template writer's box format and answer style.
    """
    if n < 0 or image_size < 32:
        raise ValueError("need n >= 0 and image_size >= 32")
    out_dir = Path(os.path.abspath(out_dir))  # records carry absolute image paths (workers may not share a cwd)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if workers is None:
        # fork() after torch has started its thread pools can hang children: stay in-process when torch is loaded
        workers = min(2, os.cpu_count() or 1) if n >= 256 and "torch" not in sys.modules else 1
    chunk = 64
    jobs = [(range(s, min(n, s + chunk)), seed, image_size, str(out_dir), box_format, style, normal_frac,
             two_lesion_frac) for s in range(0, n, chunk)]
    # lazy: tqdm.auto (~0.5 s) only when a progress bar is shown; `umedfast-data stats` stays light
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="MAU-Synth", unit="img", disable=not progress)
    records: list[MAURecord] = []
    if workers <= 1:
        for j in jobs:
            records += _make_records(j)
            bar.update(len(j[0]))
    else:

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            for recs in ex.map(_make_records, jobs):
                records += recs
                bar.update(len(recs))
    bar.close()
    write_mau(records, out_dir / JSONL_NAME)
    return records
