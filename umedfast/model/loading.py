"""Load a patch-token VLM (LLaVA family, Qwen2-VL, Qwen2.5-VL) with its processor: ``load_vlm`` -> ``VLMBundle``.

Offline only: ``name_or_path`` is a local directory, or one of the sentinels ``"tiny-llava"`` (default) /
``"tiny-qwen2-vl"``, which build the tiny random-init default from a config + the tokenizer shipped as package data.
"""
from __future__ import annotations

import contextlib
import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig

from umedfast.errors import UserError
from umedfast.model import processors, tiny
from umedfast.model.processors import load_processor
from umedfast.model.tiny import TinySizes
from umedfast.model_files import check_model_dir

# Built-in model names (no directory): the tiny random-init defaults and the presets with real pretrained parts.
TINY_NAMES = {"tiny-llava": "llava", "tiny-qwen2-vl": "qwen2_vl", "tiny-qwen2.5-vl": "qwen2_5_vl",
              "smollm2-llava": "llava", "smollm2-llava-frozen-lm": "llava"}
# preset name -> module whose build(name, sizes, seed) returns (model, processor); see docs/models.md
PRESETS = {"smollm2-llava": "umedfast.model.smollm2", "smollm2-llava-frozen-lm": "umedfast.model.smollm2"}
ARCHS = ("llava", "qwen2_vl", "qwen2_5_vl")
ADAPTER_DIR = "adapter"  # LoRA adapters of a checkpoint live in <checkpoint>/adapter (peft layout)
# Attention / MLP projections of the language model only (the vision tower of the real models stays frozen).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    r: int = 16                      # adapter rank
    alpha: int = 32                  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05            # dropout on the adapter input
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS  # leaf module names to adapt
    language_model_only: bool = True  # restrict targets to the LM (skip the vision tower's same-named layers)
    modules_to_save: tuple[str, ...] = ()  # fully trained extra modules (e.g. "multi_modal_projector")


