"""Shared pieces of the source adapters: errors that name file and line, bad-entry handling, image lookup
confined to the dataset root, image headers, box checks."""
from __future__ import annotations

import functools
import io
import json
import math
import os
from pathlib import Path

from PIL import Image

from umedfast.errors import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class SourceFormatError(UserError):
    """A dataset file does not match the expected layout; the message names file and line/entry."""


class FindingList(list):
    """A list of Finding; ``skipped`` holds one message per bad entry skipped under ``skip_bad=True``."""

    def __init__(self, *a):
        super().__init__(*a)
        self.skipped: list[str] = []


class Collector:
    """Collects findings; ``with col.entry("file:line"):`` turns any error in the block into a SourceFormatError
    prefixed with that location, raised (default) or counted and skipped (``skip_bad=True``)."""

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.items = FindingList()

    def add(self, finding) -> None:
        self.items.append(finding)

    def entry(self, where: str):
        return _Entry(self, where)

    def bad(self, msg: str) -> None:
        if not self.skip_bad:
            raise SourceFormatError(msg)
        self.items.skipped.append(msg)


class _Entry:
    def __init__(self, col: Collector, where: str):
        self.col, self.where = col, where

    def __enter__(self):
        return self

    def __exit__(self, et, e, tb):
        if e is None or not isinstance(e, (ValueError, KeyError, IndexError, TypeError, AttributeError, OSError)):
            return False
        text = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        msg = text if isinstance(e, SourceFormatError) and text.startswith(self.where) else f"{self.where}: {text}"
        self.col.bad(msg)  # raises unless skip_bad
        return True


def inside(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root``."""
    try:
        Path(os.path.realpath(path)).relative_to(Path(os.path.realpath(root)))
        return True
    except ValueError:
        return False


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel`` that must stay inside ``root`` (no absolute paths, no "..", no escaping symlinks)."""
    p = Path(os.path.normpath(Path(root) / rel))
    if Path(rel).is_absolute() or not inside(p, root):
        raise SourceFormatError(f"path {rel!r} leaves the dataset root {root}")
    return p


class ImageIndex:
    """Image files under ``root`` (recursive, symlinks escaping the root ignored), looked up by file name."""

    def __init__(self, root: Path, under: str | None = None):
        self.root = Path(root)
        base = self.root / under if under else self.root
        self.by_name: dict[str, list[Path]] = {}
        if base.is_dir():
            for dirpath, _dirs, files in os.walk(base):
                for f in files:
                    if Path(f).suffix.lower() in IMAGE_EXTS:
                        p = Path(dirpath) / f
                        if inside(p, self.root):
                            self.by_name.setdefault(f, []).append(p)

    def find(self, name: str, parent: str | None = None) -> Path:
        """The unique image called ``name`` (inside a folder called ``parent`` when given)."""
        cands = self.by_name.get(name, [])
        if parent is not None:
            cands = [p for p in cands if p.parent.name == parent]
        if not cands:
            where = f"{parent}/{name}" if parent else name
            raise SourceFormatError(f"image {where} not found under {self.root}")
        if len(cands) > 1:
            raise SourceFormatError(f"image name {name} is ambiguous under {self.root}: {[str(c) for c in cands[:3]]}")
        return cands[0]

    def find_stem(self, stem: str) -> Path:
        for ext in (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".bmp", ".tif"):
            if stem + ext in self.by_name:
                return self.find(stem + ext)
        raise SourceFormatError(f"image {stem}.* not found under {self.root}")


@functools.lru_cache(maxsize=4096)
def _decoded_size(path: str, mtime_ns: int, size: int) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()  # decode every pixel: a truncated or corrupt file fails here, not in the middle of training
        return int(im.size[0]), int(im.size[1])


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image that decodes completely (the whole file is decoded, not only its header, so a truncated
    download is caught at build time); unreadable files raise SourceFormatError naming the file."""
    try:
        st = os.stat(path)
        return _decoded_size(str(path), st.st_mtime_ns, st.st_size)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise SourceFormatError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def read_text(path: Path, what: str = "file") -> str:
    """The text of a UTF-8 file (a BOM is fine); other encodings raise SourceFormatError naming ``file:line``."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SourceFormatError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                                f"{col}); save it as UTF-8") from None


def csv_text(path: Path):
    """A text stream over a UTF-8 CSV for ``csv.reader`` (non-UTF-8 bytes: SourceFormatError at ``file:line``)."""
    return io.StringIO(read_text(path, "CSV"), newline="")


def need(entry, keys, what: str) -> dict:
    """``entry`` as a dict holding ``keys``; else SourceFormatError saying what is wrong with it."""
    if not isinstance(entry, dict):
        raise SourceFormatError(f"{what} must be an object, got {type(entry).__name__} {str(entry)[:40]!r}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise SourceFormatError(f"{what} has no {', '.join(repr(k) for k in missing)}")
    return entry


def parse_floats(text: str, n: int, what: str) -> list[float]:
    """``n`` comma-separated numbers from a CSV cell like "1.5, 2, 3, 4"."""
    parts = [t for t in str(text).replace(";", ",").split(",") if t.strip()]
    if len(parts) != n:
        raise SourceFormatError(f"{what} must have {n} numbers, got {text!r}")
    try:
        return [float(t) for t in parts]
    except ValueError:
        raise SourceFormatError(f"{what} is not numeric: {text!r}") from None


def check_box(box, size: tuple[int, int], tol: float = 1.0) -> tuple[float, float, float, float]:
    """Validate a pixel xyxy box against an image (W, H): finite, positive area, inside (``tol`` px slack, clamped)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = size
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise SourceFormatError(f"box {box} has non-finite coordinates")
    if x2 <= x1 or y2 <= y1:
        raise SourceFormatError(f"box {box} has no area (need x2 > x1 and y2 > y1)")
    if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
        raise SourceFormatError(f"box {[round(v, 2) for v in (x1, y1, x2, y2)]} lies outside the {w}x{h} image")
    return (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SourceFormatError(f"{what} not found: {path}")
    return path


def read_json(path: Path, error: type[ValueError] = SourceFormatError):
    """Parsed JSON of ``path``; a syntax error raises ``error`` naming the file and line (never a bare traceback)."""
    try:
        return json.loads(read_text(path, "JSON"))
    except SourceFormatError as e:
        raise error(str(e)) from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
