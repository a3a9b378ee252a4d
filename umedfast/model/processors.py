"""Processors (tokenizer + image processor + chat template) for the supported families, torchvision-free.

transformers' ``Qwen2VLProcessor`` insists on a video processor, and the video processor needs torchvision, which
the CPU machines here do not have. :class:`Qwen2VLImageProcessor` drops the video slot; it serializes as a
plain ``Qwen2VLProcessor`` so a saved directory loads with ``AutoProcessor`` wherever torchvision exists.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer, LlavaProcessor, PreTrainedTokenizerFast, Qwen2VLProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from umedfast.model.chat_templates import IMAGE_TOKEN, LLAVA_CHAT_TEMPLATE, QWEN2_VL_CHAT_TEMPLATE

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"


class Qwen2VLImageProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only (no video processor, hence no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def to_dict(self):
        d = super().to_dict()
        d["processor_class"] = "Qwen2VLProcessor"  # loadable by AutoProcessor where torchvision exists
        return d


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The shipped byte-level BPE tokenizer, with the image token of ``family`` ("llava" | "qwen2_vl")."""
    image_token = IMAGE_TOKEN if family == "llava" else "<|image_pad|>"
    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR), extra_special_tokens={"image_token": image_token})
    tok.chat_template = LLAVA_CHAT_TEMPLATE if family == "llava" else QWEN2_VL_CHAT_TEMPLATE
    return tok


def tiny_llava_processor(image_size: int, patch_size: int) -> LlavaProcessor:
    """Resize (no crop: the whole image stays visible, so normalized boxes map straight onto the patch grid)."""
    ip = CLIPImageProcessorPil(size={"height": image_size, "width": image_size}, do_center_crop=False,
                               crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=ip, tokenizer=tiny_tokenizer("llava"), patch_size=patch_size,
                          vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def tiny_qwen2_vl_processor(image_size: int) -> Qwen2VLImageProcessor:
    """Fixed pixel budget ``image_size**2`` so a square image becomes an (image_size/14)^2 patch grid."""
    ip = Qwen2VLImageProcessorPil(min_pixels=image_size * image_size, max_pixels=image_size * image_size)
    return Qwen2VLImageProcessor(image_processor=ip, tokenizer=tiny_tokenizer("qwen2_vl"),
                                 chat_template=QWEN2_VL_CHAT_TEMPLATE)


def load_processor(path: str | Path, arch: str):
    """Processor of a local checkpoint; Qwen2-VL falls back to the image-only processor without torchvision."""
    try:
        return AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except (ImportError, AttributeError, TypeError, ValueError, OSError):  # no torchvision -> no video processor
        if arch not in ("qwen2_vl", "qwen2_5_vl"):
            raise

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ip = Qwen2VLImageProcessorPil.from_pretrained(str(path), local_files_only=True)
    template = _read_chat_template(Path(path)) or getattr(tok, "chat_template", None)
    return Qwen2VLImageProcessor(image_processor=ip, tokenizer=tok, chat_template=template)


def _read_chat_template(path: Path) -> str | None:

    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None
