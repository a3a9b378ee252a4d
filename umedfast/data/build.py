"""Group source findings into MAU records (one per image) and write their query/response."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from umedfast.data.records import Finding, MAURecord
from umedfast.data.templates import apply_template

_KEEP_META = ("window", "hu_offset")  # needed by load_image (DeepLesion windowing)


def hashed_split(key: str, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic split from a string key (used when a source has no official split)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64
    return "test" if u < test else ("val" if u < test + val else "train")


def findings_to_records(findings: Iterable[Finding]) -> list[MAURecord]:
    """One record per image (first-seen order); findings without a box mark a normal image.

    Record ids are ``<source>-<folder>-<stem>``; split = the source's official split when given, else hashed.
    Query and response are left empty (see ``write_records``).
    """
    by_image: dict[str, MAURecord] = {}
    used: set[str] = set()
    for f in findings:
        rec = by_image.get(f.image_path)
        if rec is None:
            p = Path(f.image_path)
            rid = base = f"{f.source}-{p.parent.name}-{p.stem}"
            k = 1
            while rid in used:  # same folder name and stem elsewhere in the tree
                k += 1
                rid = f"{base}-{k}"
            used.add(rid)
            meta = {k: f.meta[k] for k in _KEEP_META if k in f.meta}
            rec = MAURecord(id=rid, image=f.image_path, source=f.source, modality=f.modality, findings=[], query="",
                            response="", split=f.meta.get("split") or hashed_split(rid),
                            image_size=[int(f.image_size[0]), int(f.image_size[1])], meta=meta)
            by_image[f.image_path] = rec
        if f.box_xyxy is not None:
            rec.findings.append({"label": f.label, "box_xyxy": [float(v) for v in f.box_xyxy]})
    return list(by_image.values())


def write_records(records: list[MAURecord], *, writer: str = "template", fmt: str = "norm1000", style: str = "full",
                  llm_writer=None, progress: bool = True) -> list[MAURecord]:
    """Fill query/response with the template writer, or with ``llm_writer`` (an ``LLMWriter``) when writer="llm"."""
    if writer == "template":
        # lazy: tqdm.auto (~0.5 s) only when a progress bar is shown; `umedfast-data stats` stays light
        from tqdm.auto import tqdm

        for r in tqdm(records, desc="template", unit="rec", disable=not progress):
            apply_template(r, fmt=fmt, style=style)
        return records
    if writer == "llm":
        if llm_writer is None:
            raise ValueError("writer='llm' needs an LLMWriter (see umedfast.data.llm_writer)")
        return llm_writer.write_all(records, progress=progress)
    raise ValueError(f"unknown writer {writer!r}; choose 'template' or 'llm'")
