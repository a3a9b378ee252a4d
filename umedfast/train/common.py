"""Pieces both stages share: device/seed setup, records, model loading, optimizer and LR schedule."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from umedfast.config import TrainConfig
from umedfast.train.distributed import Dist, barrier

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(cfg: TrainConfig, d: Dist) -> str:
    if cfg.device == "auto":
        return f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device")
        return f"cuda:{d.local_rank}"
    return "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _cpu_times(cpus) -> dict[int, tuple[int, int]] | None:
    """{cpu: (idle ticks, total ticks)} from /proc/stat for the given CPU ids (None where it cannot be read)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    out = {}
    for ln in lines:
        name, *vals = ln.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]
            out[int(name[3:])] = (v[3] + v[4], sum(v))  # idle + iowait, all states
    return out or None


def free_cores(window_s: float = 0.3) -> tuple[int, int, str]:
    """(free cores, usable cores, how it was measured) for ``threads: auto``.

    Usable = the CPUs this process may run on (``os.sched_getaffinity``). Free = the idle share of those CPUs
    over ``window_s`` seconds (/proc/stat), rounded, at least 1; where /proc/stat is unreadable, usable minus
    the 1-minute load average. Under contention fewer OpenMP threads are much faster (a thread that waits on a
    taken core stalls the others at every parallel region), so this errs on the side of fewer threads."""
    import os
    import time

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    usable = len(cpus)
    a = _cpu_times(set(cpus))
    if a is not None:
        time.sleep(window_s)
        b = _cpu_times(set(cpus)) or {}
        idle = sum((b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in a if c in b)
        free = int(idle + 0.5)
        how = f"{idle:.1f} of {usable} usable cores idle over {window_s:.1f} s"
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        free = int(usable - load + 0.5)
        how = f"load average {load:.2f} on {usable} usable cores"
    return max(1, min(usable, free)), usable, how


def setup_threads(cfg: TrainConfig, local_world: int = 1) -> int:
    """Set torch's intra-op threads from ``cfg.threads`` (``auto``, N, or 0 = torch default); returns the count.

    ``auto`` picks the cores free at start, shared among the ``local_world`` processes of this machine, and logs
    the choice (override with ``threads=N``)."""
    import logging

    from umedfast.config import threads_value

    t = threads_value(cfg.threads)
    if t == "auto":
        free, usable, how = free_cores()
        n = max(1, free // max(1, local_world))
        logging.getLogger("umedfast.threads").info(
            "threads auto: %d torch thread(s) (%s%s); set threads=N to choose", n, how,
            f", {local_world} processes" if local_world > 1 else "")
        torch.set_num_threads(n)
    elif t > 0:
        torch.set_num_threads(t)
    return torch.get_num_threads()


def load_records(cfg: TrainConfig, d: Dist) -> tuple[list, list]:
    """(train records, held-out records). With no ``data.path``, MAU-Synth is generated once into OUTPUT/data.

    User mistakes raise ``UserError`` (one line at the CLI): a missing or empty data file, a malformed line
    (file:line), no training records, or records whose image files are missing (checked here, before any model
    is loaded, naming the first few)."""
    from umedfast.data import read_mau, splits
    from umedfast.data.records import missing_images
    from umedfast.errors import MissingPathError, UserError

    if cfg.data.path:
        path = Path(cfg.data.path)
        if not path.is_file():
            raise MissingPathError(f"data.path {str(path)!r} does not exist" if not path.exists()
                                   else f"data.path {str(path)!r} is not a file (give the MAU JSONL)")
    else:
        from umedfast.data import synth

        out = Path(cfg.output_dir) / "data"
        path = out / synth.JSONL_NAME
        if d.is_main and not path.is_file():
            synth.generate(cfg.data.synth_n, out, seed=cfg.data.synth_seed, image_size=cfg.data.synth_image_size,
                           box_format=cfg.data.box_format, style=cfg.data.style, progress=cfg.progress)
        barrier(d)
    records = read_mau(path)
    if not records:
        raise UserError(f"{path} holds no records (an empty file); build one with umedfast-data build/synth")
    gen = cfg.data.generalization or None
    train = splits.select(records, "train", gen)
    held = splits.select(records, cfg.data.eval_split, gen)
    if cfg.data.synth_eval_n and not cfg.data.path and not gen:  # evaluation-only images, never trained on
        held = synth_eval_records(cfg, d)
    if cfg.data.max_train:
        train = train[:cfg.data.max_train]
    if cfg.data.max_eval:
        held = held[:cfg.data.max_eval]
    if not train:
        raise UserError(f"no training records in {path} (split 'train'"
                        + (f", generalization {gen}" if gen else "") + f"; {len(records)} records in the file)")
    lost = missing_images(train + held)
    if lost:
        names = ", ".join(f"{r.id} ({r.image})" for r in lost[:3])
        raise UserError(f"{len(lost)} of {len(train) + len(held)} records in {path} point to missing image files, "
                        f"e.g. {names}" + (f" and {len(lost) - 3} more" if len(lost) > 3 else ""))
    return train, held


def synth_eval_records(cfg: TrainConfig, d: Dist) -> list:
    """``data.synth_eval_n`` MAU-Synth images from another seed (``synth_seed + 1``), all held out, generated once
    into OUTPUT/data_eval: a test set large enough for paired comparisons (~1,000 images) at no training cost."""
    from umedfast.data import read_mau, synth

    out = Path(cfg.output_dir) / "data_eval"
    path = out / synth.JSONL_NAME
    if d.is_main and not path.is_file():
        synth.generate(cfg.data.synth_eval_n, out, seed=cfg.data.synth_seed + 1, image_size=cfg.data.synth_image_size,
                       box_format=cfg.data.box_format, style=cfg.data.style, progress=cfg.progress)
    barrier(d)
    return read_mau(path)


def model_dtype(cfg: TrainConfig, device: str) -> torch.dtype:
    if cfg.model.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be auto or one of {sorted(DTYPES)}")
    return DTYPES[cfg.model.dtype]


def load_policy(cfg: TrainConfig, device: str, name_or_path: str | None = None, *, lora: bool | None = None):
    """Load the policy bundle (tiny default sizes from the config); LoRA adapters added when ``model.lora``."""
    from umedfast.model import LoraSettings, TinySizes, load_vlm

    name = name_or_path or cfg.model.name
    lora = cfg.model.lora if lora is None else lora
    m = cfg.model  # 0 keeps the model package's measured default size
    sizes = {"text_layers": m.tiny_text_layers, "text_hidden": m.tiny_text_hidden}
    tiny = TinySizes(**{k: v for k, v in sizes.items() if v})
    settings = LoraSettings(r=cfg.model.lora_r, alpha=cfg.model.lora_alpha, dropout=cfg.model.lora_dropout) \
        if lora else None
    return load_vlm(name, dtype=model_dtype(cfg, device), device=device, seed=cfg.seed,
                    attn_implementation=cfg.model.attn_implementation,
                    gradient_checkpointing=cfg.model.gradient_checkpointing, lora=settings, tiny=tiny)


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """LambdaLR factor: linear warmup to 1 over ``warmup_ratio * total`` steps, then cosine down to ``min_lr_ratio``."""
    warm = int(round(warmup_ratio * total_steps))

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def autocast(device: str, dtype: torch.dtype):
    """bf16 autocast on GPU for fp32 weights; a no-op context on CPU (CPU autocast is slower than fp32 here)."""
    if device.startswith("cuda") and dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
