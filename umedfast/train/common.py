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


def setup_threads(cfg: TrainConfig) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)


def load_records(cfg: TrainConfig, d: Dist) -> tuple[list, list]:
    """(train records, held-out records). With no ``data.path``, MAU-Synth is generated once into OUTPUT/data."""
    from umedfast.data import read_mau, splits

    if cfg.data.path:
        path = Path(cfg.data.path)
        if not path.is_file():
            raise FileNotFoundError(f"data.path {str(path)!r} does not exist")
    else:
        from umedfast.data import synth

        out = Path(cfg.output_dir) / "data"
        path = out / synth.JSONL_NAME
        if d.is_main and not path.is_file():
            synth.generate(cfg.data.synth_n, out, seed=cfg.data.synth_seed, image_size=cfg.data.synth_image_size,
                           box_format=cfg.data.box_format, style=cfg.data.style, progress=cfg.progress)
        barrier(d)
    records = read_mau(path)
    gen = cfg.data.generalization or None
    train = splits.select(records, "train", gen)
    held = splits.select(records, cfg.data.eval_split, gen)
    if cfg.data.max_train:
        train = train[:cfg.data.max_train]
    if cfg.data.max_eval:
        held = held[:cfg.data.max_eval]
    if not train:
        raise ValueError(f"no training records in {path}")
    return train, held


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
