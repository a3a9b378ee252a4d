"""Vision-language models for umedfast: loading, batching, region/phrase -> token maps, value head, checkpoints.

See docs/architecture.md (layout, one PPO step) and docs/models.md.
"""
from umedfast.model.checkpoint import load_checkpoint, load_value_head, save_checkpoint
from umedfast.model.collate import collate_chat, model_inputs, prompt_and_suffix
from umedfast.model.loading import ARCHS, LoraSettings, VLMBundle, adapters_disabled, add_lora, default_dtype, load_vlm
from umedfast.model.regions import (box_token_spans, coordinate_token_slots, image_region_mask,
                                    phrase_token_positions)
from umedfast.model.tiny import TinySizes
from umedfast.model.value import PolicyWithValue, ValueHead, hidden_size, last_hidden_and_logits

__all__ = [
    "ARCHS", "LoraSettings", "PolicyWithValue", "TinySizes", "VLMBundle", "ValueHead", "adapters_disabled",
    "add_lora", "box_token_spans", "collate_chat", "coordinate_token_slots", "default_dtype", "hidden_size",
    "image_region_mask", "last_hidden_and_logits", "load_checkpoint", "load_value_head", "load_vlm", "model_inputs",
    "phrase_token_positions", "prompt_and_suffix", "save_checkpoint",
]
