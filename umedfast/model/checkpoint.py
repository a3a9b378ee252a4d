"""Checkpoints as ``save_pretrained`` directories that transformers (and vLLM) load directly.

Layout of ``out_dir``::

    config.json, generation_config.json, model*.safetensors   base weights (LoRA adapters NOT merged)
    tokenizer.json, tokenizer_config.json, processor/preprocessor config, chat template
    adapter/adapter_config.json, adapter/adapter_model.safetensors   LoRA adapters (peft), when present
    value_head.safetensors                                    critic head (metadata: hidden_size), when given
    critic/                                                   separate critic model, when given

Only safetensors and JSON are read back: nothing is unpickled.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from umedfast.errors import UserError
from umedfast.model.loading import ADAPTER_DIR, VLMBundle, default_dtype, load_vlm
from umedfast.model.value import ValueHead
from umedfast.model_files import check_model_dir

VALUE_HEAD_FILE = "value_head.safetensors"


def _base_state_dict(bundle: VLMBundle) -> dict[str, torch.Tensor]:
    """State dict of the base model with peft's wrappers removed (keys as in the unwrapped HF model)."""
    sd = bundle.base_model.state_dict()
    if not bundle.has_adapters:
        return sd
    out = {}
    for k, v in sd.items():
        if "lora_" in k or ".modules_to_save." in k:
            continue  # adapter weights go to adapter/
        out[k.replace(".base_layer.", ".").replace(".original_module.", ".")] = v
    return out


def save_checkpoint(out_dir, bundle: VLMBundle, value_head: ValueHead | None = None, *, critic=None) -> Path:
    """Write ``bundle`` (+ value head, + separate critic model) to ``out_dir``; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = bundle.base_model
    base.save_pretrained(str(out), state_dict=_base_state_dict(bundle))
    bundle.processor.save_pretrained(str(out))
    if bundle.has_adapters:
        bundle.model.save_pretrained(str(out / ADAPTER_DIR))
    if value_head is not None:
        sd = {k: v.detach().float().cpu().contiguous() for k, v in value_head.state_dict().items()}
        save_file(sd, str(out / VALUE_HEAD_FILE), metadata={"hidden_size": str(value_head.hidden_size)})
    if critic is not None:
        critic.save_pretrained(str(out / "critic"))
    return out


def load_value_head(path, device="cpu") -> ValueHead:

    with safe_open(str(path), framework="pt") as f:
        hidden = int(f.metadata()["hidden_size"])
    head = ValueHead(hidden)
    head.load_state_dict(load_file(str(path)))
    return head.to(device)


def load_checkpoint(ckpt_dir, *, device: str = "cpu", dtype: torch.dtype | None = None,
                    attn_implementation: str = "sdpa") -> tuple[VLMBundle, ValueHead | None]:
    """Inverse of :func:`save_checkpoint`: (bundle with adapters re-attached, value head or None).

    A separate critic, if saved, is at ``ckpt_dir/critic`` (load it with ``load_vlm(ckpt_dir/'critic').model``).
    """
    d = check_model_dir(ckpt_dir, "checkpoint")  # missing files, pickles, truncated safetensors: one UserError line
    bundle = load_vlm(str(d), dtype=dtype or default_dtype(device), device=device,
                      attn_implementation=attn_implementation)
    head = load_value_head(d / VALUE_HEAD_FILE, device) if (d / VALUE_HEAD_FILE).is_file() else None
    return bundle, head


def load_model_or_checkpoint(spec: str, device: str = "cpu") -> VLMBundle:
    """The policy of ``spec``: a checkpoint directory (:func:`save_checkpoint` layout) or a built-in tiny name
    (``"tiny-llava"``, ``"tiny-qwen2-vl"``); used by evaluation and reports. Anything else is a ``UserError``."""
    if Path(spec).is_dir():
        return load_checkpoint(spec, device=device)[0]
    if spec.startswith("tiny-"):
        return load_vlm(spec, device=device)
    raise UserError(f"--checkpoint {spec!r}: not a directory (and not a built-in tiny model name)")
