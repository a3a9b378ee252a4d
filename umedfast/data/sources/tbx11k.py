"""TBX11K: COCO JSON ``annotations/json/TBX11K_{train,val}_only_tb.json`` (bbox xywh pixels; categories
ActiveTuberculosis / ObsoletePulmonaryTuberculosis / PulmonaryTuberculosis), images under ``imgs/``."""
from __future__ import annotations

from pathlib import Path

from umedfast.data.classes import TBX11K_LABELS
from umedfast.data.sources.base import Collector, ImageIndex, SourceFormatError
from umedfast.data.sources.coco import load_coco

FILES = {"train": "TBX11K_train_only_tb.json", "val": "TBX11K_val_only_tb.json"}


def _label(name: str) -> str:
    if name not in TBX11K_LABELS:
        raise SourceFormatError(f"unknown TBX11K category {name!r}; known: {sorted(TBX11K_LABELS)}")
    return TBX11K_LABELS[name]


def load(root: Path, skip_bad: bool = False):
    ann_dir = root / "annotations" / "json"
    found = {s: ann_dir / f for s, f in FILES.items() if (ann_dir / f).is_file()}
    if not found:
        raise SourceFormatError(f"TBX11K: none of {sorted(FILES.values())} found in {ann_dir}")
    index = ImageIndex(root, under="imgs")
    col = Collector(skip_bad)
    for split, path in found.items():
        # the *_only_tb files list TB images only, so every image has a box: no normals from them
        load_coco(path, index, col, source="tbx11k", modality="X-ray", label_of=_label, split=split, normals=False)
    return col.items
