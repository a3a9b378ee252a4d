"""collate_chat: chat format, labels on the response only, right/left padding, image tensors per architecture."""
import numpy as np
import pytest
import torch
from PIL import Image

from umedfast.model import TinySizes, collate_chat, load_vlm, model_inputs

SIZES = TinySizes(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64,
                  text_layers=1, text_heads=4, text_kv_heads=2, text_intermediate=128)
N_IMAGE_TOKENS = {"tiny-llava": 16, "tiny-qwen2-vl": 4}  # 4x4 patches; Qwen merges 2x2


@pytest.fixture(scope="module", params=list(N_IMAGE_TOKENS))
def bundle(request):
    return load_vlm(request.param, tiny=SIZES)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Real PNG files on disk, records as plain dicts (MAURecord objects work the same way)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(64, 64), (80, 48), (40, 72)]):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        out.append({"image": str(path), "query": "Find the abnormality." + " Please." * i,
                    "response": f"Detection: one region. Localization: [{i}00,100,500,600]. Recognition: polyp."})
    return out


def test_labels_cover_exactly_response_and_end_of_turn(bundle, records):
    batch = collate_chat(bundle, records)
    tok = bundle.tokenizer
    for b, rec in enumerate(records):
        lab = batch["labels"][b]
        keep = lab != -100
        assert tok.decode(lab[keep]) == rec["response"] + "<|im_end|>"
        pl = int(batch["prompt_lengths"][b])
        assert keep.nonzero().min().item() == pl  # response starts right after the prompt
        assert torch.equal(lab[keep], batch["input_ids"][b][keep])
        prompt = tok.decode(batch["input_ids"][b, :pl])
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
        assert rec["query"] in prompt


def test_training_pads_right_generation_pads_left(bundle, records):
    train = collate_chat(bundle, records)
    gen = collate_chat(bundle, records, for_generation=True)
    assert "labels" not in gen
    pad = bundle.tokenizer.pad_token_id
    for b in range(len(records)):
        m = train["attention_mask"][b]
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # right padding
        assert (train["input_ids"][b, n:] == pad).all() and (train["labels"][b, n:] == -100).all()
        g = gen["attention_mask"][b]
        pl = int(gen["prompt_lengths"][b])
        assert g[-pl:].all() and not g[:-pl].any() and int(g.sum()) == pl  # left padding
        # The generation prompt is exactly the training prompt: what the policy samples after is what SFT trained.
        assert torch.equal(gen["input_ids"][b, -pl:], train["input_ids"][b, :pl])


def test_image_tensors_per_architecture(bundle, records):
    batch = collate_chat(bundle, records)
    n_img = (batch["input_ids"] == bundle.image_token_id).sum(1)
    assert batch["orig_image_sizes"].tolist() == [[64, 64], [80, 48], [40, 72]]
    if bundle.arch == "llava":  # fixed square resize: the same grid for every image
        assert (n_img == N_IMAGE_TOKENS[bundle.name]).all()
        assert batch["pixel_values"].shape == (3, 3, 56, 56)
        assert "image_grid_thw" not in batch
    else:  # Qwen2-VL keeps the aspect ratio: a wide image gets a wide grid, same pixel budget
        thw = batch["image_grid_thw"]
        assert thw[0].tolist() == [1, 4, 4] and thw[1, 2] > thw[1, 1] and thw[2, 1] > thw[2, 2]
        assert torch.equal(n_img, thw.prod(1) // 4)
        assert batch["pixel_values"].shape == (int(thw.prod(1).sum()), 3 * 2 * 14 * 14)
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == bundle.image_token_id).long())
    assert set(model_inputs(batch)) <= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                        "mm_token_type_ids"}
    loss = bundle.model(**model_inputs(batch), labels=batch["labels"]).loss
    assert torch.isfinite(loss)


def test_responses_override_and_errors(bundle, records):
    batch = collate_chat(bundle, records, responses=["a", "bb", "No abnormality."])
    tok = bundle.tokenizer
    assert tok.decode(batch["labels"][2][batch["labels"][2] != -100]) == "No abnormality.<|im_end|>"
    with pytest.raises(ValueError, match="responses"):
        collate_chat(bundle, records, responses=["only one"])
    with pytest.raises(ValueError, match="at least one"):
        collate_chat(bundle, [])


def test_mau_records_from_the_data_package(bundle, tmp_path):
    synth = pytest.importorskip("umedfast.data.synth")
    recs = synth.generate(2, tmp_path, seed=0, image_size=64, style="compact", progress=False)
    batch = collate_chat(bundle, recs)
    for b, r in enumerate(recs):
        assert bundle.tokenizer.decode(batch["labels"][b][batch["labels"][b] != -100]) == r.response + "<|im_end|>"
