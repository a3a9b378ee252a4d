"""Is run B better than run A on the same test images? Paired statistics over ``eval.predictions.jsonl``.

Two runs scored on the same records differ by much less than two independent samples would: most images are
answered the same way. So the comparison is paired: per image, B minus A.
- accuracy: the difference of proportions, its paired bootstrap 95% interval, and McNemar's exact two-sided
  p-value on the discordant pairs (images one run gets right and the other wrong);
- mean IoU and acc@IoU0.5 (abnormal images only): the mean difference and its paired bootstrap 95% interval.
A difference whose interval contains 0 is not evidence of a gain (at n = 293, one flipped answer is 0.34 points).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from umedfast.data.records import iter_jsonl
from umedfast.errors import MissingPathError, UserError

if TYPE_CHECKING:
    import torch  # lazy: torch (~11 s, measured) only for the bootstrap; reading and checking the files needs no torch


@dataclass(frozen=True)
class PairedDelta:
    """B - A on one metric: ``delta`` and its bootstrap 95% interval [lo, hi] over ``n`` paired images."""

    metric: str
    a: float
    b: float
    delta: float
    lo: float
    hi: float
    n: int
    p_value: float | None = None  # McNemar exact (accuracy only)

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0


class PredictionsError(UserError):
    """A predictions file cannot be compared (the message names ``file:line``)."""


def read_predictions(path: str | Path) -> dict[str, dict]:
    """``eval.predictions.jsonl`` (or its directory) -> {record id: scored sample}; malformed lines raise a
    ``UserError`` naming ``file:line``."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval.predictions.jsonl"
    if not p.is_file():
        raise MissingPathError(f"no predictions file at {str(p)!r} (umedfast-eval run / umedfast-train write it)")
    out = {}
    for where, s in iter_jsonl(p, "predictions JSONL"):
        if "id" not in s or "correct" not in s:
            raise PredictionsError(f"{where}: a prediction needs 'id' and 'correct' (written by umedfast-eval run)")
        if s.get("iou") is not None and not isinstance(s["iou"], (int, float)):
            raise PredictionsError(f"{where}: 'iou' must be a number or null, got {s['iou']!r}")
        out[str(s["id"])] = s
    if not out:
        raise PredictionsError(f"{p}: no predictions (an empty file)")
    return out


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: under H0 each discordant pair favours A or B with probability 1/2."""
    n = b_only + a_only
    if n == 0:
        return 1.0
    k = min(b_only, a_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _bootstrap(diff: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of ``diff`` Float64[n] over ``n_boot`` paired resamples."""
    import torch  # lazy: torch (~11 s, measured) only for the bootstrap; reading and checking the files needs no torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, diff.numel(), (n_boot, diff.numel()), generator=g)
    means = diff[idx].mean(dim=1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


def paired_deltas(a: dict[str, dict], b: dict[str, dict], *, n_boot: int = 2000, seed: int = 0) -> list[PairedDelta]:
    """Paired B - A for accuracy (all images), mean IoU and acc@IoU0.5 (abnormal images). Both runs must cover the
    same record ids (an evaluation of different images is not a paired comparison)."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise PredictionsError(f"the runs were scored on different records ({len(only)} differ, e.g. {only[:3]})")
    import torch  # here, not at import: reading and checking the files needs no torch

    ids = sorted(a)
    out = []
    acc_a = torch.tensor([float(a[i]["correct"]) for i in ids], dtype=torch.float64)
    acc_b = torch.tensor([float(b[i]["correct"]) for i in ids], dtype=torch.float64)
    d = acc_b - acc_a
    lo, hi = _bootstrap(d, n_boot, seed)
    p = mcnemar_exact(int((d > 0).sum()), int((d < 0).sum()))
    out.append(PairedDelta("accuracy", float(acc_a.mean()), float(acc_b.mean()), float(d.mean()), lo, hi, len(ids), p))
    abn = [i for i in ids if a[i].get("iou") is not None]
    for metric, get in (("mean_iou", lambda s: float(s["iou"])), ("acc_iou50", lambda s: float(bool(s["iou50"])))):
        if not abn:
            continue
        va = torch.tensor([get(a[i]) for i in abn], dtype=torch.float64)
        vb = torch.tensor([get(b[i]) for i in abn], dtype=torch.float64)
        lo, hi = _bootstrap(vb - va, n_boot, seed + 1)
        out.append(PairedDelta(metric, float(va.mean()), float(vb.mean()), float((vb - va).mean()), lo, hi, len(abn)))
    return out


def format_deltas(name_a: str, name_b: str, deltas: list[PairedDelta]) -> str:
    """A small text table: metric, A, B, B - A [95% CI], McNemar p, verdict."""
    rows = [f"{name_b} vs {name_a} (paired over the same images; 95% bootstrap intervals)",
            f"{'metric':<10} {name_a[:12]:>12} {name_b[:12]:>12} {'B - A':>8}  {'95% CI':<18} {'p':>6}  verdict"]
    for x in deltas:
        verdict = ("B better" if x.lo > 0 else "A better") if x.significant else "no detectable difference"
        p = f"{x.p_value:.3f}" if x.p_value is not None else ""
        rows.append(f"{x.metric:<10} {x.a:>12.3f} {x.b:>12.3f} {x.delta:>+8.3f}  [{x.lo:+.3f}, {x.hi:+.3f}]   "
                    f"{p:>6}  {verdict} (n={x.n})")
    return "\n".join(rows)


def deltas_json(deltas: list[PairedDelta]) -> list[dict]:
    return [{**asdict(x), "significant": x.significant} for x in deltas]
