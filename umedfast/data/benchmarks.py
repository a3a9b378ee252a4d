"""External medical VQA benchmarks from local copies of their official files, as one eval-sample type.

Loaders (every image path is resolved under `root` and must stay inside it):
- VQA-RAD     `VQA_RAD Dataset Public.json` (question, answer, answer_type OPEN/CLOSED, image_name, phrase_type);
              test split = phrase_type test_freeform / test_para, train = the rest. Images found under root by name.
- SLAKE       `{train,validate,test}.json` (img_name, question, answer, answer_type, q_lang); English only by
              default (lang="en"; None keeps every language). Images at root/imgs/<img_name> or by name.
- PMC-VQA     `test_2.csv` (Figure_path, Question, Answer, Choice A..D[, Answer_label]); the correct choice comes
              from Answer_label, else from matching Answer against the choices.
- PneumoniaMNIST `pneumoniamnist.npz` (`{train,val,test}_{images,labels}`, label 1 = pneumonia); pixels stay in
              memory (`BenchSample.pixels`) until `materialize_images` writes PNGs for a model's processor.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from umedfast.data.sources.base import read_json
from umedfast.errors import UserError
from PIL import Image

BENCHMARKS = ("vqa_rad", "slake", "pmc_vqa", "pneumoniamnist")
CHOICE_LETTERS = "ABCD"


@dataclass
class BenchSample:
    """One question of an external benchmark.

    answer_type: "closed" (yes/no or a short closed answer), "open" (free text), "choice" (PMC-VQA: `choices`
    holds the 4 option texts, `label` the index of the correct one) or "binary" (PneumoniaMNIST: `label` 1 = positive).
    image: absolute path (None until `materialize_images` for PneumoniaMNIST, whose `pixels` is uint8 [H, W]).
    query: the prompt given to the model (question plus a short answer instruction).
    """

    id: str
    benchmark: str
    image: str | None
    question: str
    answer: str
    answer_type: str
    split: str
    choices: list[str] | None = None
    label: int | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)

    # Fields that let generation code treat a sample like an MAU record (collate_chat reads image/query/source).
    @property
    def query(self) -> str:
        if self.answer_type == "choice":
            opts = "\n".join(f"{CHOICE_LETTERS[i]}: {c}" for i, c in enumerate(self.choices or []))
            return f"{self.question}\n{opts}\nAnswer with the letter of the correct option."
        if self.answer_type in ("closed", "binary") and self.answer.lower() in ("yes", "no"):
            return f"{self.question} Answer yes or no."
        return f"{self.question} Answer briefly."

    @property
    def source(self) -> str:
        return self.benchmark

    @property
    def findings(self) -> list:
        return []

    @property
    def response(self) -> str:
        return self.answer


class BenchmarkFormatError(UserError):
    """A benchmark file does not have the expected structure (the message names the file and entry)."""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


class _ImageIndex:
    """Finds image files under root by relative path, else by file name (recursive), never outside root."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._by_name: dict[str, Path] | None = None

    def find(self, rel: str, *prefixes: str) -> Path | None:
        rel = str(rel).strip()
        for pre in ("", *prefixes):
            cand = (self.root / pre / rel)
            if cand.is_file():
                if not _inside(cand, self.root):
                    raise BenchmarkFormatError(f"image path {rel!r} leaves the dataset root {self.root}")
                return cand.resolve()
        if self._by_name is None:
            self._by_name = {}
            for p in sorted(self.root.rglob("*")):
                # a symlink that points outside the dataset root is never followed
                if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff") \
                        and _inside(p, self.root):
                    self._by_name.setdefault(p.name, p.resolve())
        return self._by_name.get(Path(rel).name)


def _resolve_image(index: _ImageIndex, rel: str, where: str, require_images: bool, *prefixes: str) -> str | None:
    p = index.find(rel, *prefixes)
    if p is None and require_images:
        raise FileNotFoundError(f"{where}: image {rel!r} not found under {index.root}")
    return str(p) if p is not None else None


