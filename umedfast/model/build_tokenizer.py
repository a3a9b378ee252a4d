"""Regenerate the tiny tokenizer shipped in ``umedfast/assets/tiny_tokenizer/`` (kilobytes, trained locally).

A byte-level BPE trained with the ``tokenizers`` library on text the MAU templates produce. Digits are split into
single tokens (``Digits(individual_digits=True)`` before the byte-level split) so a box ``[123,456,789,900]`` is a
short, regular sequence of 10 digit symbols and punctuation that a tiny model can learn. Byte-level BPE can encode any
string, so prompts the templates did not produce (judge text, user queries) still tokenize.

Usage::

    python -m umedfast.model.build_tokenizer               # corpus = MAU-Synth text (umedfast.data) if available
    python -m umedfast.model.build_tokenizer --vocab-size 1024 --out umedfast/assets/tiny_tokenizer
"""
from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from umedfast.data import synth
from umedfast.data.classes import CLASS_SYNONYMS
from umedfast.model.chat_templates import IMAGE_TOKEN, LLAVA_CHAT_TEMPLATE, SPECIAL_TOKENS

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"

# Fallback corpus pieces (used only when umedfast.data is missing): plausible MAU phrasing and class names.
_CLASSES = ["lesion", "nodule", "mass", "kidney stone", "polyp", "tuberculosis", "pneumothorax", "effusion",
            "atelectasis", "cardiomegaly", "infiltration", "consolidation", "liver lesion", "lung nodule",
            "bone lesion", "lymph node", "ulcerative colitis", "esophagitis", "active tuberculosis",
            "latent tuberculosis", "emphysema", "fibrosis", "hernia", "edema", "pleural thickening", "pneumonia"]
_MODALITIES = ["CT", "chest X-ray", "kidney CT", "endoscopy", "X-ray", "abdominal CT"]
_QUERIES = ["Is there any abnormality in this {m} image? If so, where is it?",
            "Describe the abnormal findings in this {m} image and give their location.",
            "Please analyze this {m} image, detect abnormalities and localize them with a box.",
            "What abnormality can you see in the image? Give the bounding box."]
_RESPONSES = ["The {m} image shows a {c} at {b}.", "Abnormality: {c} {b}.", "{c} {b}",
              "Detection: an abnormal region is present. Localization: {b}. Recognition: {c}.",
              "There is a {c} located at {b}, which appears abnormal.",
              "No abnormality is found in this {m} image.", "Normal: no abnormal finding."]


def _fallback_corpus(n: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m, c = rng.choice(_MODALITIES), rng.choice(_CLASSES)
        x1, y1 = rng.randint(0, 800), rng.randint(0, 800)
        b = f"[{x1},{y1},{x1 + rng.randint(10, 200)},{y1 + rng.randint(10, 200)}]"
        out.append(rng.choice(_QUERIES).format(m=m))
        out.append(rng.choice(_RESPONSES).format(m=m, c=c, b=b))
    return out


def mau_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Queries + responses of ``n`` MAU-Synth records per (style, box format), plus every class name and synonym
    of the real sources (so real-data labels are a few tokens each, not spelled byte by byte)."""

    texts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for style in ("compact", "full"):
            for fmt in ("norm1000", "shikra"):
                for rec in synth.generate(n, f"{tmp}/{style}-{fmt}", seed=seed, image_size=32, style=style,
                                          box_format=fmt, progress=False):
                    texts += [rec.query, rec.response]
    names = sorted({s for labels in CLASS_SYNONYMS.values() for syns in labels.values() for s in syns}
                   | {lab for labels in CLASS_SYNONYMS.values() for lab in labels})
    texts += names * 20  # frequent enough to earn merges
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 1024) -> Tokenizer:
    """Byte-level BPE with single-digit tokens; special tokens get the first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` loadable by ``PreTrainedTokenizerFast.from_pretrained``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token=None,
                                   extra_special_tokens={"image_token": IMAGE_TOKEN})
    fast.chat_template = LLAVA_CHAT_TEMPLATE  # Qwen2-VL's template is set at load (processors.tiny_tokenizer)
    fast.save_pretrained(str(out_dir))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--records", type=int, default=400, help="MAU-Synth records per style and box format")
    ap.add_argument("--out", type=Path, default=ASSET_DIR)
    ap.add_argument("--fallback", action="store_true", help="use the built-in phrase corpus, not umedfast.data")
    args = ap.parse_args(argv)
    if args.fallback:
        texts = _fallback_corpus()
    else:
        try:
            texts = mau_corpus(args.records)
        except ImportError as e:
            print(f"umedfast.data not available ({e}); using the built-in phrase corpus")
            texts = _fallback_corpus()
    tok = train_tokenizer(texts, args.vocab_size)
    save_tokenizer(tok, args.out)
    print(f"vocab {tok.get_vocab_size()} from {len(texts)} texts -> {args.out}")


if __name__ == "__main__":
    main()
