"""vrr_forward on tiny random-weight LLaVA and Qwen2-VL (real HF architectures from small configs).

Logits on the kernel match sdpa; VRR from the kernel matches VRR computed from eager attention maps
(``output_attentions=True``) with the same masks. Batches mix left and right padding.
"""
import importlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from umedfast.rewards.vrr import vrr_forward

vrr_kernel_module = importlib.import_module("umedfast.kernels.vrr_attention")

IMG = 120  # image token id in both tiny vocabularies


def _tiny_llava():
    torch.manual_seed(0)
    cfg = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=4),
        image_token_index=IMG, vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    n_img = 16  # (16/4)^2 patches, CLS dropped by the "default" feature strategy
    return model, n_img, {"pixel_values": torch.randn(2, 3, 16, 16)}


def _tiny_qwen2_vl():
    torch.manual_seed(0)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=IMG, vision_start_token_id=121, vision_end_token_id=122, video_token_id=123,
    )
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])  # 64 patches per image, merged 2x2 -> 16 image tokens
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 2 * 2)
    return model, 16, {"pixel_values": pixels, "image_grid_thw": grid}


def _batch(n_img, T=40, seed=0):
    """Two samples: sample 0 right-padded (6 pads), sample 1 left-padded (4 pads); image tokens after a short prefix."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (2, T), generator=g)
    am = torch.ones(2, T, dtype=torch.long)
    am[0, T - 6:] = 0
    am[1, :4] = 0
    starts = (2, 6)
    for b, s in enumerate(starts):
        ids[b, s - 1] = 121  # vision start (used by Qwen2-VL's rope index; an ordinary token for LLaVA)
        ids[b, s: s + n_img] = IMG
        ids[b, s + n_img] = 122
    region = torch.zeros(2, T, dtype=torch.bool)
    region[0, 2 + 3: 2 + 9] = True
    region[1, 6: 6 + n_img: 2] = True
    cls = torch.zeros(2, T, dtype=torch.bool)
    cls[0, [25, 27, 30]] = True
    cls[1, [30, 39]] = True
    return {"input_ids": ids, "attention_mask": am}, region, cls


def _eager_vrr(model, inputs, region, cls, layers):
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    vals = []
    for li in layers:
        a = out.attentions[li].double()  # [B,H,T,T]
        m = (a * region[:, None, None, :]).sum(-1)  # [B,H,T]
        vals.append((m * cls[:, None, :]).sum(-1).mean(1))
    return torch.stack(vals).mean(0)


@pytest.mark.parametrize("build", [_tiny_llava, _tiny_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_vrr_forward_matches_eager_and_sdpa(build, monkeypatch):
    model, n_img, extra = build()
    batch, region, cls = _batch(n_img)
    inputs = {**batch, **extra}
    if "image_grid_thw" in extra:  # Qwen2-VL's M-RoPE reads which tokens are image tokens (the processor returns it)
        inputs["mm_token_type_ids"] = (batch["input_ids"] == IMG).long()
    assert model.config.text_config._attn_implementation == "sdpa"

    calls = []
    real = vrr_kernel_module._vrr_attention_fwd
    monkeypatch.setattr(vrr_kernel_module, "_vrr_attention_fwd", lambda *a, **k: calls.append(1) or real(*a, **k))

    with torch.no_grad():
        ref = model(**inputs, use_cache=False).logits
    outputs, vrr = vrr_forward(model, {**inputs, "prompt_lengths": torch.tensor([3, 3]), "labels": batch["input_ids"]},
                               region, cls)
    assert len(calls) == model.config.text_config.num_hidden_layers  # the Triton kernel ran once per LM layer
    assert model.config.text_config._attn_implementation == "sdpa"  # restored
    assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower was never switched

    real_tok = batch["attention_mask"].bool()
    torch.testing.assert_close(outputs.logits[real_tok], ref[real_tok], atol=1e-4, rtol=1e-4)

    expected = _eager_vrr(model, inputs, region, cls, layers=range(2))
    assert vrr.shape == (2,) and vrr.dtype == torch.float32
    assert (vrr > 0).all()
    torch.testing.assert_close(vrr.double(), expected, atol=1e-5, rtol=1e-4)

    # one chosen layer (negative index), and a sample without any class token gets 0
    cls_one = cls.clone()
    cls_one[1] = False
    _, vrr_last = vrr_forward(model, inputs, region, cls_one, layers=[-1])
    expected_last = _eager_vrr(model, inputs, region, cls_one, layers=[1])
    torch.testing.assert_close(vrr_last.double(), expected_last, atol=1e-5, rtol=1e-4)
    assert vrr_last[1] == 0


def test_vrr_forward_input_errors():
    model, n_img, extra = _tiny_llava()
    batch, region, cls = _batch(n_img)
    with pytest.raises(ValueError, match="region_mask"):
        vrr_forward(model, {**batch, **extra}, region[:, :-1], cls)
    with pytest.raises(ValueError, match="out of range"):
        vrr_forward(model, {**batch, **extra}, region, cls, layers=[2])
    assert model.config.text_config._attn_implementation == "sdpa"
