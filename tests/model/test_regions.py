"""Region -> image-token mask (LLaVA fixed grid, Qwen2-VL grid_thw with 2x2 merge) and phrase -> token positions."""
import pytest
import torch
from PIL import Image

from umedfast.model import TinySizes, collate_chat, image_region_mask, load_vlm, phrase_token_positions
from umedfast.model.processors import tiny_tokenizer

# LLaVA: 112/14 -> 8x8 patch tokens. Qwen2-VL: 112x112 -> 8x8 patches -> 4x4 merged tokens.
SIZES = TinySizes(image_size=112, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64,
                  text_layers=1, text_heads=4, text_kv_heads=2, text_intermediate=128)
GRID = {"tiny-llava": 8, "tiny-qwen2-vl": 4, "tiny-qwen2.5-vl": 4}


@pytest.fixture(scope="module", params=list(GRID))
def bundle(request):
    return load_vlm(request.param, tiny=SIZES)


def _batch(bundle, n=2, size=(112, 112), for_generation=False):
    recs = [{"image": Image.new("RGB", size, (90, 90, 90)), "query": "Where" + "?" * (i + 1),
             "response": "nodule " * (i + 1)} for i in range(n)]
    return collate_chat(bundle, recs, for_generation=for_generation)


def _expected(bundle, batch, b, cells):
    """Bool[T]: True at the image tokens of sample b whose (row, col) grid cell is in ``cells``."""
    g = GRID[bundle.name]
    pos = torch.nonzero(batch["input_ids"][b] == bundle.image_token_id).flatten()
    assert len(pos) == g * g
    exp = torch.zeros(batch["input_ids"].shape[1], dtype=torch.bool)
    for r, c in cells:
        exp[pos[r * g + c]] = True
    return exp