def _find_file(root: Path, name: str) -> Path:
    root = Path(root)
    if root.is_file():
        return root
    direct = root / name
    if direct.is_file():
        return direct
    hits = sorted(p for p in root.rglob(name) if p.is_file())
    if not hits:
        raise FileNotFoundError(f"{name!r} not found under {root}")
    return hits[0]


def _load_json_list(path: Path) -> list[dict]:
    data = read_json(path, BenchmarkFormatError)
    if not isinstance(data, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    return data


def _need(entry: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise BenchmarkFormatError(f"{where}: missing field(s) {missing}")


def _answer_type(raw: Any, where: str) -> str:
    t = str(raw).strip().upper()
    if t not in ("OPEN", "CLOSED"):
        raise BenchmarkFormatError(f"{where}: answer_type {raw!r} is neither OPEN nor CLOSED")
    return t.lower()


def load_vqa_rad(root, *, split: str = "test", require_images: bool = True) -> list[BenchSample]:
    """VQA-RAD from `root` (folder holding `VQA_RAD Dataset Public.json` and the image folder, or the JSON itself).

    split: "test" (phrase_type test_freeform/test_para), "train" (every other phrase type) or "all".
    """
    if split not in ("test", "train", "all"):
        raise ValueError(f"VQA-RAD split must be test, train or all, got {split!r}")
    path = _find_file(Path(root), "VQA_RAD Dataset Public.json")
    base = Path(root) if Path(root).is_dir() else path.parent
    index = _ImageIndex(base)
    out = []
    for i, e in enumerate(_load_json_list(path)):
        where = f"{path.name} entry {i}"
        _need(e, ("question", "answer", "answer_type", "image_name"), where)
        phrase = str(e.get("phrase_type", ""))
        is_test = phrase.startswith("test")
        if (split == "test" and not is_test) or (split == "train" and is_test):
            continue
        out.append(BenchSample(
            id=f"vqa_rad-{e.get('qid', i)}", benchmark="vqa_rad",
            image=_resolve_image(index, e["image_name"], where, require_images, "VQA_RAD Image Folder"),
            question=str(e["question"]).strip(), answer=str(e["answer"]).strip(),
            answer_type=_answer_type(e["answer_type"], where), split="test" if is_test else "train",
            meta={"phrase_type": phrase, "question_type": e.get("question_type"), "organ": e.get("image_organ")}))
    return out


def load_slake(root, *, split: str = "test", lang: str | None = "en", require_images: bool = True) -> list[BenchSample]:
    """SLAKE from `root` (folder with {train,validate,test}.json and imgs/). split: train, validate (or val), test."""
    split = {"val": "validate", "valid": "validate"}.get(split, split)
    if split not in ("train", "validate", "test"):
        raise ValueError(f"SLAKE split must be train, validate or test, got {split!r}")
    path = _find_file(Path(root), f"{split}.json")
    index = _ImageIndex(path.parent if Path(root).is_file() else Path(root))
    out = []
    for i, e in enumerate(_load_json_list(path)):
        where = f"{path.name} entry {i}"
        _need(e, ("img_name", "question", "answer", "answer_type", "q_lang"), where)
        if lang is not None and str(e["q_lang"]).strip().lower() != lang:
            continue
        out.append(BenchSample(
            id=f"slake-{split}-{e.get('qid', i)}", benchmark="slake",
            image=_resolve_image(index, e["img_name"], where, require_images, "imgs"),
            question=str(e["question"]).strip(), answer=str(e["answer"]).strip(),
            answer_type=_answer_type(e["answer_type"], where), split=split,
            meta={k: e.get(k) for k in ("q_lang", "modality", "location", "content_type")}))
    return out


_CHOICE_PREFIX = re.compile(r"^\s*\(?([A-D])\s*[:.)]\s*")


def _strip_choice(text: str) -> str:
    return _CHOICE_PREFIX.sub("", str(text)).strip()


def load_pmc_vqa(root, *, file: str = "test_2.csv", require_images: bool = True) -> list[BenchSample]:
    """PMC-VQA multiple choice from `root` (folder with `test_2.csv` and the figures, or the CSV itself)."""
    path = _find_file(Path(root), file)
    base = Path(root) if Path(root).is_dir() else path.parent
    index = _ImageIndex(base)
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        need = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D"]
        missing = [c for c in need if c not in cols]
        if missing:
            raise BenchmarkFormatError(f"{path}: missing column(s) {missing}; found {cols}")
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "") for k, v in row.items() if k is not None}
            where = f"{path.name} line {line}"
            choices = [_strip_choice(row[f"Choice {c}"]) for c in CHOICE_LETTERS]
            label = None
            lab = row.get("Answer_label", "").strip().upper()
            if lab in tuple(CHOICE_LETTERS):
                label = CHOICE_LETTERS.index(lab)
            else:
                ans = _strip_choice(row["Answer"]).lower()
                hits = [i for i, c in enumerate(choices) if c.lower() == ans]
                if len(hits) != 1:
                    raise BenchmarkFormatError(f"{where}: cannot tell which choice is the answer {row['Answer']!r}")
                label = hits[0]
            out.append(BenchSample(
                id=f"pmc_vqa-{line - 1}", benchmark="pmc_vqa",
                image=_resolve_image(index, row["Figure_path"], where, require_images, "images", "figures"),
                question=row["Question"].strip(), answer=choices[label], answer_type="choice", split="test",
                choices=choices, label=label, meta={"figure": row["Figure_path"]}))
    return out


