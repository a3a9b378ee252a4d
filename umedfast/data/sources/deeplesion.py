"""DeepLesion: ``DL_info.csv`` + 16-bit PNG key slices (HU = value - 32768).

``File_name`` "000001_01_01_109.png" lives at ``Images_png/000001_01_01/109.png``. ``Bounding_boxes`` is
"x1, y1, x2, y2" in pixels; ``Coarse_lesion_type`` 1..8 (-1 unlabeled); ``DICOM_windows`` "lo, hi" in HU is kept in
``Finding.meta["window"]`` so ``load_image`` windows the slice to 8 bits; ``Train_Val_Test`` 1/2/3 -> meta split.
"""
from __future__ import annotations

import csv
from pathlib import Path

from umedfast.data.classes import DEEPLESION_TYPES
from umedfast.data.records import Finding
from umedfast.data.sources.base import (Collector, ImageIndex, SourceFormatError, check_box, csv_text, image_size,
                                        parse_floats, require_file)

REQUIRED = ("File_name", "Bounding_boxes", "Coarse_lesion_type", "DICOM_windows")
SPLIT = {"1": "train", "2": "val", "3": "test"}


def load(root: Path, skip_bad: bool = False):
    csv_path = require_file(root / "DL_info.csv", "DeepLesion DL_info.csv")
    index = ImageIndex(root)
    col = Collector(skip_bad)
    with csv_text(csv_path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceFormatError(f"{csv_path}:1: missing column(s) {missing}")
        for line, row in enumerate(reader, 2):
            with col.entry(f"{csv_path}:{line}"):
                name = row["File_name"].strip()
                series, _, slice_png = name.rpartition("_")
                if not series or not slice_png.endswith(".png"):
                    raise SourceFormatError(f"File_name {name!r} is not <series>_<slice>.png")
                path = index.find(slice_png, parent=series)
                size = image_size(path)
                box = check_box(parse_floats(row["Bounding_boxes"], 4, "Bounding_boxes"), size)
                try:
                    ctype = int(float(row["Coarse_lesion_type"]))
                except ValueError:
                    raise SourceFormatError(f"Coarse_lesion_type {row['Coarse_lesion_type']!r} is not an integer") \
                        from None
                if ctype not in DEEPLESION_TYPES:
                    raise SourceFormatError(f"unknown Coarse_lesion_type {ctype} (expected 1..8 or -1)")
                lo, hi = parse_floats(row["DICOM_windows"], 2, "DICOM_windows")
                if hi <= lo:
                    raise SourceFormatError(f"DICOM_windows {row['DICOM_windows']!r} is empty")
                meta = {"window": [lo, hi], "hu_offset": 32768, "file_name": name}
                split = SPLIT.get(str(row.get("Train_Val_Test", "")).strip())
                if split:
                    meta["split"] = split
                col.add(Finding("deeplesion", str(path), "CT", DEEPLESION_TYPES[ctype], box, size, meta))
    return col.items