@pytest.mark.parametrize("for_generation", [False, True])
def test_top_left_quadrant_selects_exactly_those_patches(bundle, for_generation):
    batch = _batch(bundle, for_generation=for_generation)
    g = GRID[bundle.name]
    mask = image_region_mask(bundle, batch, [[(0.0, 0.0, 0.5, 0.5)], [(0.0, 0.0, 0.5, 0.5)]])
    quadrant = [(r, c) for r in range(g // 2) for c in range(g // 2)]
    for b in range(2):  # samples differ in length and padding; positions still land on the right tokens
        assert torch.equal(mask[b], _expected(bundle, batch, b, quadrant))
    assert mask.sum().item() == 2 * (g // 2) ** 2


def test_boxes_union_edges_and_empty(bundle):
    batch = _batch(bundle)
    g = GRID[bundle.name]
    cell = 1.0 / g
    # Sample 0: one cell strictly inside (1,2) + a box on the bottom-right cell; sample 1: an empty/inverted box.
    boxes = [[(2.2 * cell, 1.2 * cell, 2.8 * cell, 1.9 * cell), (1 - cell / 2, 1 - cell / 2, 1.0, 1.0)],
             [(0.5, 0.5, 0.4, 0.6)]]
    mask = image_region_mask(bundle, batch, boxes)
    assert torch.equal(mask[0], _expected(bundle, batch, 0, [(1, 2), (g - 1, g - 1)]))
    assert not mask[1].any()
    # A box that only touches a cell edge does not select the neighbour.
    edge = image_region_mask(bundle, batch, [[(cell, cell, 2 * cell, 2 * cell)], [(0, 0, 1, 1)]])
    assert torch.equal(edge[0], _expected(bundle, batch, 0, [(1, 1)]))
    assert torch.equal(edge[1], batch["input_ids"][1] == bundle.image_token_id)  # full image = all image tokens


def test_box_count_must_match_batch(bundle):
    with pytest.raises(ValueError, match="box lists"):
        image_region_mask(bundle, _batch(bundle), [[(0, 0, 1, 1)]])


def test_llava_center_crop_maps_boxes_through_the_crop():
    """A shortest-edge resize + center crop (real LLaVA-1.5 processors) hides the sides of a wide image."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    bundle = load_vlm("tiny-llava", tiny=SIZES)
    bundle.processor.image_processor = CLIPImageProcessorPil(size={"shortest_edge": 112}, do_center_crop=True,
                                                             crop_size={"height": 112, "width": 112})
    batch = _batch(bundle, n=1, size=(224, 112))  # 2:1 image -> crop keeps x in [0.25, 0.75]
    assert batch["pixel_values"].shape[-2:] == (112, 112)
    left_strip = image_region_mask(bundle, batch, [[(0.0, 0.0, 0.2, 1.0)]])
    assert not left_strip.any()  # cropped away
    middle_left = image_region_mask(bundle, batch, [[(0.25, 0.0, 0.5, 0.5)]])  # -> crop box (0,0,0.5,0.5)
    assert torch.equal(middle_left[0], _expected(bundle, batch, 0, [(r, c) for r in range(4) for c in range(4)]))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("llava")


def _spelled(tok, ids, pos):
    return tok.decode([ids[i] for i in pos]).strip().lower()


def test_phrase_positions_every_occurrence_case_insensitive(tok):
    text = "Recognition: Lung Lesion. Localization: [120,40,300,200]. Also a lung lesion near the hilum."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pos = phrase_token_positions(tok, ids, "lung lesion")
    assert pos and pos == sorted(pos)
    runs = [[p for p in pos if p < len(ids) // 2], [p for p in pos if p >= len(ids) // 2]]
    assert [_spelled(tok, ids, r) for r in runs] == ["lung lesion", "lung lesion"]
    for r in runs:  # contiguous tokens
        assert r == list(range(r[0], r[-1] + 1))
    assert phrase_token_positions(tok, ids, "kidney stone") == []
    assert phrase_token_positions(tok, ids, "") == []


def test_phrase_positions_on_generated_ids_with_specials(tok):
    """Generated ids need not be the canonical tokenization: spell the phrase byte by byte after special tokens."""
    prefix = tok("<|im_start|>assistant\nIt is a", add_special_tokens=False)["input_ids"]
    pieces = [tok.convert_tokens_to_ids(t) for t in ["Ġ", "p", "o", "l", "y", "p"]]
    suffix = tok(".<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor(prefix + pieces + suffix)
    pos = phrase_token_positions(tok, ids, "polyp")
    assert pos == list(range(len(prefix) + 1, len(prefix) + 6))  # the lone space token is not counted
    assert _spelled(tok, ids.tolist(), pos) == "polyp"


def test_phrase_positions_with_a_word_piece_tokenizer():
    """Also through a tokenizer whose pieces are not byte-level (a WordPiece vocab built here)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "the", "kidney", "stone", "is", "large", "##s", "a"])}
    t = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.decoder = decoders.WordPiece()
    ft = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]")
    ids = ft("the kidney stones is a large kidney stone", add_special_tokens=False)["input_ids"]
    assert phrase_token_positions(ft, ids, "Kidney Stone") == [1, 2, 7, 8]


def test_mask_on_generation_batch_with_appended_response(bundle):
    """PPO appends sampled ids to the left-padded prompt; a stray image-token id in them is not a patch."""
    gen = _batch(bundle, for_generation=True)
    g = GRID[bundle.name]
    stray = torch.tensor([[5, bundle.image_token_id, 6]] * 2)
    full = dict(gen, input_ids=torch.cat([gen["input_ids"], stray], 1),
                attention_mask=torch.cat([gen["attention_mask"], torch.ones_like(stray)], 1))
    mask = image_region_mask(bundle, full, [[(0.0, 0.0, 1.0, 1.0)], []])
    assert mask[0].sum() == g * g and not mask[0, -3:].any() and not mask[1].any()
    assert torch.equal(mask[0, :-3], gen["input_ids"][0] == bundle.image_token_id)
