"""Configs of the tiny offline default models (real HF architectures, random init, built in about a second).

Sizes were picked by measuring SFT speed and learnability on MAU-Synth on 2 CPU cores (docs/models.md).
``TinySizes`` holds every knob so tests and benchmarks can shrink or grow the model through ``load_vlm(..., tiny=)``.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig


@dataclass(frozen=True)
class TinySizes:
    image_size: int = 112        # side of the processed image (the processor resizes, no crop)
    patch_size: int = 14         # LLaVA: 112/14 -> 8x8 = 64 image tokens; Qwen2-VL: 2x2 merge -> 4x4 = 16
    vision_hidden: int = 128     # vision tower width
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 192       # language model width (measured: 192x3 learns MAU-Synth faster per CPU-second
    text_layers: int = 3         # than 256x4, see docs/models.md)
    text_heads: int | None = None       # None: text_hidden // 64 (head dim 64)
    text_kv_heads: int | None = None    # None: heads // 2 when even, else 1 (GQA, like the real LLaMA-3 / Qwen2)
    text_intermediate: int | None = None  # None: 2 * text_hidden
    max_positions: int = 1024

    @property
    def heads(self) -> int:
        h = self.text_heads or max(1, self.text_hidden // 64)
        if self.text_hidden % h:
            raise ValueError(f"text_hidden={self.text_hidden} is not divisible by text_heads={h}")
        return h

    @property
    def kv_heads(self) -> int:
        kv = self.text_kv_heads or (self.heads // 2 if self.heads % 2 == 0 else 1)
        if self.heads % kv:
            raise ValueError(f"text_heads={self.heads} is not a multiple of text_kv_heads={kv}")
        return kv

    @property
    def intermediate(self) -> int:
        return self.text_intermediate or 2 * self.text_hidden


def tiny_llava_config(tok, s: TinySizes = TinySizes()) -> LlavaConfig:
    """LLaVA-1.5 layout: CLIP ViT -> 2-layer GELU MLP projector -> Llama. Uses the last vision layer (the tower is
    tiny and untrained, the penultimate-layer trick of LLaVA buys nothing)."""
    vision = CLIPVisionConfig(hidden_size=s.vision_hidden, intermediate_size=4 * s.vision_hidden,
                              num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
                              image_size=s.image_size, patch_size=s.patch_size, projection_dim=s.vision_hidden)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=s.text_hidden, intermediate_size=s.intermediate,
                       num_hidden_layers=s.text_layers, num_attention_heads=s.heads,
                       num_key_value_heads=s.kv_heads, max_position_embeddings=s.max_positions,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", pad_token_id=tok.pad_token_id, tie_word_embeddings=False)


def tiny_qwen2_vl_config(tok, s: TinySizes = TinySizes()) -> Qwen2VLConfig:
    """Qwen2-VL layout: ViT with 2D RoPE and 2x2 patch merger -> Qwen2 LM with M-RoPE."""
    head_dim = s.text_hidden // s.heads
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # (t, h, w) split of the rotary dims
    text = dict(vocab_size=len(tok), hidden_size=s.text_hidden, intermediate_size=s.intermediate,
                num_hidden_layers=s.text_layers, num_attention_heads=s.heads,
                num_key_value_heads=s.kv_heads, max_position_embeddings=s.max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=s.vision_layers, embed_dim=s.vision_hidden, hidden_size=s.text_hidden, mlp_ratio=2,
                  num_heads=s.vision_heads, patch_size=s.patch_size, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision,
                         image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                         video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                         vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                         vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
                         tie_word_embeddings=False)


def tiny_qwen2_5_vl_config(tok, s: TinySizes = TinySizes()):
    """Qwen2.5-VL layout: windowed-attention ViT (SwiGLU, RMSNorm) + 2x2 merger -> Qwen2 LM with M-RoPE."""
    base = tiny_qwen2_vl_config(tok, s)
    vision = dict(depth=s.vision_layers, hidden_size=s.vision_hidden, out_hidden_size=s.text_hidden,
                  intermediate_size=2 * s.vision_hidden, num_heads=s.vision_heads, patch_size=s.patch_size,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=4 * s.patch_size,
                  fullatt_block_indexes=[s.vision_layers - 1])
    return Qwen2_5_VLConfig(text_config=base.text_config.to_dict(), vision_config=vision,
                            image_token_id=base.image_token_id, video_token_id=base.video_token_id,
                            vision_start_token_id=base.vision_start_token_id,
                            vision_end_token_id=base.vision_end_token_id, tie_word_embeddings=False)
