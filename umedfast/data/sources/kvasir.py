"""Kvasir-SEG: ``kavsir_bboxes.json`` = {stem: {"height", "width", "bbox": [{"xmin","ymin","xmax","ymax"}]}},
images ``images/<stem>.jpg``, every box labeled polyp."""
from __future__ import annotations

from pathlib import Path

from umedfast.data.records import Finding
from umedfast.data.sources.base import (Collector, ImageIndex, SourceFormatError, check_box, image_size, need,
                                        read_json, require_file)


def load(root: Path, skip_bad: bool = False):
    cands = [root / "kavsir_bboxes.json", root / "kvasir_bboxes.json"]
    path = next((p for p in cands if p.is_file()), None)
    if path is None:
        require_file(cands[0], "Kvasir-SEG kavsir_bboxes.json")
    data = read_json(path)
    if not isinstance(data, dict):
        raise SourceFormatError(f"{path}: expected an object {{stem: {{height, width, bbox}}}}")
    index = ImageIndex(root)
    col = Collector(skip_bad)
    for stem, entry in data.items():
        with col.entry(f"{path}: entry {stem!r}"):
            need(entry, ("width", "height", "bbox"), "the entry")
            img = index.find_stem(stem)
            size = image_size(img)
            if (int(entry["width"]), int(entry["height"])) != size:
                raise SourceFormatError(f"width/height {entry['width']}x{entry['height']} differ from the image "
                                        f"{size[0]}x{size[1]}")
            boxes = entry["bbox"]
            if not isinstance(boxes, list) or not boxes:
                raise SourceFormatError("'bbox' must be a non-empty list")
            for j, b in enumerate(boxes):
                with col.entry(f"{path}: entry {stem!r} bbox[{j}]"):
                    need(b, ("xmin", "ymin", "xmax", "ymax"), "a bbox")
                    box = check_box((b["xmin"], b["ymin"], b["xmax"], b["ymax"]), size)
                    col.add(Finding("kvasir", str(img), "endoscopy", "polyp", box, size))
    return col.items
