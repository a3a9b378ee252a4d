"""Vision Relevance Reward (VRR) read from a HF vision-language model by the fused ``vrr_attention`` kernel.

``vrr_forward`` runs one no-grad forward of the model with its LANGUAGE MODEL switched to the attention implementation
``"umedfast_vrr"`` (registered here in transformers' ``AttentionInterface``; the vision tower keeps its own
implementation because only ``config.text_config`` is switched). Every decoder self-attention layer then computes
softmax attention with ``kernels.vrr_attention``, which also returns, per head and query, the softmax mass on the keys
of the abnormal region. The previous implementation is restored afterwards, even on error.

Definition (the averaging choice):

    vrr[b] = mean_{layer in layers} mean_{head} sum_{i : class_mask[b, i]} sum_{j : region_mask[b, j]} p[b, head, i, j]

with ``p`` the FULL softmax row of query ``i`` over all keys it may attend to (causal, non-padding), not the
region-only denominator of the paper's formula (DESIGN.md, "VRR denominator"). So the reward SUMS over the
abnormal-class token positions (a response that names the class in more tokens, each looking at the region, earns
more, as in the paper's sum over class tokens) and AVERAGES over heads and over the chosen layers (default: all layers
of the language model), which keeps it on the scale of one attention row. The queries are the positions the caller
marks in ``class_mask``. Stage-2 PPO (``umedfast.train.rollout_rewards.class_token_mask``, ``rewards.vrr_query``) marks by default
the position that PRODUCED each class token (position ``P-1+j`` predicts response token ``j``): its attention is
what the model looked at when it chose the class word. The class token's own position (``vrr_query=token``) reads
the token and predicts the NEXT one. Evidence for the choice: docs/training.md, "VRR query". A sample with no
class position gets 0. Stage-2 PPO divides VRR by
its maximum over the K candidates of a query, so the overall scale cancels there.

Padding and causality come from the 2-D ``attention_mask`` of the batch (left or right padding): the mask function
registered for ``"umedfast_vrr"`` hands the attention function the [B, T] key padding mask instead of a 4-D N x N mask,
and causality comes from the attention module (``is_causal``). Sliding-window, packed or custom masks are refused.
"""
from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function, causal_mask_function,
                                        prepare_padding_mask)

from umedfast.kernels import vrr_attention

ATTN_IMPLEMENTATION = "umedfast_vrr"


@dataclass
class _VRRState:
    region_mask: torch.Tensor  # Bool[B, T]
    class_mask: torch.Tensor  # Float32[B, T]
    layers: frozenset  # layer indices of the language model whose mass is collected
    total: torch.Tensor  # Float32[B], sum over visited layers of the per-layer value
    seen: set = field(default_factory=set)


_STATE: contextvars.ContextVar[_VRRState | None] = contextvars.ContextVar("umedfast_vrr_state", default=None)


def vrr_key_padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=causal_mask_function,
                         attention_mask=None, local_size=None, **kwargs):
    """Mask function for ``"umedfast_vrr"``: returns the key padding mask Bool[B, kv_length] (True = real token) or
    None, instead of a 4-D mask; the kernel applies causality itself."""
    if mask_function is not causal_mask_function and mask_function is not bidirectional_mask_function:
        raise NotImplementedError(
            f"{ATTN_IMPLEMENTATION!r} supports plain causal or bidirectional masks with key padding; this model asked "
            f"for a custom mask ({getattr(mask_function, '__name__', mask_function)}: sliding window, packed "
            "sequences or an image overlay)"
        )
    if local_size is not None:
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION!r} does not support local (sliding/chunked) attention")
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            f"{ATTN_IMPLEMENTATION!r} expects a 2-D attention_mask [B, T]; got {tuple(attention_mask.shape)}"
        )
    padding = prepare_padding_mask(attention_mask.bool(), kv_length, kv_offset)
    return padding[:, kv_offset: kv_offset + kv_length]


