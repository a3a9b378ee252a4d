"""What a model directory must hold, checked without loading it (and without importing torch).

umedfast reads weights from safetensors only: a pickle (``pytorch_model.bin``, ``adapter_model.bin``) can run code
when loaded, so a directory that has nothing else is refused, and a LoRA adapter without
``adapter_model.safetensors`` is never handed to peft. A truncated safetensors file is caught from its header.
The training and evaluation CLIs call :func:`check_model_dir` before any data or model is loaded.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Sequence

from umedfast.errors import MissingPathError, UserError

ADAPTER_DIR = "adapter"  # same as umedfast.model.loading.ADAPTER_DIR (LoRA adapters of a checkpoint, peft layout)


def looks_like_path(name: str) -> bool:
    """True when a model name is meant as a directory (not a built-in name such as ``tiny-llava``)."""
    return os.sep in name or "/" in name or name.startswith((".", "~")) or os.path.exists(name)


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_safetensors(path: str | Path) -> None:
    """Refuse a ``.safetensors`` file that is truncated or not safetensors, without loading it.

    The format is an 8-byte little-endian header length, a JSON header with every tensor's ``data_offsets``,
    then the data: the file must be exactly ``8 + header + max(end offset)`` bytes long."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                problem = f"only {size} bytes"
            else:
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    problem = f"header of {n} bytes in a {size}-byte file"
                else:
                    header = json.loads(f.read(n))
                    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                              default=0)
                    if 8 + n + end != size:
                        problem = f"{size} bytes, the header describes {8 + n + end}"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        problem = f"unreadable header ({type(e).__name__})"
    if problem:
        raise UserError(f"{path} is truncated or not a safetensors file ({problem}); copy or save it again")


def check_model_dir(path: str | Path, what: str = "model", builtin: Sequence[str] = ()) -> Path:
    """Refuse, with one clear line (``UserError``), a model directory umedfast cannot load safely, before any
    weights are read: missing, no ``config.json``, pickle-only weights (``pytorch_model.bin``: umedfast never
    unpickles), shards named by the index but absent, truncated safetensors, no tokenizer, or a LoRA ``adapter/``
    without ``adapter_model.safetensors`` (never handed to peft, which would unpickle ``adapter_model.bin``)."""
    d = Path(path)
    if not d.exists():
        names = f"one of {list(builtin)}" if builtin else "a built-in name such as tiny-llava"
        raise MissingPathError(f"{what} {str(path)!r} does not exist (a local save_pretrained directory, or {names}; "
                               "umedfast never downloads from a hub)")
    if not d.is_dir():
        raise UserError(f"{what} {str(path)!r} is not a directory (give the save_pretrained folder, not a file)")
    if not (d / "config.json").is_file():
        raise MissingPathError(f"{what} {d} has no config.json: not a save_pretrained model directory")
    shards = sorted(d.glob("*.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a valid safetensors index (no weight_map)") from None
        absent = [n for n in names if not (d / n).is_file()]
        if absent:
            raise MissingPathError(f"{what} {d} is missing weight shard(s) {absent[:3]} named by {index.name}")
        shards = [d / n for n in names]
    weights = [p for p in shards if p.name != "value_head.safetensors"]
    if not weights:
        pickles = [n for n in PICKLE_WEIGHTS if (d / n).is_file()] + [p.name for p in d.glob("pytorch_model-*.bin")]
        if pickles:
            raise UserError(f"{what} {d} holds only pickle weights ({pickles[0]}); umedfast loads safetensors only "
                            "(a pickle can run code): re-save it with save_pretrained(..., safe_serialization=True)")
        raise MissingPathError(f"{what} {d} has no model*.safetensors weights")
    for p in shards + ([d / "value_head.safetensors"] if (d / "value_head.safetensors").is_file() else []):
        check_safetensors(p)
    if not any((d / n).is_file() for n in TOKENIZER_FILES):
        raise MissingPathError(f"{what} {d} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}): save the processor "
                        "or tokenizer into the same directory")
    adapter = d / ADAPTER_DIR
    if adapter.is_dir():
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"LoRA adapter folder {adapter} has no adapter_config.json")
        st = adapter / "adapter_model.safetensors"
        if not st.is_file():
            found = "adapter_model.bin (a pickle)" if (adapter / "adapter_model.bin").is_file() else "no weights"
            raise UserError(f"LoRA adapter {adapter} has {found} but no adapter_model.safetensors; umedfast loads "
                            "safetensors only: re-save the adapter with save_pretrained(..., safe_serialization=True)")
        check_safetensors(st)
    return d
