"""One self-contained HTML report (PNGs embedded as base64 and also saved beside it): metric tables in the paper's
layout, training curves from the metrics JSONL, and per-sample figures with ground-truth / predicted boxes and the
class-token attention heatmap over the image patches.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Sequence

from umedfast.data import CLASS_SYNONYMS, load_image
from umedfast.data.records import iter_jsonl
from umedfast.eval import tables as T
from umedfast.eval.plots import plot_sample, plot_training_curves, read_metrics_jsonl

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table.results{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
table.results caption{text-align:left;font-weight:600;padding:4px 0}
table.results td,table.results th{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.results td:first-child,table.results th:first-child{text-align:left}
.sample{display:flex;gap:16px;align-items:flex-start;border-bottom:1px solid #eee;padding:10px 0}
img{max-width:100%;height:auto}.sample img{max-width:560px}.resp{font-size:12px;white-space:pre-wrap;max-width:560px}
.ok{color:#0a7d32}.bad{color:#c62828}.muted{color:#777;font-size:12px}"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def _img_tag(png: Path, alt: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{html.escape(alt)}" data-file="{html.escape(Path(png).name)}">'


def read_predictions(eval_dir) -> tuple[dict, list[dict]]:
    """(eval.json dict, per-sample rows) of an evaluation output directory or eval.json path."""
    p = Path(eval_dir)
    ej = p if p.is_file() else p / "eval.json"
    metrics = T.load_eval(ej)
    pred = ej.with_name(metrics.get("predictions") or (ej.stem + ".predictions.jsonl"))
    rows = []
    if pred.is_file():

        rows = [row for _, row in iter_jsonl(pred, "predictions JSONL")]  # malformed line: UserError file:line
    return metrics, rows


def pick_samples(rows: Sequence[dict], n: int) -> list[dict]:
    """Up to n rows, abnormal first, alternating correct and wrong answers, in id order (deterministic)."""
    rows = sorted(rows, key=lambda r: str(r.get("id")))
    abn = [r for r in rows if not r.get("normal")]
    good = [r for r in abn if r.get("correct")]
    bad = [r for r in abn if not r.get("correct")]
    out = []
    while len(out) < n and (good or bad):
        for pool in (good, bad):
            if pool and len(out) < n:
                out.append(pool.pop(0))
    out += [r for r in rows if r.get("normal")][: max(0, n - len(out))]
    return out


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))[:80] or "sample"


def _sample_figures(rows, out_dir: Path, bundle) -> list[tuple[dict, Path, str]]:

    figs = []
    for r in rows:
        img = load_image(r["image"])
        heat, extent, note = None, (0.0, 0.0, 1.0, 1.0), "no model given: attention map skipped"
        if bundle is not None:
            labels = list(dict.fromkeys(list(r.get("named") or []) + list(r.get("gt_labels") or [])))
            phrases = labels + [s for lab in labels for s in CLASS_SYNONYMS.get(r["source"], {}).get(lab, [])]
            # a class of another source ("mass" on a TB film) is still the class the answer commits to
            text = (r.get("response") or "").lower()
            phrases += [lab for table in CLASS_SYNONYMS.values() for lab in table
                        if re.search(rf"(?<![a-z0-9]){re.escape(lab.lower())}(?![a-z0-9])", text)]
            from umedfast.eval.attention_map import patch_attention  # torch + transformers (~17 s): heatmaps only

            pa = patch_attention(bundle, img, r.get("query") or "", r.get("response") or "", phrases)
            heat, extent = pa.heat, pa.extent01
            note = ("attention of the class-name tokens over image patches" if pa.class_tokens else
                    "no class name in the answer: attention of all answer tokens")
        iou = r.get("iou")
        title = f"{r['source']} | {r.get('id')}" + (f" | IoU {iou:.2f}" if iou is not None else "")
        png = plot_sample(img, r.get("gt_boxes") or [], r.get("pred_boxes") or [],
                          out_dir / f"sample_{_safe_name(r.get('id'))}.png", heat=heat, extent01=extent, title=title,
                          heat_title="class-token attention" if heat is not None else "")
        figs.append((r, png, note))
    return figs


def build_report(out_dir, *, eval_dirs: Sequence = (), names: Sequence[str] = (), metrics_jsonl=None,
                 checkpoint=None, device: str = "cpu", n_samples: int = 6, bundle=None,
                 benchmark_files: Sequence = (), title: str = "umedfast evaluation report") -> Path:
    """Write out_dir/report.html (+ PNGs). Returns the HTML path.

    eval_dirs/names: evaluation outputs (eval.json + predictions) shown as table rows; samples come from the last.
    metrics_jsonl: training metrics for the curves. checkpoint or bundle: model for attention heatmaps (optional).
    benchmark_files: JSON files written by `umedfast-eval bench --out` ({benchmark: metrics}).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names) or [Path(d).name for d in eval_dirs]
    loaded = [(n, *read_predictions(d)) for n, d in zip(names, eval_dirs)]
    parts = [f"<h1>{html.escape(title)}</h1>"]

    if loaded:
        parts.append("<h2>MAU results (paper Table 2 layout: rows = models, columns = sources + Avg)</h2>")
        results = [(n, m) for n, m, _ in loaded]
        for metric in ("accuracy", "mean_iou", "acc_iou50", "format_ok"):
            parts.append(T.render_html(T.results_table(results, metric=metric)))
        parts.append(T.render_html(T.results_table(results, metric="accuracy", group="modality")))
        parts.append(T.render_html(T.results_table(results, metric="accuracy", group="label")))
        judged = [(n, m) for n, m in results if m.get("judged_accuracy") is not None]
        if judged:
            rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{m['judged_accuracy']:.2f}</td>"
                           f"<td>{m.get('judge_failures', 0)}</td></tr>" for n, m in judged)
            parts.append('<table class="results"><caption>Judged accuracy</caption><tr><th>Model</th>'
                         f"<th>judged accuracy</th><th>judge failures</th></tr>{rows}</table>")

    if benchmark_files:
        parts.append("<h2>External benchmarks</h2>")
        for bf in benchmark_files:
            data = T.load_eval(bf)  # a missing or malformed file: one line naming it
            for bench, m in data.items():
                if not isinstance(m, dict):
                    raise T.EvalFileError(f"{bf}: expected {{benchmark: {{metric: value}}}} (written by "
                                          f"umedfast-eval bench --out), got {bench!r}: {type(m).__name__}")
                cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_cell(v))}</td></tr>"
                                for k, v in m.items())
                parts.append(f'<table class="results"><caption>{html.escape(bench)}</caption>{cells}</table>')

    if metrics_jsonl:
        parts.append("<h2>Training curves</h2>")
        png = plot_training_curves(read_metrics_jsonl(metrics_jsonl), out / "training_curves.png")
        parts.append(_img_tag(png, "training curves") if png else '<p class="muted">no numeric metrics found</p>')

    if loaded and loaded[-1][2]:
        if bundle is None and checkpoint:
            from umedfast.model.checkpoint import load_model_or_checkpoint  # torch: only with --checkpoint

            bundle = load_model_or_checkpoint(str(checkpoint), device)
        picked = pick_samples(loaded[-1][2], n_samples)
        parts.append(f"<h2>Samples ({html.escape(loaded[-1][0])})</h2>"
                     '<p class="muted">green: ground truth; red dashed: boxes parsed from the answer</p>')
        for r, png, note in _sample_figures(picked, out, bundle):
            verdict = '<span class="ok">correct</span>' if r.get("correct") else '<span class="bad">wrong</span>'
            parts.append(
                f'<div class="sample">{_img_tag(png, str(r.get("id")))}<div><b>{html.escape(str(r.get("id")))}</b> '
                f"{verdict} &middot; truth: {html.escape(', '.join(r.get('gt_labels') or []) or 'normal')} &middot; "
                f"named: {html.escape(', '.join(r.get('named') or []) or '-')}"
                f'<div class="muted">{html.escape(note)}</div>'
                f'<div class="resp">{html.escape(r.get("response") or "")}</div></div></div>')

    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
