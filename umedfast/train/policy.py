"""The policy a stage trains: built from the config (tiny sizes, dtype, LoRA), its trainable parameters, and
stage 2's starting point and frozen reference."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from umedfast.config import TrainConfig
from umedfast.model import LoraSettings, TinySizes, add_lora, load_vlm
from umedfast.train.runtime import model_dtype


def load_policy(cfg: TrainConfig, device: str, name_or_path: str | None = None, *, lora: bool | None = None):
    """Load the policy bundle (tiny default sizes from the config); LoRA adapters added when ``model.lora``."""
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


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def init_path(cfg: TrainConfig) -> str:
    """The policy stage 2 starts from: ``ppo.init_from``, else the SFT output, else ``model.name``."""
    if cfg.ppo.init_from:
        return cfg.ppo.init_from
    sft_final = Path(cfg.output_dir) / "sft" / "final"
    return str(sft_final) if (sft_final / "config.json").is_file() else cfg.model.name


def build_policy_and_reference(cfg: TrainConfig, device: str):
    """(bundle, reference model or None). LoRA: SFT adapters (if any) are merged, fresh adapters are trained and the
    reference is the model with adapters disabled. Full fine-tune: the reference is a frozen copy."""
    bundle = load_policy(cfg, device, init_path(cfg), lora=False)
    if bundle.has_adapters:  # an SFT checkpoint trained with LoRA: its adapters become part of the reference
        bundle.model = bundle.model.merge_and_unload()
    if cfg.model.lora:
        m = cfg.model
        add_lora(bundle, LoraSettings(r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout))
        return bundle, None
    ref = copy.deepcopy(bundle.model).eval().requires_grad_(False)
    return bundle, ref
