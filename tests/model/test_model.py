"""Tiny random-weight LLaVA and Qwen2-VL through umedfast.model: forward, KV-cache generation, value head, LoRA."""
import pytest
import torch
from PIL import Image

from umedfast.model.loading import is_checkpointing
from umedfast.model import (LoraSettings, PolicyWithValue, TinySizes, ValueHead, adapters_disabled, add_lora,
                            collate_chat, last_hidden_and_logits, load_vlm, model_inputs)

SMALL = TinySizes(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64,
                  text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=128)
FAMILIES = ["tiny-llava", "tiny-qwen2-vl"]


def _records(n=3):
    out = []
    for i in range(n):
        img = Image.new("RGB", (64 + 16 * i, 64), (40 * i, 100, 200 - 30 * i))
        out.append({"image": img, "query": f"Is there an abnormality in image {i}?",
                    "response": f"Recognition: nodule at [{100 * i},200,{100 * i + 150},400]."})
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def bundle(request):
    return load_vlm(request.param, tiny=SMALL, seed=1)


def test_bundle_fields(bundle):
    assert bundle.arch in ("llava", "qwen2_vl")
    assert next(bundle.model.parameters()).dtype == torch.float32  # fp32 on CPU
    assert bundle.tokenizer.convert_ids_to_tokens(bundle.image_token_id) in ("<image>", "<|image_pad|>")
    assert bundle.model.generation_config.eos_token_id == bundle.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_forward_loss_and_shapes(bundle):
    batch = collate_chat(bundle, _records())
    out = bundle.model(**model_inputs(batch), labels=batch["labels"])
    B, T = batch["input_ids"].shape
    assert out.logits.shape == (B, T, len(bundle.tokenizer))
    # Random init: the loss is close to log(V) (uniform guess), and finite.
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(len(bundle.tokenizer)))) < 1.5


def test_generate_kv_cache_matches_no_cache(bundle):
    batch = collate_chat(bundle, _records(), for_generation=True)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        cached = bundle.model.generate(**model_inputs(batch), use_cache=True, **kw)
        plain = bundle.model.generate(**model_inputs(batch), use_cache=False, **kw)
    assert cached.shape == (3, batch["input_ids"].shape[1] + 6)
    assert torch.equal(cached, plain)
    # The first generated token is the argmax of a full forward over the (left-padded) prompt.
    with torch.no_grad():
        logits = bundle.model(**model_inputs(batch)).logits
    assert torch.equal(cached[:, batch["input_ids"].shape[1]], logits[:, -1].argmax(-1))


def test_policy_with_value_shapes_and_logits(bundle):
    batch = collate_chat(bundle, _records())
    torch.manual_seed(0)
    head = ValueHead(SMALL.text_hidden)
    torch.nn.init.normal_(head.summary.weight)
    pv = PolicyWithValue(bundle, head)
    logits, values = pv(**batch)  # extra keys (labels, prompt_lengths) are ignored
    B, T = batch["input_ids"].shape
    assert values.shape == (B, T) and values.dtype == torch.float32
    with torch.no_grad():
        ref = bundle.model(**model_inputs(batch)).logits
    torch.testing.assert_close(logits, ref)
    h, _ = last_hidden_and_logits(bundle.model, batch, need_logits=False)
    torch.testing.assert_close(values, h @ head.summary.weight[0] + head.summary.bias[0])
    (values.sum() + logits.mean()).backward()
    assert head.summary.weight.grad is not None
    assert bundle.base_model.lm_head.weight.grad is not None
    bundle.model.zero_grad(set_to_none=True)


def test_value_head_starts_at_zero_and_checks_width(bundle):
    batch = collate_chat(bundle, _records(2))
    _, values = PolicyWithValue(bundle)(**batch)
    assert torch.count_nonzero(values) == 0
    with pytest.raises(ValueError, match="hidden size"):
        PolicyWithValue(bundle, ValueHead(SMALL.text_hidden + 1))


def test_separate_critic_model():
    policy = load_vlm("tiny-llava", tiny=SMALL, seed=1)
    critic = load_vlm("tiny-llava", tiny=SMALL, seed=2).model
    head = ValueHead(SMALL.text_hidden)
    torch.nn.init.normal_(head.summary.weight)
    batch = collate_chat(policy, _records(2))
    _, v_policy = PolicyWithValue(policy, head)(**batch)
    _, v_critic = PolicyWithValue(policy, head, critic=critic)(**batch)
    h_critic, _ = last_hidden_and_logits(critic, batch, need_logits=False)
    torch.testing.assert_close(v_critic, head(h_critic))
    assert not torch.allclose(v_policy, v_critic)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_adapters_disable_and_enable(family):
    b = load_vlm(family, tiny=SMALL, seed=3)
    batch = collate_chat(b, _records(2))
    with torch.no_grad():
        base = b.model(**model_inputs(batch)).logits
    add_lora(b, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")))
    names = [n for n, p in b.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all("language_model" in n for n in names)  # vision tower left alone
    with torch.no_grad():
        torch.testing.assert_close(b.model(**model_inputs(batch)).logits, base)  # lora_B starts at 0
        for n, p in b.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        adapted = b.model(**model_inputs(batch)).logits
        with adapters_disabled(b):
            torch.testing.assert_close(b.model(**model_inputs(batch)).logits, base)
        again = b.model(**model_inputs(batch)).logits
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(again, adapted)


def test_adapters_disabled_needs_adapters_and_offline_only():
    b = load_vlm("tiny-llava", tiny=SMALL)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with adapters_disabled(b):
            pass
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_vlm("llava-hf/llava-1.5-7b-hf")


def test_gradient_checkpointing_same_loss_and_grads():
    batches, grads, losses = None, [], []
    for gc in (False, True):
        b = load_vlm("tiny-llava", tiny=SMALL, seed=4, gradient_checkpointing=gc)
        b.model.train()
        batches = batches or collate_chat(b, _records(2))
        loss = b.model(**model_inputs(batches), labels=batches["labels"]).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(b.base_model.lm_head.weight.grad.clone())
    assert is_checkpointing(b.model)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_generation_never_samples_the_image_placeholder():
    b = load_vlm("tiny-llava", tiny=SMALL, seed=5)
    with torch.no_grad():
        b.base_model.lm_head.weight[b.image_token_id] *= 0
        b.base_model.lm_head.weight[b.image_token_id, 0] = 1e4  # make <image> by far the likeliest token
    batch = collate_chat(b, _records(2), for_generation=True)
    out = b.model.generate(**model_inputs(batch), max_new_tokens=4, do_sample=True)
    assert not (out[:, batch["input_ids"].shape[1]:] == b.image_token_id).any()

