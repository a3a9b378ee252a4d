"""Paper-style result tables from eval.json files: Table 2 (rows = models, columns = sources + Avg), Table 6
(ablation: full / w/o VRR / w/o ALR / w/o AAR) and Tables 7-9 (held-out category / source / modality).

A table holds raw fractions; renderers format them (text for the terminal, markdown, HTML for the report).
"Avg" is the mean of the row's available cells (macro over sources, like the paper's Avg column).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from umedfast.errors import UserError

PAPER_SOURCES = ("deeplesion", "kidneystone", "kvasir", "nih", "tbx11k")
DISPLAY = {"deeplesion": "DeepLesion", "kidneystone": "KidneyStone", "kvasir": "KVASIR", "nih": "NIH",
           "tbx11k": "TBX11K"}
ABLATION_ROWS = (("full", "UMed-LVLM (full AAR)"), ("wo_vrr", "w/o VRR"), ("wo_alr", "w/o ALR"),
                 ("rel_only", "w/o ALR and VRR"), ("wo_aar", "w/o AAR (SFT only)"))
GROUP_KEYS = {"source": "per_source", "modality": "per_modality", "label": "per_label", "category": "per_label"}
METRIC_NAMES = {"accuracy": "diagnosis accuracy", "mean_iou": "mean IoU", "acc_iou50": "accuracy at IoU>=0.5",
                "format_ok": "format validity"}


def display_name(source: str) -> str:
    """"nih" -> "NIH", "synth-nih" -> "Synth NIH"; unknown names unchanged."""
    if source.startswith("synth-"):
        return "Synth " + DISPLAY.get(source[6:], source[6:])
    return DISPLAY.get(source, source)


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)  # first cell = row name, then floats or None

    def to_dict(self) -> dict:
        return {"title": self.title, "header": self.header, "rows": self.rows}


class EvalFileError(UserError):
    """An eval.json that cannot be read or parsed (the message names the file)."""


def load_eval(path) -> dict:
    """Read an eval.json; a directory is searched for eval.json, then ppo/eval.json, then sft/eval.json."""
    p = Path(path)
    if p.is_dir():
        for cand in ("eval.json", "ppo/eval.json", "all/eval.json", "sft/eval.json"):
            if (p / cand).is_file():
                p = p / cand
                break
        else:
            raise FileNotFoundError(f"no eval.json in {path} (looked for eval.json, ppo/, all/, sft/)")
    elif not p.is_file():
        raise FileNotFoundError(f"{path}: no such eval.json or output directory")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EvalFileError(f"{p}: not UTF-8 text (expected an eval.json)") from None
    except json.JSONDecodeError as e:
        raise EvalFileError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    except OSError as e:
        raise EvalFileError(f"cannot read eval results {p}: {e}") from None
    if not isinstance(data, dict):
        raise EvalFileError(f"{p}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def _column_order(keys: set[str]) -> list[str]:
    def rank(k):
        base = k[6:] if k.startswith("synth-") else k
        return (PAPER_SOURCES.index(base) if base in PAPER_SOURCES else len(PAPER_SOURCES), k)
    return sorted(keys, key=rank)


def results_table(results: Sequence[tuple[str, Mapping]], *, metric: str = "accuracy", group: str = "source",
                  columns: Sequence[str] | None = None, title: str | None = None) -> Table:
    """Rows = (name, eval.json dict) in order; columns = groups (sources by default, paper order) + Avg."""
    gkey = GROUP_KEYS.get(group)
    if gkey is None:
        raise ValueError(f"group must be one of {sorted(GROUP_KEYS)}, got {group!r}")
    if columns is None:
        columns = _column_order({c for _, r in results for c in (r.get(gkey) or {})})
    names = [display_name(c) if group == "source" else c for c in columns]
    t = Table(title or f"{METRIC_NAMES.get(metric, metric)} per {group}", ["Model", *names, "Avg"])
    for name, res in results:
        cells = [((res.get(gkey) or {}).get(c) or {}).get(metric) for c in columns]
        have = [c for c in cells if c is not None]
        t.rows.append([name, *cells, sum(have) / len(have) if have else None])
    return t


def ablation_table(runs: Mapping[str, Mapping], *, metric: str = "accuracy",
                   columns: Sequence[str] | None = None) -> Table:
    """Table 6: runs keyed by "full", "wo_vrr", "wo_alr", "wo_aar" (missing runs are left out)."""
    unknown = set(runs) - {k for k, _ in ABLATION_ROWS}
    if unknown:
        raise ValueError(f"unknown ablation run(s) {sorted(unknown)}; expected {[k for k, _ in ABLATION_ROWS]}")
    rows = [(label, runs[k]) for k, label in ABLATION_ROWS if k in runs]
    return results_table(rows, metric=metric, columns=columns,
                         title=f"Ablation of the abnormal-aware rewards ({METRIC_NAMES.get(metric, metric)})")


def generalization_table(results: Sequence[tuple[str, Mapping]], *, group: str, held_out: Sequence[str],
                         metric: str = "accuracy") -> Table:
    """Tables 7-9: columns = the held-out categories (group="label"), sources ("source") or modalities ("modality")."""
    kind = {"label": "unseen categories", "category": "unseen categories", "source": "held-out sources",
            "modality": "held-out modalities"}.get(group, group)
    return results_table(results, metric=metric, group=group, columns=list(held_out),
                         title=f"Generalization to {kind} ({METRIC_NAMES.get(metric, metric)})")


def _fmt(v, digits: int) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def render_text(t: Table, digits: int = 2) -> str:
    """Aligned plain-text table with the title on top."""
    cells = [t.header] + [[_fmt(c, digits) for c in r] for r in t.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(t.header))]
    lines = [t.title]
    for k, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(t: Table, digits: int = 2) -> str:
    head = "| " + " | ".join(t.header) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|"
    body = ["| " + " | ".join(_fmt(c, digits) for c in r) + " |" for r in t.rows]
    return "\n".join([f"**{t.title}**", "", head, sep, *body])


def render_html(t: Table, digits: int = 2) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{e(_fmt(c, digits))}</td>" for c in r) + "</tr>" for r in t.rows)
    return (f'<table class="results"><caption>{e(t.title)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")
