"""Matplotlib (Agg) figures for reports: a sample with its boxes and attention heatmap, and training curves."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from umedfast.data.records import iter_jsonl

GT_COLOR, PRED_COLOR = "#00e676", "#ff1744"


def _draw_boxes(ax, boxes01, wh, color, style, label):
    w, h = wh
    for k, (x1, y1, x2, y2) in enumerate(boxes01):
        ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False, edgecolor=color,
                               linewidth=2, linestyle=style, label=label if k == 0 else None))


def plot_sample(image, gt_boxes01: Sequence, pred_boxes01: Sequence, path, *, heat: np.ndarray | None = None,
                extent01=(0.0, 0.0, 1.0, 1.0), title: str = "", heat_title: str = "class-token attention") -> Path:
    """Left: image with ground-truth (green) and predicted (red dashed) boxes. Right (when `heat` [gh, gw] is
    given): the attention heatmap over the image patches, placed at `extent01` of the original image, with the GT box.
    """
    img = np.asarray(image.convert("RGB"))
    h, w = img.shape[:2]
    ncol = 2 if heat is not None else 1
    fig, axes = plt.subplots(1, ncol, figsize=(3.6 * ncol, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(img)
    _draw_boxes(ax, gt_boxes01, (w, h), GT_COLOR, "-", "ground truth")
    _draw_boxes(ax, pred_boxes01, (w, h), PRED_COLOR, "--", "predicted")
    ax.set_title(title, fontsize=8)
    if gt_boxes01 or pred_boxes01:
        ax.legend(loc="lower right", fontsize=6, framealpha=0.6)
    if heat is not None:
        ax2 = axes[0, 1]
        ax2.imshow(img)
        x0, y0, x1, y1 = extent01
        im = ax2.imshow(np.asarray(heat, dtype=np.float64), cmap="inferno", alpha=0.55, interpolation="nearest",
                        extent=(x0 * w, x1 * w, y1 * h, y0 * h))
        ax2.set_xlim(0, w)
        ax2.set_ylim(h, 0)
        _draw_boxes(ax2, gt_boxes01, (w, h), GT_COLOR, "-", "ground truth")
        ax2.set_title(heat_title, fontsize=8)
        fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.04)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Lay out, write ``fig`` as PNG at ``path`` (parents created), free it, return the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_metrics_jsonl(path) -> list[dict]:
    """Rows of a training metrics JSONL (umedfast.train.metrics.MetricsLogger); malformed lines are an error."""
    return [row for _, row in iter_jsonl(path, "metrics JSONL")]  # a bad line: UserError naming file:line


# Panels of the training-curve figure: title -> regex on metric names (first match wins).
CURVE_GROUPS = (
    ("Held-out eval", re.compile(r"^eval[_/](?!n$|n_)", re.I)),
    ("Rewards", re.compile(r"(^|/|_)(reward|rew|r_llm|r_alr|r_vrr|alr|vrr|judge|relevance)", re.I)),
    ("KL", re.compile(r"(^|/|_)kl", re.I)),
    ("IoU", re.compile(r"iou", re.I)),
    ("Value loss", re.compile(r"(value|vf|critic).*loss|loss.*(value|vf|critic)", re.I)),
    ("Policy / SFT loss", re.compile(r"loss", re.I)),
    ("Rollout quality", re.compile(r"format|class_written|correct|accuracy", re.I)),
    ("Policy stats", re.compile(r"entropy|clip", re.I)),
    ("Response length", re.compile(r"(resp|response)_?len", re.I)),
)
_SKIP = re.compile(r"^(step|time_s|epoch|lr|learning_rate|tokens?|tokens?_per_s.*|samples_per_s.*|.*_count|n_.*|"
                   r"eval_n|eval_n_.*)$", re.I)


def group_curves(rows: Sequence[dict]) -> dict[str, list[str]]:
    """Metric names per panel title, for numeric metrics present in `rows`."""
    keys = sorted({k for r in rows for k, v in r.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and not _SKIP.match(k)})
    found: dict[str, list[str]] = {}
    for k in keys:
        for title, pat in CURVE_GROUPS:
            if pat.search(k):
                found.setdefault(title, []).append(k)
                break
    return {title: found[title] for title, _ in CURVE_GROUPS if title in found}  # panels in CURVE_GROUPS order


def plot_training_curves(rows: Sequence[dict], path) -> Path | None:
    """One panel per group of CURVE_GROUPS (rewards, KL, IoU, value loss, loss) against `step`; None if empty."""
    groups = group_curves(rows)
    if not groups:
        return None
    n = len(groups)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, groups.items()):
        for k in keys:
            pts = [(r.get("step", i), r[k]) for i, r in enumerate(rows)
                   if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 20 else None, markersize=3, linewidth=1.2, label=k)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _save(fig, path)
