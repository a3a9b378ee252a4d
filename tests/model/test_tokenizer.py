"""The tiny tokenizer shipped as package data, its builder, and phrase positions on random texts (property test)."""
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from umedfast.model import phrase_token_positions
from umedfast.model.build_tokenizer import ASSET_DIR, save_tokenizer, train_tokenizer
from umedfast.model.processors import tiny_tokenizer

TOK = tiny_tokenizer("llava")


def test_shipped_asset_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in Path(ASSET_DIR).iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(files)
    assert sum(files.values()) < 100_000  # kilobytes, not megabytes
    assert TOK.image_token == "<image>" and TOK.eos_token == "<|im_end|>" and TOK.pad_token == "<pad>"
    assert tiny_tokenizer("qwen2_vl").image_token == "<|image_pad|>"


def test_digits_are_single_tokens_and_text_round_trips():
    ids = TOK("[123,456,789,900]", add_special_tokens=False)["input_ids"]
    pieces = TOK.convert_ids_to_tokens(ids)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("123456789900")
    for text in ["Recognition: kidney stone.", "Ünïcode — 結節 ok", "shikra [0.125,0.500,0.875,1.000]"]:
        assert TOK.decode(TOK(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: anything encodes


def test_class_names_are_a_few_tokens():
    from umedfast.data.classes import CLASS_SYNONYMS

    def n_tokens(lab):
        return len(TOK(" " + lab, add_special_tokens=False)["input_ids"])

    synth = {lab for src, per in CLASS_SYNONYMS.items() if src.startswith("synth-") for lab in per}
    real = {lab for per in CLASS_SYNONYMS.values() for lab in per}
    assert max(n_tokens(lab) for lab in synth) <= 3  # the trained-on labels are (nearly) single merges
    assert max(n_tokens(lab) for lab in real) <= 6  # real-source names were in the corpus too, less often
    assert n_tokens("pneumothorax") < len("pneumothorax") // 2


def test_builder_trains_and_saves_a_loadable_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer(["a nodule at [12,345,678,901]", "no abnormality"] * 50, vocab_size=300)
    save_tokenizer(tok, tmp_path)
    fast = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert fast.convert_tokens_to_ids("<image>") != fast.unk_token_id and fast.chat_template
    assert fast.convert_ids_to_tokens(fast("901", add_special_tokens=False)["input_ids"]) == ["9", "0", "1"]


WORDS = ["the", "lesion", "Kidney", "stone", "[", "]", "12", ",", "polyp", "at", "region", "ALL", "é"]


@settings(max_examples=40, deadline=None)
@given(pre=st.lists(st.sampled_from(WORDS), max_size=6), post=st.lists(st.sampled_from(WORDS), max_size=6),
       phrase=st.sampled_from(["kidney stone", "polyp", "lesion", "stone"]), upper=st.booleans())
def test_phrase_positions_cover_every_occurrence(pre, post, phrase, upper):
    text = " ".join(pre + [phrase.upper() if upper else phrase] + post)
    ids = TOK(text, add_special_tokens=False)["input_ids"]
    pos = phrase_token_positions(TOK, ids, phrase)
    assert pos
    # Spans of the selected tokens: together they cover every occurrence, and each overlaps one.
    ends = [len(TOK.decode(ids[: i + 1])) for i in range(len(ids))]
    starts = [0] + ends[:-1]
    low = text.lower()
    occ = [i for i in range(len(low)) if low.startswith(phrase, i)]
    for o in occ:
        covered = [i for i in pos if starts[i] < o + len(phrase) and ends[i] > o]
        assert covered and min(starts[i] for i in covered) <= o + 1  # +1: a leading-space token piece
        assert max(ends[i] for i in covered) >= o + len(phrase)
    for i in pos:
        assert any(starts[i] < o + len(phrase) and ends[i] > o for o in occ)
