"""save_checkpoint / load_checkpoint: save_pretrained layout, identical logits after the round trip, no pickles."""
import json

import pytest
import torch
from PIL import Image

from umedfast.model import (LoraSettings, TinySizes, ValueHead, adapters_disabled, add_lora, collate_chat,
                            load_checkpoint, load_vlm, model_inputs, save_checkpoint)

SIZES = TinySizes(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64,
                  text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=128)
ALLOWED_SUFFIXES = (".json", ".safetensors", ".jinja", ".md")


def _records():
    return [{"image": Image.new("RGB", (60, 50), (30 * i, 90, 160)), "query": f"Abnormal? {i}",
             "response": f"nodule [{i}10,200,400,500]"} for i in range(2)]


def _logits(bundle, batch):
    with torch.no_grad():
        return bundle.model(**model_inputs(batch)).logits


def _no_pickles(d):
    files = [p for p in d.rglob("*") if p.is_file()]
    assert files and all(p.name.endswith(ALLOWED_SUFFIXES) for p in files), [p.name for p in files]


@pytest.mark.parametrize("family", ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_round_trip_identical_logits_and_value_head(family, tmp_path):
    b = load_vlm(family, tiny=SIZES, seed=5)
    head = ValueHead(SIZES.text_hidden)
    torch.nn.init.normal_(head.summary.weight)
    batch = collate_chat(b, _records())
    ref = _logits(b, batch)
    save_checkpoint(tmp_path, b, head)
    _no_pickles(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "value_head.safetensors").is_file()
    b2, head2 = load_checkpoint(tmp_path)
    assert b2.arch == b.arch and b2.image_token_id == b.image_token_id
    batch2 = collate_chat(b2, _records())  # the saved processor + chat template collate identically
    assert all(torch.equal(batch[k], batch2[k]) for k in batch)
    assert torch.equal(_logits(b2, batch2), ref)
    assert torch.equal(head2.summary.weight, head.summary.weight)
    assert torch.equal(head2.summary.bias, head.summary.bias)


def test_plain_transformers_loads_the_directory(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    b = load_vlm("tiny-llava", tiny=SIZES, seed=6)
    batch = collate_chat(b, _records())
    save_checkpoint(tmp_path, b)
    m = AutoModelForImageTextToText.from_pretrained(tmp_path, use_safetensors=True)
    assert type(m).__name__ == "LlavaForConditionalGeneration"
    with torch.no_grad():
        assert torch.equal(m(**model_inputs(batch)).logits, _logits(b, batch))
    proc = AutoProcessor.from_pretrained(tmp_path)
    assert proc.tokenizer.chat_template == b.tokenizer.chat_template or proc.chat_template == b.processor.chat_template


def test_lora_checkpoint_keeps_base_and_adapters_apart(tmp_path):
    from transformers import LlavaForConditionalGeneration

    b = load_vlm("tiny-llava", tiny=SIZES, seed=7)
    add_lora(b, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "o_proj", "down_proj")))
    with torch.no_grad():
        for n, p in b.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    batch = collate_chat(b, _records())
    adapted = _logits(b, batch)
    with adapters_disabled(b):
        base = _logits(b, batch)
    assert not torch.allclose(adapted, base)
    save_checkpoint(tmp_path, b)
    _no_pickles(tmp_path)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    # The top-level directory is the un-merged base model, loadable by plain transformers (vLLM + --lora-modules).
    plain = LlavaForConditionalGeneration.from_pretrained(tmp_path, use_safetensors=True)
    with torch.no_grad():
        assert torch.equal(plain(**model_inputs(batch)).logits, base)
    b2, head = load_checkpoint(tmp_path)
    assert head is None and b2.has_adapters
    assert torch.equal(_logits(b2, batch), adapted)
    with adapters_disabled(b2):
        assert torch.equal(_logits(b2, batch), base)
    trainable = [n for n, p in b2.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # ready to keep training


def test_load_checkpoint_rejects_non_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)
