"""The paper's Table 6 over several PPO seeds from ONE SFT checkpoint, with pooled paired intervals against SFT.

Layout under ``--root DIR``: ``DIR/wo_aar`` is the SFT run (trained once); every PPO row ``R`` with seed ``S`` is
``DIR/R/seed<S>`` (``ppo.init_from=DIR/wo_aar/sft/final``, ``seed=S``). A row directory without ``seed*``
subdirectories is read as one run (the older single-seed layout).

Pooled paired comparison (``pooled_deltas``): per test image, the mean over the row's seeds of (PPO - SFT); the
95% interval is a bootstrap over images of that per-image mean. Seeds share the images and the SFT answers, so
this is the paired analogue of averaging the seeds, and its interval accounts for image sampling (not for the
spread of seeds beyond the ones run: with 3 seeds, read the per-seed deltas too).
"""
from __future__ import annotations

from pathlib import Path

import torch

from umedfast.eval.paired import PairedDelta, _bootstrap, mcnemar_exact, paired_deltas, read_predictions

# row key -> (label, umedfast-train flags); the order of the paper's Table 6 (SFT first, full AAR last)
ROWS = {
    "wo_aar": ("SFT (w/o AAR)", ["--stage", "sft"]),
    "rel_only": ("PPO, relevance only", ["--stage", "ppo", "--no-alr", "--no-vrr"]),
    "wo_vrr": ("PPO, relevance + ALR (w/o VRR)", ["--stage", "ppo", "--no-vrr"]),
    "wo_alr": ("PPO, relevance + VRR (w/o ALR)", ["--stage", "ppo", "--no-alr"]),
    "full": ("PPO, full AAR", ["--stage", "ppo"]),
}
PPO_ROWS = tuple(k for k in ROWS if k != "wo_aar")


def run_dir(root, key: str, seed: int | None) -> Path:
    """Output directory of one run: ``root/wo_aar`` for SFT, ``root/<key>/seed<S>`` for a PPO row."""
    root = Path(root)
    return root / key if key == "wo_aar" or seed is None else root / key / f"seed{seed}"


def seed_dirs(root, key: str) -> list[Path]:
    """The evaluated runs of a row: ``root/key/seed*`` directories, else ``root/key`` itself (one run)."""
    base = Path(root) / key
    seeds = sorted((p for p in base.glob("seed*") if p.is_dir()), key=lambda p: p.name)
    return seeds or ([base] if base.is_dir() else [])


def predictions_file(run: Path) -> Path:
    """``eval.predictions.jsonl`` of a run directory (``ppo/`` or ``sft/`` inside it, or the directory itself)."""
    for cand in ("ppo/eval.predictions.jsonl", "sft/eval.predictions.jsonl", "eval.predictions.jsonl"):
        if (run / cand).is_file():
            return run / cand
    raise FileNotFoundError(f"no eval.predictions.jsonl in {run} (looked in ppo/, sft/ and the directory)")


def pooled_deltas(base: dict[str, dict], runs: list[dict[str, dict]], *, n_boot: int = 2000,
                  seed: int = 0) -> list[PairedDelta]:
    """Mean over ``runs`` (the seeds of one row) of run - ``base`` per image, with a bootstrap 95% interval over
    images: accuracy (all images; McNemar p on the pooled discordant pairs), mean IoU and acc@IoU0.5 (abnormal
    images). Every run must cover exactly the base's record ids."""
    ids = sorted(base)
    for r in runs:
        if set(r) != set(base):
            raise ValueError("a seed was scored on different records than the SFT run (not a paired comparison)")
    out = []

    def one(metric, keys, get, p_value=False):
        a = torch.tensor([get(base[i]) for i in keys], dtype=torch.float64)
        bs = torch.stack([torch.tensor([get(r[i]) for i in keys], dtype=torch.float64) for r in runs])
        d = (bs - a).mean(0)
        lo, hi = _bootstrap(d, n_boot, seed + len(out))
        p = None
        if p_value:
            diffs = bs - a
            p = mcnemar_exact(int((diffs > 0).sum()), int((diffs < 0).sum()))
        out.append(PairedDelta(metric, float(a.mean()), float(bs.mean()), float(d.mean()), lo, hi, len(keys), p))

    one("accuracy", ids, lambda s: float(s["correct"]), p_value=True)
    abn = [i for i in ids if base[i].get("iou") is not None]
    if abn:
        one("mean_iou", abn, lambda s: float(s["iou"] or 0.0))
        one("acc_iou50", abn, lambda s: float(bool(s["iou50"])))
    return out


