"""Training metrics: JSONL file + TensorBoard events + tqdm postfix + a summary; non-finite values are guarded.

``NonFiniteGuard`` replaces a NaN/inf loss or reward by a safe value (skip the step / 0 reward), counts it, and the
count goes to the summary: a run never silently trains on NaN.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from umedfast.train.training_state import latest_checkpoint


class MetricsLogger:
    """Write one JSON object per logged step to ``<dir>/metrics.jsonl`` and scalars to TensorBoard (main rank)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 keep_through: int | None | str = "auto"):
        """``keep_through``: on resume, the restored checkpoint's step; rows with a larger step (logged by a killed
        run after its last checkpoint, and about to be logged again) are removed first, so each step appears once.
        ``"auto"`` (default): the step of the newest complete checkpoint under ``out_dir/checkpoints`` (0 if none),
        which is what a resuming loop restores; a fresh run never meets old rows (the CLI refuses a used stage
        directory without ``--resume``). ``None`` keeps every row."""
        if keep_through == "auto":

            ckpt = latest_checkpoint(out_dir)
            keep_through = int(ckpt.name.split("-")[-1]) if ckpt is not None else 0
        self.dir = Path(out_dir)
        self.enabled = enabled
        self._tb = None
        self.history: list[dict] = []
        self.t0 = time.time()
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            if keep_through is not None:
                truncate_metrics(self.dir / "metrics.jsonl", keep_through)
            self._f = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
            if tensorboard:
                try:
                    # lazy: tensorboard (~2 s after torch) only on the rank that writes, when enabled
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.dir / "tb"))
                except Exception:  # noqa: BLE001 - TensorBoard is optional at runtime
                    self._tb = None

    def log(self, step: int, values: dict) -> None:
        row = {"step": int(step), "time_s": round(time.time() - self.t0, 3)}
        row.update({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in values.items()})
        self.history.append(row)
        if not self.enabled:
            return
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and math.isfinite(v) and k not in ("step",):
                    self._tb.add_scalar(k, v, step)

    def summary(self, extra: dict | None = None) -> dict:
        """Mean of every numeric metric over the last quarter of the run, plus ``extra``; written to summary.json."""
        out: dict = {"logged_steps": len(self.history), "wall_s": round(time.time() - self.t0, 2)}
        if self.history:
            tail = self.history[-max(1, len(self.history) // 4):]
            keys = {k for r in tail for k, v in r.items() if isinstance(v, float)} - {"time_s"}
            for k in sorted(keys):
                vals = [r[k] for r in tail if isinstance(r.get(k), float) and math.isfinite(r[k])]
                if vals:
                    out[f"{k}_last_quarter"] = sum(vals) / len(vals)
        out.update(extra or {})
        if self.enabled:
            (self.dir / "summary.json").write_text(json.dumps(out, indent=2))
        return out

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self._tb is not None:
                self._tb.close()


def truncate_metrics(path: str | Path, keep_through: int) -> int:
    """Drop the rows of a metrics JSONL whose ``step`` is above ``keep_through`` (atomically); returns how many.

    A torn last line (the process was killed mid-write) is dropped too."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and int(row.get("step", 0)) <= keep_through
        except (ValueError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class NonFiniteGuard:
    """Counts non-finite losses/rewards. ``ok(x)`` is False for NaN/inf (the caller then skips the update)."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def ok(self, name: str, x) -> bool:
        v = float(x.detach()) if hasattr(x, "detach") else float(x)
        if math.isfinite(v):
            return True
        self.counts[name] = self.counts.get(name, 0) + 1
        return False

    def add(self, name: str, n: int) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + int(n)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