def vrr_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function (``sdpa_attention_forward`` signature) running ``kernels.vrr_attention``.

    query [B,Hq,Nq,D], key/value [B,Hkv,Nk,D]; ``attention_mask`` is the Bool[B, Nk] key padding mask from
    :func:`vrr_key_padding_mask` or None. Returns (attn_output [B,Nq,Hq,D], None). Inside :func:`vrr_forward` it adds
    this layer's per-sample class-token region mass to the running VRR.
    """
    if dropout:
        raise ValueError(
            f"{ATTN_IMPLEMENTATION!r} is forward-only scoring: attention dropout must be 0 (call model.eval())"
        )
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION!r} supports neither softcap nor sliding-window attention")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"{ATTN_IMPLEMENTATION!r} got a {attention_mask.dim()}-D mask; it expects the [B, T] key padding mask "
            "built by its own mask function (the model built its mask with another attention implementation)"
        )
    if value.shape[-1] != query.shape[-1]:
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION!r} needs equal q/v head dims")
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    B, Hq, Nq, D = query.shape
    Nk = key.shape[2]

    state = _STATE.get()
    layer_idx = getattr(module, "layer_idx", None)
    collect = state is not None and layer_idx in state.layers
    if collect:
        if state.region_mask.shape != (B, Nk) or Nq != Nk:
            raise ValueError(
                f"VRR masks are [B, T] = {tuple(state.region_mask.shape)} but layer {layer_idx} attends "
                f"{Nq} queries to {Nk} keys in batch {B} (vrr_forward runs one full forward without cache)"
            )
        region = state.region_mask
    else:  # all False: the kernel skips the region reduction on every block
        region = torch.zeros(B, Nk, dtype=torch.bool, device=query.device)
    padding = attention_mask.to(device=query.device, dtype=torch.bool) if attention_mask is not None else None

    out = torch.empty(B, Nq, Hq, D, dtype=query.dtype, device=query.device)  # written in place through a view
    _, mass = vrr_attention(query, key, value, region, causal=bool(is_causal), key_padding_mask=padding, scale=scaling,
                            out=out.transpose(1, 2))
    if collect:
        # [B,Hq,Nq] -> sum over class positions, mean over heads -> [B]
        state.total += (mass * state.class_mask[:, None, :]).sum(-1).mean(1)
        state.seen.add(layer_idx)
    return out, None


AttentionInterface.register(ATTN_IMPLEMENTATION, vrr_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, vrr_key_padding_mask)


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _set_lm_attn(model, implementation: str) -> None:
    """Switch only the language model (the ``text_config`` sub-model) to ``implementation``."""
    if "text_config" in getattr(model.config, "sub_configs", {}):
        model.set_attn_implementation({"text_config": implementation})
    else:
        model.set_attn_implementation(implementation)


def _model_inputs(model, batch: dict) -> dict:
    """Keep the batch entries the model's forward names (collate_chat adds e.g. ``prompt_lengths``); drop labels."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrapper
    params = inspect.signature(base.forward).parameters
    return {k: v for k, v in batch.items() if k in params and k not in ("labels", "use_cache")}


def vrr_forward(model, batch: dict, region_mask: torch.Tensor, class_mask: torch.Tensor, *, layers=None):
    """One no-grad forward of a HF VLM that also returns the Vision Relevance Reward per sample.

    Args:
        model: a HF ``*ForConditionalGeneration`` (LLaVA family, Qwen2-VL, Qwen2.5-VL) or a decoder LM, possibly peft.
        batch: model inputs, ``input_ids`` [B, T], ``attention_mask`` [B, T] (left or right padding), ``pixel_values``
            (+ ``image_grid_thw`` for Qwen); other keys the forward does not take are ignored.
        region_mask: Bool[B, T], True at image-token positions whose patch lies in the abnormal region (the keys).
        class_mask: Bool[B, T], True at the positions of the abnormal-class tokens (the queries).
        layers: indices of language-model layers to average over (negative counts from the end); None = all.

    Returns:
        (outputs, vrr): the model's usual outputs, and Float32[B] as defined in the module docstring.
    """
    input_ids = batch.get("input_ids")
    if input_ids is None:
        raise ValueError("vrr_forward needs batch['input_ids'] [B, T]")
    B, T = input_ids.shape
    for name, m in (("region_mask", region_mask), ("class_mask", class_mask)):
        if m.dtype != torch.bool or tuple(m.shape) != (B, T):
            raise ValueError(f"{name} must be bool [B, T] = [{B}, {T}]; got {m.dtype} {tuple(m.shape)}")
    n_layers = _text_config(model).num_hidden_layers
    chosen = frozenset(range(n_layers)) if layers is None else _normalize_layers(layers, n_layers)
    device = input_ids.device
    state = _VRRState(
        region_mask=region_mask.to(device).contiguous(),
        class_mask=class_mask.to(device=device, dtype=torch.float32),
        layers=chosen,
        total=torch.zeros(B, dtype=torch.float32, device=device),
    )
    previous = _text_config(model)._attn_implementation
    _set_lm_attn(model, ATTN_IMPLEMENTATION)
    token = _STATE.set(state)
    try:
        with torch.no_grad():
            outputs = model(**_model_inputs(model, batch), use_cache=False)
    finally:
        _STATE.reset(token)
        _set_lm_attn(model, previous)
    if state.seen != set(chosen):
        raise RuntimeError(
            f"VRR collected layers {sorted(state.seen)} but expected {sorted(chosen)}: the language model did not "
            f"route its attention through {ATTN_IMPLEMENTATION!r}"
        )
    return outputs, state.total / len(chosen)


def _normalize_layers(layers, n_layers: int) -> frozenset:
    """LM layer indices (negative counts from the end) -> frozenset of indices in [0, n_layers)."""
    chosen = set()
    for i in layers:
        i = int(i)
        if not -n_layers <= i < n_layers:
            raise ValueError(f"layer index {i} out of range for a language model with {n_layers} layers")
        chosen.add(i % n_layers)
    if not chosen:
        raise ValueError("layers must name at least one layer (or be None for all)")
    return frozenset(chosen)
