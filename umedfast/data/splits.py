"""Train/val/test selection, plus the paper's generalization splits.

``select(records, split, generalization=None, held_out=None)``:

- ``generalization=None``: records whose ``split`` field equals ``split``.
- ``"category"``: held-out abnormal classes (default ``DEFAULT_HELD_OUT["category"]``). train/val keep their
  records that contain no held-out class; test = every record (any split) containing a held-out class.
- ``"source"``: held-out sources (default one source); train/val drop them; test = all records of those sources.
- ``"modality"``: held-out modalities (default endoscopy); same rule.

The held-out part is never trained on, so test takes it from all three original splits. Sources and classes are
compared with and without the "synth-" prefix, so the same defaults work for real and synthetic data.
"""
from __future__ import annotations

from typing import Iterable, Sequence

SPLITS = ("train", "val", "test")
GENERALIZATIONS = ("category", "source", "modality")
DEFAULT_HELD_OUT = {
    "category": ("mass", "obsolete tuberculosis"),
    "source": ("tbx11k",),
    "modality": ("endoscopy",),
}


def _base_source(s: str) -> str:
    return s[len("synth-"):] if s.startswith("synth-") else s


def is_held_out(record, generalization: str, held_out: Sequence[str]) -> bool:
    """Whether ``record`` belongs to the held-out part of a generalization split."""
    held = {h.lower() for h in held_out}
    if generalization == "category":
        return any(f["label"].lower() in held for f in record.findings)
    if generalization == "source":
        return record.source.lower() in held or _base_source(record.source).lower() in held
    if generalization == "modality":
        return record.modality.lower() in held
    raise ValueError(f"unknown generalization {generalization!r}; choose one of {GENERALIZATIONS} or None")


def select(records: Iterable, split: str, generalization: str | None = None,
           held_out: Sequence[str] | str | None = None) -> list:
    """Records of ``split`` ("train" | "val" | "test") under an optional generalization protocol (see module doc)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    records = list(records)
    if generalization is None:
        return [r for r in records if r.split == split]
    if generalization not in GENERALIZATIONS:
        raise ValueError(f"unknown generalization {generalization!r}; choose one of {GENERALIZATIONS} or None")
    if held_out is None:
        held_out = DEFAULT_HELD_OUT[generalization]
    elif isinstance(held_out, str):
        held_out = [held_out]
    if split == "test":
        return [r for r in records if is_held_out(r, generalization, held_out)]
    return [r for r in records if r.split == split and not is_held_out(r, generalization, held_out)]