PNEUMONIA_QUESTION = "Does this chest X-ray show pneumonia?"


def load_pneumoniamnist(root, *, split: str = "test") -> list[BenchSample]:
    """PneumoniaMNIST (`pneumoniamnist.npz`, MedMNIST v2): `{split}_images` uint8 [N, H, W], `{split}_labels` [N, 1]."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"PneumoniaMNIST split must be train, val or test, got {split!r}")
    path = _find_file(Path(root), "pneumoniamnist.npz")
    with np.load(path, allow_pickle=False) as z:
        for k in (f"{split}_images", f"{split}_labels"):
            if k not in z.files:
                raise BenchmarkFormatError(f"{path}: missing array {k!r}; found {sorted(z.files)}")
        images, labels = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1)
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise BenchmarkFormatError(f"{path}: {split}_images shape {images.shape} does not match labels {labels.shape}")
    bad = set(np.unique(labels).tolist()) - {0, 1}
    if bad:
        raise BenchmarkFormatError(f"{path}: labels must be 0/1, found {sorted(bad)}")
    return [BenchSample(id=f"pneumoniamnist-{split}-{i}", benchmark="pneumoniamnist", image=None,
                        question=PNEUMONIA_QUESTION, answer="yes" if int(y) else "no", answer_type="binary",
                        split=split, label=int(y), pixels=np.asarray(img, dtype=np.uint8))
            for i, (img, y) in enumerate(zip(images, labels))]


def materialize_images(samples: Sequence[BenchSample], out_dir) -> None:
    """Write in-memory pixels (PneumoniaMNIST) as PNG files under out_dir and set `image` to their paths."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in samples:
        if s.image is None and s.pixels is not None:
            p = out_dir / f"{s.id}.png"
            Image.fromarray(s.pixels).convert("RGB").save(p)
            s.image = str(p.resolve())


def load_benchmark(name: str, root, **kw) -> list[BenchSample]:
    """Dispatch by name: one of BENCHMARKS."""
    loaders = {"vqa_rad": load_vqa_rad, "slake": load_slake, "pmc_vqa": load_pmc_vqa,
               "pneumoniamnist": load_pneumoniamnist}
    if name not in loaders:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {list(loaders)}")
    return loaders[name](root, **kw)
