"""Source adapters: ``load_source(name, root)`` -> list of ``Finding`` (boxes xyxy in original pixels).

Errors name the file and line/entry (``SourceFormatError``); with ``skip_bad=True`` bad entries are skipped and
listed in the returned list's ``.skipped``. Image paths are looked up under ``root`` and never leave it.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from umedfast.data.sources.base import FindingList, SourceFormatError

LOADERS = ("deeplesion", "kidneystone", "nih", "tbx11k", "kvasir")


def load_source(name: str, root, *, skip_bad: bool = False, **kw) -> FindingList:
    """Read dataset ``name`` from the directory ``root``.

    Returns a list of Finding; ``.skipped`` lists the messages of skipped bad entries (``skip_bad=True``).
    Extra keywords go to the adapter (``nih``: ``normals=True`` adds "No Finding" images from Data_Entry_2017*.csv).
    """
    root = Path(os.path.abspath(root))  # findings carry absolute image paths whatever the working directory
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    if name not in LOADERS:
        raise ValueError(f"unknown source {name!r}; choose one of {list(LOADERS)}")

    mod = importlib.import_module(f"umedfast.data.sources.{name}")
    return mod.load(root, skip_bad=skip_bad, **kw)


__all__ = ["load_source", "LOADERS", "SourceFormatError", "FindingList"]
