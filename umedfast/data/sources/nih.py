"""NIH ChestX-ray14: ``BBox_List_2017.csv`` (header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``; xywh floats in
pixels of the 1024x1024 images). Optional ``Data_Entry_2017*.csv`` adds normal images ("No Finding") that are
present on disk when ``normals=True``."""
from __future__ import annotations

import csv
from pathlib import Path

from umedfast.boxes import xywh_to_xyxy
from umedfast.data.classes import NIH_LABELS
from umedfast.data.records import Finding
from umedfast.data.sources.base import (Collector, ImageIndex, SourceFormatError, check_box, csv_text, image_size,
                                        require_file)


def load(root: Path, skip_bad: bool = False, normals: bool = False):
    csv_path = require_file(root / "BBox_List_2017.csv", "NIH BBox_List_2017.csv")
    index = ImageIndex(root)
    col = Collector(skip_bad)
    with csv_text(csv_path) as fh:
        rows = csv.reader(fh)
        header = next(rows, [])
        if len(header) < 3 or header[0].strip() != "Image Index" or header[1].strip() != "Finding Label" \
                or not header[2].strip().startswith("Bbox"):
            raise SourceFormatError(f"{csv_path}:1: expected header 'Image Index,Finding Label,Bbox [x,y,w,h],...', "
                                    f"got {','.join(header)[:80]!r}")
        for line, row in enumerate(rows, 2):
            if not any(c.strip() for c in row):
                continue
            with col.entry(f"{csv_path}:{line}"):
                if len(row) < 6:
                    raise SourceFormatError(f"expected 6 columns (name, label, x, y, w, h), got {len(row)}")
                name, raw = row[0].strip(), row[1].strip()
                if raw not in NIH_LABELS:
                    raise SourceFormatError(f"unknown finding label {raw!r}; known: {sorted(NIH_LABELS)}")
                try:
                    xywh = [float(v) for v in row[2:6]]
                except ValueError:
                    raise SourceFormatError(f"bbox {row[2:6]} is not numeric") from None
                path = index.find(name)
                size = image_size(path)
                box = check_box(xywh_to_xyxy(xywh), size)
                col.add(Finding("nih", str(path), "X-ray", NIH_LABELS[raw], box, size, {"official_label": raw}))
    if normals:
        boxed = {Path(f.image_path).name for f in col.items}
        for entry in sorted(root.glob("Data_Entry_2017*.csv")):
            with csv_text(entry) as fh:
                reader = csv.DictReader(fh)
                if "Image Index" not in (reader.fieldnames or []) or "Finding Labels" not in reader.fieldnames:
                    raise SourceFormatError(f"{entry}:1: missing column 'Image Index' or 'Finding Labels'")
                for line, row in enumerate(reader, 2):
                    name = (row["Image Index"] or "").strip()
                    if (row["Finding Labels"] or "").strip() != "No Finding" or name in boxed or name not in index.by_name:
                        continue
                    with col.entry(f"{entry}:{line}"):
                        path = index.find(name)
                        col.add(Finding("nih", str(path), "X-ray", "normal", None, image_size(path)))
    return col.items
