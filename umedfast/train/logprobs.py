"""Log-probs, entropy and values of sampled responses under the policy (with grad) and the reference (no grad).

Both read ``softmax(logits / T)`` at the response positions (``P-1+j`` predicts response token ``j``), through the
fused kernel ``umedfast.kernels.token_logprobs_entropy`` when the K candidates of a prompt can share one prompt
forward (``umedfast.model.shared_prefix``), else from a full forward's logits."""
from __future__ import annotations

import torch

from umedfast.kernels import token_logprobs_entropy
from umedfast.model.collate import model_inputs
from umedfast.model.shared_prefix import prefix_shared_hidden
from umedfast.rl.losses import entropy_from_logits, gather_logprobs
from umedfast.train.fsdp import is_sharded


def _can_share_prefix(model, bundle, k: int, n_rows: int) -> bool:
    # DDP must see its own forward (gradient hooks) and FSDP2 its root forward (the root's weights are gathered
    # there): keep the full forward for both; Qwen2-VL needs M-RoPE positions
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    return k > 1 and n_rows % k == 0 and bundle is not None and bundle.arch == "llava" and not ddp \
        and not is_sharded(model)


def head_logprobs_entropy(base, hidden: torch.Tensor, response_ids: torch.Tensor, temperature: float = 1.0):
    """(logprobs Float32[B, L], entropy Float32[B, L]) of ``response_ids`` [B, L] under ``softmax(logits / T)``,
    from the last hidden states ``hidden`` [B, L, H] and the LM head of ``base``, through the fused kernel
    (``umedfast.kernels``): the [B, L, V] logits are never materialized (Triton on GPU, the vocabulary-chunked torch
    path on CPU)."""
    head = base.lm_head
    return token_logprobs_entropy(hidden, head.weight, response_ids, bias=head.bias, temperature=temperature,
                                  backend="triton" if hidden.is_cuda else "torch")


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / T``; T = 1 returns ``logits`` itself (no [B, L, V] copy)."""
    return logits if temperature == 1.0 else logits / temperature


def policy_outputs(policy_with_value, batch: dict, response_ids: torch.Tensor, prompt_width: int,
                   *, need_entropy: bool = False, k: int = 1, bundle=None, temperature: float = 1.0):
    """Forward the policy (+ value head) and read the response positions.

    Log-probs and entropy are those of the distribution the candidates were sampled from, ``softmax(logits / T)``
    (``temperature``): with T != 1, scoring at T = 1 would make PPO's ratio and KL refer to another policy than
    the one that generated the tokens.

    Returns (logprobs Float[B, L] of the sampled tokens, values Float[B, L] of the state before each token,
    entropy Float[B, L] or None). Position ``P-1+j`` predicts response token ``j``. ``k > 1`` (rows are query-major
    groups of k candidates of one prompt) runs each prompt once (:func:`prefix_shared_hidden`).
    """
    separate_critic = getattr(policy_with_value, "critic", None) is not None  # values come from another model
    if not separate_critic and _can_share_prefix(policy_with_value, bundle, k, response_ids.shape[0]):
        h, base = prefix_shared_hidden(policy_with_value.policy, batch, k, prompt_width, response_ids.shape[1], bundle)
        lp, ent = head_logprobs_entropy(base, h, response_ids, temperature)
        return lp, policy_with_value.value_head(h).float(), ent if need_entropy else None
    logits, values = policy_with_value(**model_inputs(batch))
    length = response_ids.shape[1]
    sl = slice(prompt_width - 1, prompt_width - 1 + length)
    lg = _tempered(logits[:, sl], temperature)
    lp = gather_logprobs(lg, response_ids)
    ent = entropy_from_logits(lg) if need_entropy else None
    return lp, values[:, sl].float(), ent


def reference_logprobs(model, batch: dict, response_ids: torch.Tensor, prompt_width: int, *, k: int = 1,
                       bundle=None, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of the sampled tokens under ``model``'s ``softmax(logits / T)`` (no grad): Float[B, L].
    ``k`` and ``temperature``: see :func:`policy_outputs`."""
    if _can_share_prefix(model, bundle, k, response_ids.shape[0]):
        with torch.no_grad():
            h, base = prefix_shared_hidden(model, batch, k, prompt_width, response_ids.shape[1], bundle)
            return head_logprobs_entropy(base, h, response_ids, temperature)[0]
    with torch.no_grad():
        logits = model(**model_inputs(batch), use_cache=False).logits
    length = response_ids.shape[1]
    return gather_logprobs(_tempered(logits[:, prompt_width - 1:prompt_width - 1 + length], temperature), response_ids)