def ablation_report(root, rows=ROWS, n_boot: int = 2000) -> tuple[str, dict]:
    """Text table (one line per row: seeds, metrics, pooled deltas vs SFT [95% CI]; then per-seed deltas) and
    a JSON-able dict of the same numbers. Rows without evaluated runs are skipped."""
    sft_runs = seed_dirs(root, "wo_aar")
    if not sft_runs:
        raise FileNotFoundError(f"no SFT run at {Path(root) / 'wo_aar'}")
    base = read_predictions(predictions_file(sft_runs[0]))
    lines = [f"Table 6 (pooled over PPO seeds, paired vs SFT over the same {len(base)} images; 95% bootstrap CI)",
             f"{'row':<34} {'seeds':>5} {'acc':>6} {'mIoU':>6} {'acc@.5':>6}  {'acc - SFT [95% CI]':<26} "
             f"{'mIoU - SFT [95% CI]':<26}"]
    data = {}
    for key in rows:
        label = ROWS[key][0] if key in ROWS else key
        runs = [base] if key == "wo_aar" else []
        names = ["sft"]
        if key != "wo_aar":
            names = []
            for rd in seed_dirs(root, key):
                try:
                    runs.append(read_predictions(predictions_file(rd)))
                    names.append(rd.name)
                except FileNotFoundError:
                    continue
        if not runs:
            continue
        deltas = {x.metric: x for x in pooled_deltas(base, runs, n_boot=n_boot)}
        m = {k: deltas[k].b for k in deltas}
        fmt = lambda x: f"{x.delta:+.3f} [{x.lo:+.3f}, {x.hi:+.3f}]" + ("*" if x.significant else " ")  # noqa
        cells = "" if key == "wo_aar" else f"{fmt(deltas['accuracy']):<26} " + (
            f"{fmt(deltas['mean_iou']):<26}" if "mean_iou" in deltas else "")
        lines.append(f"{label:<34} {len(runs):>5} {m['accuracy']:>6.3f} {m.get('mean_iou', float('nan')):>6.3f} "
                     f"{m.get('acc_iou50', float('nan')):>6.3f}  {cells}")
        per_seed = []
        if key != "wo_aar":
            for name, r in zip(names, runs):
                ds = {x.metric: x for x in paired_deltas(base, r, n_boot=n_boot)}
                per_seed.append({"run": name, **{k: {"value": v.b, "delta": v.delta, "lo": v.lo, "hi": v.hi}
                                                for k, v in ds.items()}})
                lines.append(f"    {name:<30} {'':>5} {ds['accuracy'].b:>6.3f} "
                             f"{ds['mean_iou'].b if 'mean_iou' in ds else float('nan'):>6.3f} "
                             f"{ds['acc_iou50'].b if 'acc_iou50' in ds else float('nan'):>6.3f}  "
                             f"{fmt(ds['accuracy']):<26} " + (f"{fmt(ds['mean_iou']):<26}" if 'mean_iou' in ds else ""))
        data[key] = {"label": label, "seeds": names, "metrics": m,
                     "pooled_vs_sft": {k: {"delta": v.delta, "lo": v.lo, "hi": v.hi, "p": v.p_value}
                                       for k, v in deltas.items()} if key != "wo_aar" else None,
                     "per_seed": per_seed}
    lines.append("* the 95% interval excludes 0")
    return "\n".join(lines), data
