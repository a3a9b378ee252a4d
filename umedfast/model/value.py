"""Critic: a scalar value per token from the last hidden state of the policy (or of a separate critic model)."""
from __future__ import annotations

import inspect

import torch
from torch import nn

from umedfast.model.collate import MODEL_KEYS


def hidden_size(model) -> int:
    """Width of the language model's last hidden state."""
    cfg = model.config
    return int(getattr(cfg, "text_config", cfg).hidden_size)


class ValueHead(nn.Module):
    """Linear map Float[B,T,H] -> Float[B,T] (float32, whatever the backbone dtype).

    Zero-initialized weight: the first value estimates are 0, so early PPO advantages equal the returns and a random
    head does not inject noise.

    The head reads a DETACHED hidden state: the critic's regression gradient never reaches the policy's backbone
    (with a shared, non-detached input it grew to 0.2-0.4 of the policy gradient on the shared weights within 14
    iterations, roughly orthogonal to it). The critic is then a linear probe of the policy's features, trained by
    its own loss, learning rate and gradient clip (``ppo.vf_coef``, ``ppo.value_lr``, ``ppo.value_max_grad_norm``).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.detach().to(self.summary.weight.dtype)).squeeze(-1)


def last_hidden_and_logits(model, batch: dict, *, need_logits: bool = True):
    """Run the backbone once: (last hidden state Float[B,T,H], logits Float[B,T,V] or None).

    Calls the inner ``model.model`` (LLaVA/Qwen2-VL layout in transformers 5) and the ``lm_head`` itself, so no
    per-layer hidden states are kept; LoRA layers injected by peft are inside and stay active (or disabled).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    allowed = set(inspect.signature(inner.forward).parameters)
    inputs = {k: v for k, v in batch.items() if k in MODEL_KEYS and k in allowed}
    out = inner(**inputs, use_cache=False, return_dict=True)
    h = out.last_hidden_state
    return h, (base.lm_head(h) if need_logits else None)


class PolicyWithValue(nn.Module):
    """Policy logits + critic values in one call.

    ``forward(**batch) -> (logits Float[B,T,V], values Float[B,T])``; extra batch keys (labels, prompt_lengths, ...)
    are ignored. With ``critic`` (a separate HF VLM of the same family, fed the same batch) the values come from
    its last hidden state instead, and the policy's hidden state is not reused.
    """

    def __init__(self, bundle, value_head: ValueHead | None = None, critic=None):
        super().__init__()
        self.bundle = bundle
        self.policy = bundle.model
        self.critic = critic
        width = hidden_size(critic if critic is not None else bundle.base_model)
        self.value_head = value_head if value_head is not None else ValueHead(width)
        if self.value_head.hidden_size != width:
            raise ValueError(f"value head expects hidden size {self.value_head.hidden_size}, backbone has {width}")
        self.value_head.to(bundle.device)

    def forward(self, **batch) -> tuple[torch.Tensor, torch.Tensor]:
        h, logits = last_hidden_and_logits(self.policy, batch)
        if self.critic is not None:
            h, _ = last_hidden_and_logits(self.critic, batch, need_logits=False)
        return logits, self.value_head(h)
