"""COCO detection JSON (images / annotations with xywh bbox / categories), shared by TBX11K and KidneyStone."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from umedfast.boxes import xywh_to_xyxy
from umedfast.data.records import Finding
from umedfast.data.sources.base import Collector, ImageIndex, SourceFormatError, check_box, image_size, need, read_json


def load_coco(json_path: Path, index: ImageIndex, col: Collector, *, source: str, modality: str,
              label_of: Callable[[str], str], split: str | None = None, normals: bool = True) -> None:
    """Add the findings of one COCO file to ``col``; images without annotations become normal findings."""
    data = read_json(json_path)
    if not isinstance(data, dict):
        raise SourceFormatError(f"{json_path}: expected a COCO detection object {{images, annotations, categories}}, "
                                f"got a JSON {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SourceFormatError(f"{json_path}: missing list '{key}' (not a COCO detection file)")
    cats = {}
    for i, c in enumerate(data["categories"]):
        with col.entry(f"{json_path}: categories[{i}]"):
            need(c, ("id", "name"), "a category")
            cats[c["id"]] = c["name"]
    images = {}
    for i, im in enumerate(data["images"]):
        with col.entry(f"{json_path}: images[{i}]"):
            need(im, ("id", "file_name"), "an image entry")
            if not isinstance(im["file_name"], str):
                raise SourceFormatError(f"file_name must be a string, got {im['file_name']!r}")
            path = index.find(Path(im["file_name"]).name)
            images[im["id"]] = (path, image_size(path))
    annotated = set()
    for i, a in enumerate(data["annotations"]):
        aid = a.get("id") if isinstance(a, dict) else None
        with col.entry(f"{json_path}: annotations[{i}] (id={aid})"):
            need(a, ("image_id", "category_id", "bbox"), "an annotation")
            if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a["bbox"])):
                raise SourceFormatError(f"bbox must be 4 numbers [x, y, w, h], got {a['bbox']!r}")
            if a["image_id"] not in images:
                raise SourceFormatError(f"image_id {a['image_id']} is not in 'images' (or its image was bad)")
            if a["category_id"] not in cats:
                raise SourceFormatError(f"category_id {a['category_id']} is not in 'categories'")
            label = label_of(cats[a["category_id"]])
            path, size = images[a["image_id"]]
            box = check_box(xywh_to_xyxy(a["bbox"]), size)
            meta = {"official_label": cats[a["category_id"]]}
            if split:
                meta["split"] = split
            col.add(Finding(source, str(path), modality, label, box, size, meta))
            annotated.add(a["image_id"])
    if normals:
        for iid, (path, size) in images.items():
            if iid not in annotated:
                col.add(Finding(source, str(path), modality, "normal", None, size, {"split": split} if split else {}))
