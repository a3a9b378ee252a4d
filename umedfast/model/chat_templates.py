"""Special tokens and chat templates of the tiny offline models (ChatML turns, like Qwen2-VL).

LLaVA marks the image with one ``<image>`` placeholder that the processor expands to one token per patch;
Qwen2-VL wraps ``<|image_pad|>`` (expanded to one token per 2x2 merged patch) in ``<|vision_start|>...<|vision_end|>``.
Both templates accept HF message lists whose ``content`` is a string or a list of ``{"type": "image"|"text"}`` items.
"""
from __future__ import annotations

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = (
    "<pad>", "<s>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN,
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)

_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ IMAGE }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

LLAVA_CHAT_TEMPLATE = _TEMPLATE.replace("{{ IMAGE }}", "{{ '<image>\\n' }}")
QWEN2_VL_CHAT_TEMPLATE = _TEMPLATE.replace("{{ IMAGE }}", "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}")
