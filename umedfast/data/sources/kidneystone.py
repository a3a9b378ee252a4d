"""KidneyStone (Roboflow export): YOLO layout (``data.yaml`` with ``names``; ``{train,valid,test}/images`` and
``labels/*.txt`` lines ``cls cx cy w h`` normalized) or a plain COCO JSON (``*.json`` / ``_annotations.coco.json``).
Class names meaning "stone" (e.g. "stone", "kidney_stone", Turkish "Tas_Var") map to ``kidney stone``; an image
with an empty label file is a normal image."""
from __future__ import annotations

from pathlib import Path

import yaml

from umedfast.boxes import yolo_to_xyxy
from umedfast.data.records import Finding
from umedfast.data.sources.base import Collector, ImageIndex, SourceFormatError, check_box, image_size, read_text
from umedfast.data.sources.coco import load_coco

SPLITS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
SUPERCATEGORY_NAMES = {"kidney-stones", "kidney-stone", "kidney_stones", "stones"}


def _label(name: str) -> str:
    n = str(name).lower().replace("-", "_").replace(" ", "_")
    if "stone" in n or n in {"tas_var", "tas"}:
        return "kidney stone"
    raise SourceFormatError(f"unknown kidney-stone class {name!r} (expected a name meaning 'stone', e.g. Tas_Var)")


def _names(yaml_path: Path) -> list[str]:
    try:
        cfg = yaml.safe_load(read_text(yaml_path, "data.yaml")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise SourceFormatError(f"{yaml_path}{at}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    names = cfg.get("names") if isinstance(cfg, dict) else None
    if isinstance(names, dict):  # newer exports: {0: stone, 1: ...}; the keys must be the indices 0..n-1
        keys = list(names)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys) or sorted(keys) != list(range(len(keys))):
            raise SourceFormatError(f"{yaml_path}: 'names' as a mapping needs the class indices 0..{len(keys) - 1} as "
                                    f"keys, got {keys[:5]}")
        names = [names[k] for k in range(len(keys))]
    if not isinstance(names, list) or not names:
        raise SourceFormatError(f"{yaml_path}: missing 'names' (a list of class names, or {{0: name, ...}})")
    if not all(isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in names):
        raise SourceFormatError(f"{yaml_path}: 'names' must hold class names, got {names[:5]}")
    return [str(n) for n in names]


def load(root: Path, skip_bad: bool = False):
    col = Collector(skip_bad)
    yaml_path = root / "data.yaml"
    if yaml_path.is_file():
        names = _names(yaml_path)
        for sub, split in SPLITS.items():
            img_dir, lab_dir = root / sub / "images", root / sub / "labels"
            if not img_dir.is_dir():
                continue
            index = ImageIndex(root, under=f"{sub}/images")
            for name in sorted(index.by_name):
                img = index.find(name)
                lab = lab_dir / (Path(name).stem + ".txt")
                with col.entry(f"{lab}"):
                    size = image_size(img)
                    if not lab.is_file():
                        raise SourceFormatError(f"label file missing for image {img.name}")
                    lines = read_text(lab, "label file").splitlines()
                    if not any(s.strip() for s in lines):
                        col.add(Finding("kidneystone", str(img), "CT", "normal", None, size, {"split": split}))
                    for ln, text in enumerate(lines, 1):
                        if not text.strip():
                            continue
                        with col.entry(f"{lab}:{ln}"):
                            parts = text.split()
                            if len(parts) != 5:
                                raise SourceFormatError(f"expected 'cls cx cy w h', got {text.strip()!r}")
                            cls = int(parts[0])
                            if not 0 <= cls < len(names):
                                raise SourceFormatError(f"class index {cls} not in data.yaml names {names}")
                            cxcywh = [float(v) for v in parts[1:]]
                            box = check_box(yolo_to_xyxy(cxcywh, size), size)
                            col.add(Finding("kidneystone", str(img), "CT", _label(names[cls]), box, size,
                                            {"split": split, "official_label": names[cls]}))
        return col.items
    jsons = sorted(p for p in root.rglob("*.json") if p.is_file())
    if not jsons:
        raise SourceFormatError(f"KidneyStone: neither data.yaml (YOLO) nor a COCO *.json found in {root}")
    for jp in jsons:
        split = SPLITS.get(jp.parent.name)
        index = ImageIndex(root, under=str(jp.parent.relative_to(root)) if jp.parent != root else None)
        load_coco(jp, index, col, source="kidneystone", modality="CT", label_of=_label_coco, split=split)
    return col.items


def _label_coco(name: str) -> str:
    if str(name).lower() in SUPERCATEGORY_NAMES:
        return "kidney stone"
    return _label(name)
