"""Findings (one box from a source dataset) and MAU records (one instruction sample), with JSONL I/O.

JSONL schema (one ``MAURecord`` per line, see docs/data.md):
``{"id", "image", "source", "modality", "findings": [{"label", "box_xyxy"}], "query", "response", "split",
"image_size": [W, H], "meta": {}}``. ``box_xyxy`` is in pixels of the original image; ``findings == []`` means a
normal image. ``image`` is written relative to the JSONL's folder when the image lies inside it, else absolute.

Path rule (one for the whole package): in memory, ``MAURecord.image`` is an ordinary path, absolute or relative to
the current working directory; on disk, it is relative to the JSONL's folder (or absolute when outside it).
``write_mau`` and ``read_mau`` are the only places that convert, so a JSONL folder can be moved or copied as a whole.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from umedfast.boxes import clip_box01, pixels_to_unit
from umedfast.errors import UserError


class RecordError(UserError):
    """A MAU JSONL line (or record) is malformed; the message starts with ``file:line``."""


@dataclass
class Finding:
    """One abnormality (or one normal image when ``box_xyxy`` is None) read from a source dataset.

    box_xyxy: (x1, y1, x2, y2) in pixels of the original image; image_size: (W, H).
    meta: source extras (e.g. DeepLesion ``window`` = [lo, hi] HU, official ``split``).
    """

    source: str
    image_path: str
    modality: str
    label: str
    box_xyxy: tuple[float, float, float, float] | None
    image_size: tuple[int, int]
    meta: dict = field(default_factory=dict)


@dataclass
class MAURecord:
    """One abnormal-aware instruction sample.

    findings: list of ``{"label": str, "box_xyxy": [x1, y1, x2, y2] pixels}``; empty = normal image.
    image_size: [W, H] of the image file. split: "train" | "val" | "test".
    """

    id: str
    image: str
    source: str
    modality: str
    findings: list[dict]
    query: str
    response: str
    split: str = "train"
    image_size: list[int] = field(default_factory=lambda: [0, 0])
    meta: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [f["label"] for f in self.findings]

    @property
    def is_normal(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return asdict(self)


_FIELDS = {"id", "image", "source", "modality", "findings", "query", "response", "split", "image_size", "meta"}
_REQUIRED = {"id", "image", "source", "modality", "findings", "query", "response"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record_from_dict(d: dict, *, where: str = "record") -> MAURecord:
    """Validate one JSON object into an MAURecord; errors (``RecordError``) name ``where`` (file:line).

    Checks: required fields present, no unknown field, ``findings`` a list of ``{"label", "box_xyxy"}`` with 4 finite
    numbers and x1 < x2, y1 < y2; ``image_size`` two non-negative integers; ``meta`` an object."""
    if not isinstance(d, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
    missing = _REQUIRED - d.keys()
    if missing:
        raise RecordError(f"{where}: missing field(s) {sorted(missing)}")
    unknown = d.keys() - _FIELDS
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {sorted(unknown)}")
    if not isinstance(d["image"], str) or not d["image"].strip():
        raise RecordError(f"{where}: 'image' must be a non-empty path string, got {d['image']!r}")
    findings = d["findings"]
    if not isinstance(findings, list):
        raise RecordError(f"{where}: 'findings' must be a list")
    clean = []
    for j, f in enumerate(findings):
        if not isinstance(f, dict) or "label" not in f or "box_xyxy" not in f:
            raise RecordError(f"{where}: findings[{j}] needs 'label' and 'box_xyxy'")
        box = f["box_xyxy"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise RecordError(f"{where}: findings[{j}].box_xyxy must be 4 numbers, got {box!r}")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise RecordError(f"{where}: findings[{j}].box_xyxy {box!r} has non-finite coordinates")
        if not (x1 < x2 and y1 < y2):
            raise RecordError(f"{where}: findings[{j}].box_xyxy {box!r} is not ordered [x1, y1, x2, y2] with "
                              "x1 < x2 and y1 < y2")
        clean.append({"label": str(f["label"]), "box_xyxy": [x1, y1, x2, y2]})
    size = d.get("image_size", [0, 0])
    if not (isinstance(size, list) and len(size) == 2 and all(_is_number(v) and float(v).is_integer() and v >= 0
                                                               for v in size)):
        raise RecordError(f"{where}: image_size must be [W, H] (two non-negative integers), got {size!r}")
    meta = d.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
    return MAURecord(id=str(d["id"]), image=d["image"], source=str(d["source"]), modality=str(d["modality"]),
                     findings=clean, query=str(d["query"]), response=str(d["response"]),
                     split=str(d.get("split", "train")), image_size=[int(size[0]), int(size[1])],
                     meta=dict(meta))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def write_mau(records: Iterable[MAURecord], path) -> Path:
    """Write records as JSONL (atomic replace). Images inside the file's folder are stored relative to it."""
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            d = r.to_dict()
            img_abs = Path(os.path.abspath(r.image))  # in memory: absolute, or relative to the working directory
            d["image"] = img_abs.relative_to(root).as_posix() if _inside(img_abs, root) else str(img_abs)
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def iter_jsonl(path, what: str = "JSONL"):
    """Yield ``(where, obj)`` for each non-blank line of a JSON Lines file, ``where`` = ``file:line``.

    Every problem is a ``RecordError`` naming ``file:line``: a missing file, bytes that are not UTF-8 (a binary
    file), a line that is not JSON or not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, 1):
            where = f"{path}:{i}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError(f"{where}: not UTF-8 text (is this a {what} file?)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from None
            except RecursionError:
                raise RecordError(f"{where}: invalid JSON (nested too deeply)") from None
            if not isinstance(obj, dict):
                raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def read_mau(path) -> list[MAURecord]:
    """Read a JSONL written by ``write_mau``; ``image`` comes back absolute.

    Relative image paths are taken relative to the JSONL's folder and must stay inside it ("../x.png" is an error
    naming file and line). Every error is a ``RecordError`` naming ``file:line``: a missing file, a line that is not
    UTF-8 text (a binary file) or not JSON, an invalid record.
    """
    path = Path(path)
    root = Path(os.path.abspath(path.parent))
    out = []
    for where, d in iter_jsonl(path, "MAU JSONL"):
        r = record_from_dict(d, where=where)
        img = Path(r.image)
        if not img.is_absolute():
            img = Path(os.path.normpath(root / img))
            if not _inside(img, root):
                raise RecordError(f"{where}: image path {r.image!r} leaves the JSONL folder {root}")
        r.image = str(img)
        out.append(r)
    return out


def missing_images(records: Iterable[MAURecord]) -> list[MAURecord]:
    """The records whose image file does not exist (checked before training or evaluation starts)."""
    return [r for r in records if not os.path.isfile(r.image)]


def check_images(records: list[MAURecord], path, hint: str = "") -> None:
    """``UserError`` naming the first few records whose image file is missing (none missing: returns); ``hint``
    (e.g. how to regenerate the set) ends the message."""
    lost = missing_images(records)
    if lost:
        names = ", ".join(f"{r.id} ({r.image})" for r in lost[:3])
        raise RecordError(f"{len(lost)} of {len(records)} records in {path} point to missing image files, e.g. "
                          f"{names}" + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
                          + (f"; {hint}" if hint else ""))


def read_mau_checked(path) -> list[MAURecord]:
    """``read_mau`` for training and evaluation: also refuses an empty file and records whose images are missing."""
    records = read_mau(path)
    if not records:
        raise RecordError(f"{path} holds no records (an empty file); build one with umedfast-data build or synth")
    check_images(records, path)
    return records


def record_targets(record: MAURecord) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(label, box xyxy in [0, 1]) for each finding; [] for a normal image."""
    size = tuple(record.image_size)
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"record {record.id}: image_size {record.image_size} is not set")
    return [(f["label"], clip_box01(pixels_to_unit(f["box_xyxy"], size))) for f in record.findings]


def window_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map values in [lo, hi] linearly to 0..255 (clipped). arr: any shape -> uint8 same shape."""
    if hi <= lo:
        raise ValueError(f"window [{lo}, {hi}] is empty")
    x = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(x, 0, 255).astype(np.uint8)


def load_image(record_or_path, *, meta: dict | None = None) -> Image.Image:
    """Open an image as 8-bit RGB.

    16-bit images (DeepLesion PNGs, HU = value - ``meta["hu_offset"]``, default 32768) are windowed with
    ``meta["window"] = [lo, hi]`` in HU, or min-max scaled when no window is given.
    """
    if isinstance(record_or_path, MAURecord):
        path, meta = record_or_path.image, record_or_path.meta if meta is None else meta
    else:
        path = str(record_or_path)
    meta = meta or {}
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)
            if "window" in meta:
                lo, hi = meta["window"]
                arr8 = window_to_uint8(arr - float(meta.get("hu_offset", 32768)), float(lo), float(hi))
            else:
                lo, hi = float(arr.min()), float(arr.max())
                arr8 = window_to_uint8(arr, lo, hi if hi > lo else lo + 1)
            return Image.fromarray(arr8, "L").convert("RGB")
        return im.convert("RGB")