@dataclass
class VLMBundle:
    """A policy model with everything needed to feed it.

    ``model``: HF ``*ForConditionalGeneration`` (possibly a ``peft.PeftModel`` around it); ``arch`` in ``ARCHS``;
    ``image_token_id``: the id the processor repeats once per image token in ``input_ids``.
    """
    model: Any
    processor: Any
    tokenizer: Any
    arch: str
    image_token_id: int
    name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_adapters(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    @property
    def base_model(self):
        """The underlying HF model (the PeftModel's wrapped model when LoRA is on)."""
        return self.model.get_base_model() if self.has_adapters else self.model


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def arch_of(config) -> str:
    mt = getattr(config, "model_type", "")
    if mt in ("llava", "llava_med", "llava_llama"):
        return "llava"
    if mt in ("qwen2_vl", "qwen2_5_vl"):
        return mt
    raise ValueError(f"unsupported model_type {mt!r}: umedfast supports patch-token VLMs {ARCHS}")


def model_class(arch: str):

    return {"llava": transformers.LlavaForConditionalGeneration,
            "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[arch]


def _build_tiny(family: str, sizes: TinySizes, seed: int):

    if family == "llava":
        proc = processors.tiny_llava_processor(sizes.image_size, sizes.patch_size)
        config = tiny.tiny_llava_config(proc.tokenizer, sizes)
    else:  # Qwen2-VL and Qwen2.5-VL share tokens, image processor and chat template
        proc = processors.tiny_qwen2_vl_processor(sizes.image_size)
        make = tiny.tiny_qwen2_vl_config if family == "qwen2_vl" else tiny.tiny_qwen2_5_vl_config
        config = make(proc.tokenizer, sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(family)(config)
    return model, proc


def load_vlm(name_or_path: str = "tiny-llava", *, dtype: torch.dtype | None = None, device: str = "cpu",
             attn_implementation: str = "sdpa", gradient_checkpointing: bool = False,
             lora: LoraSettings | None = None, seed: int = 0, tiny: TinySizes | None = None) -> VLMBundle:
    """Load a VLM + processor. ``tiny`` overrides the sizes of the tiny sentinels (ignored for directories).

    Never contacts a hub: a name that is neither a sentinel nor an existing directory is an error.
    """
    dtype = dtype or default_dtype(device)
    if name_or_path in PRESETS:

        arch = TINY_NAMES[name_or_path]
        model, proc = importlib.import_module(PRESETS[name_or_path]).build(name_or_path, tiny, seed)
        model.set_attn_implementation(attn_implementation)
        if lora is not None and not lora.modules_to_save:  # fresh vision parts train fully beside the adapters

            lora = replace(lora, modules_to_save=tuple(getattr(importlib.import_module(PRESETS[name_or_path]),
                                                               "PRESET_MODULES_TO_SAVE", ())))
    elif name_or_path in TINY_NAMES:
        arch = TINY_NAMES[name_or_path]
        model, proc = _build_tiny(arch, tiny or TinySizes(), seed)
        model.set_attn_implementation(attn_implementation)
    else:
        path = check_model_dir(name_or_path, builtin=sorted(TINY_NAMES))

        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        arch = arch_of(config)
        model = model_class(arch).from_pretrained(str(path), dtype=dtype, attn_implementation=attn_implementation,
                                                  local_files_only=True, use_safetensors=True)
        proc = load_processor(path, arch)
    model.to(device=device, dtype=dtype)
    tok = proc.tokenizer
    if tok.pad_token is None:  # generation and batching need one; eos is the usual stand-in
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    if tok.eos_token_id is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
    # Never sample placeholder tokens: an image token inside a response would break the next forward
    # ("image features and image tokens do not match"). The suppressed ids have ~0 probability after SFT.
    placeholders = {int(model.config.image_token_id), getattr(model.config, "video_token_id", None), tok.pad_token_id}
    model.generation_config.suppress_tokens = sorted(i for i in placeholders if i is not None and i != tok.eos_token_id)
    if gradient_checkpointing:  # renamed "activation checkpointing" in transformers 5.x
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # use_cache stays on: transformers skips the cache only in checkpointed training forwards, and PPO
        # sampling with the same model keeps its KV cache.
    bundle = VLMBundle(model=model, processor=proc, tokenizer=tok, arch=arch,
                       image_token_id=int(model.config.image_token_id), name=str(name_or_path))
    if lora is not None:
        add_lora(bundle, lora)
    elif name_or_path not in TINY_NAMES and (Path(name_or_path) / ADAPTER_DIR / "adapter_config.json").is_file():
        _load_adapter(bundle, Path(name_or_path) / ADAPTER_DIR)  # a umedfast checkpoint trained with LoRA
    return bundle


def is_checkpointing(model) -> bool:
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def lora_target_regex(s: LoraSettings) -> str:
    names = "|".join(s.target_modules)
    prefix = r".*language_model.*\." if s.language_model_only else r".*\."
    return rf"{prefix}({names})"


def add_lora(bundle: VLMBundle, s: LoraSettings) -> VLMBundle:
    """Wrap ``bundle.model`` in a ``peft.PeftModel`` with fresh adapters (base weights frozen)."""
    cfg = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=lora_target_regex(s),
                     modules_to_save=list(s.modules_to_save) or None, bias="none")
    if is_checkpointing(bundle.model):
        bundle.model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    bundle.model = get_peft_model(bundle.model, cfg)
    return bundle


def _load_adapter(bundle: VLMBundle, adapter_dir: Path) -> None:

    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():  # never let peft unpickle adapter_model.bin
        raise UserError(f"LoRA adapter {adapter_dir} has no adapter_model.safetensors; umedfast loads safetensors only")

    base = bundle.base_model
    bundle.model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    bundle.model.to(next(base.parameters()).device)


@contextlib.contextmanager
def adapters_disabled(bundle_or_model) -> Iterator[Any]:
    """Run the LoRA model as its frozen base: the reference policy for the KL term, without a second copy.

    Raises ``ValueError`` when the model has no adapters (then keep a frozen copy as the reference instead).
    """
    model = getattr(bundle_or_model, "model", bundle_or_model)
    if not hasattr(model, "disable_adapter"):
        raise ValueError("model has no LoRA adapters: the reference policy needs a frozen copy of the weights")
    with model.disable_adapter():
        yield model


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
