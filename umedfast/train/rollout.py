"""Stage-2 rollouts: sample K candidates per query with KV-cache generation, then build the scoring batch.

Layout: the batch is query-major (rows ``q*K .. q*K+K-1`` are the candidates of query ``q``). Sequences keep the
left-padded prompt of generation followed by the sampled tokens, so the tokens scored are exactly the tokens sampled
(no decode/re-encode round trip). ``P`` is the padded prompt width, ``L`` the longest response.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from umedfast.rl.losses import entropy_from_logits, gather_logprobs


@dataclass
class Rollout:
    """Sampled candidates of one batch of queries.

    records: the B = n_queries * K records (each query repeated K times); texts: decoded responses (B);
    batch: model inputs over prompt + response (``input_ids``/``attention_mask`` Long[B, P+L], ``pixel_values``,
    ``orig_image_sizes``...); response_ids Long[B, L]; response_mask Float[B, L] (1 up to and including EOS);
    prompt_width P; truncated Bool[B]: the response hit the length cap without writing EOS.
    """

    records: list
    texts: list[str]
    batch: dict
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    prompt_width: int
    truncated: torch.Tensor | None = None
    anchor: "Rollout | None" = None  # ppo.baseline=greedy: one greedy response per query (scored, never trained)

    def __post_init__(self):
        if self.truncated is None:
            self.truncated = torch.zeros(self.response_ids.shape[0], dtype=torch.bool)


def response_mask_from_ids(ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """Float[B, L]: 1 on tokens up to and including the first EOS of each row (all ones if there is none)."""
    if eos_id is None:
        return torch.ones_like(ids, dtype=torch.float32)
    is_eos = (ids == eos_id).int()
    after = torch.cumsum(is_eos, dim=1) - is_eos  # number of EOS strictly before each position
    return (after == 0).float()


def clean_generation_config(tok, max_new_tokens: int, suppress: list[int]):
    """A ``GenerationConfig`` with NO logits processor but ours: greedy over the Gumbel-perturbed logits of
    :class:`~umedfast.train.sampling.CounterGumbelSampler`, so the tokens are drawn from exactly
    ``softmax(logits / T)``, the distribution PPO scores. A checkpoint's ``generation_config.json`` (repetition
    penalty, top-k / top-p, its own suppressed or forced tokens, min length, ...) would otherwise be merged in by
    ``generate`` and make sampling != scoring."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                            bos_token_id=getattr(tok, "bos_token_id", None), suppress_tokens=suppress,
                            repetition_penalty=1.0)


class _only_generation_config:
    """Context: the model's own ``generation_config`` replaced by ``gc`` (HF's ``generate`` fills every unset field
    of a passed config from the model's, so passing a clean one is not enough)."""

    def __init__(self, model, gc):
        self.base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.gc = gc

    def __enter__(self):
        self.saved = getattr(self.base, "generation_config", None)
        self.base.generation_config = self.gc
        return self.gc

    def __exit__(self, *exc):
        self.base.generation_config = self.saved
        return False


@torch.no_grad()
def sample_candidates(bundle, records: list, *, k: int, temperature: float, top_p: float,
                      max_new_tokens: int, seed: int = 0, step: int = 0, synced_gpus: bool = False,
                      greedy: bool = False, prompts: dict | None = None) -> Rollout:
    """Generate ``k`` sampled responses per record with the KV cache; returns the :class:`Rollout`.
    ``greedy``: argmax decoding instead (the ReMax anchor of ``ppo.baseline=greedy``; use ``k=1``).

    Candidate ``j`` of a record is a pure function of (``seed``, ``step``, record id, ``j``) and the model
    (:mod:`umedfast.train.sampling`), so any split of the queries across ranks samples the same tokens.
    ``synced_gpus``: keep stepping until every rank is done (FSDP: each forward is a collective).
    ``prompts``: ``records`` already collated for generation (the input pipeline's batch), else collated here.
    """
    from transformers import LogitsProcessorList

    from umedfast.model import collate_chat, model_inputs
    from umedfast.train.sampling import CounterGumbelSampler, row_keys

    model = bundle.model
    tok = bundle.tokenizer
    reps = [r for r in records for _ in range(k)]
    # collate each query once (image decode + image processor + chat template), then repeat its rows K times
    one = prompts if prompts is not None else collate_chat(bundle, list(records), for_generation=True)
    gen = select_rows(one, torch.arange(len(records), device=one["input_ids"].device).repeat_interleave(k), bundle)
    was = model.training
    model.eval()
    try:
        keys = row_keys(seed, step, [r.id for r in reps], [j for _ in records for j in range(k)])
        sampler = CounterGumbelSampler(keys, gen["input_ids"].shape[1], temperature, top_p)
        # the only other processor: an image placeholder in a response breaks the scoring forward (features !=
        # tokens), so it is suppressed (its probability is ~0 after SFT; scoring does not renormalize for it)
        gc = clean_generation_config(tok, max_new_tokens, [bundle.image_token_id])
        with _only_generation_config(model, gc):
            seq = model.generate(**model_inputs(gen), generation_config=gc,
                                 logits_processor=LogitsProcessorList([] if greedy else [sampler]),
                                 synced_gpus=synced_gpus)
    finally:
        model.train(was)
    return _assemble(bundle, reps, gen, seq[:, gen["input_ids"].shape[1]:], max_new_tokens)


def _assemble(bundle, reps: list, gen: dict, resp: torch.Tensor, cap: int | None = None) -> Rollout:
    """Join the left-padded prompts ``gen`` with response ids ``resp`` Long[B, L'] into a :class:`Rollout`.
    ``cap``: the generation's max_new_tokens (a row of that length without EOS is marked truncated)."""
    tok = bundle.tokenizer
    p = gen["input_ids"].shape[1]
    mask = response_mask_from_ids(resp, tok.eos_token_id)
    has_eos = (resp == tok.eos_token_id).any(1) if tok.eos_token_id is not None else torch.zeros(
        resp.shape[0], dtype=torch.bool, device=resp.device)
    truncated = (~has_eos & (mask.sum(1) >= cap)).cpu() if cap else torch.zeros(resp.shape[0], dtype=torch.bool)
    length = max(int(mask.sum(1).max().item()) if resp.numel() else 0, 1)
    if resp.shape[1] < length:  # empty generation: score one pad token, masked out below
        resp = torch.cat([resp, resp.new_full((resp.shape[0], length - resp.shape[1]), tok.pad_token_id)], 1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], length - mask.shape[1])], 1)
    resp, mask = resp[:, :length], mask[:, :length]
    mask = mask * (resp != bundle.image_token_id).float()  # belt and braces: never score a placeholder
    resp = torch.where(mask.bool(), resp, torch.full_like(resp, tok.pad_token_id))
    texts = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=True).strip() for r, m in zip(resp, mask)]
    batch = {k_: v for k_, v in gen.items() if k_ not in ("input_ids", "attention_mask", "prompt_lengths")}
    batch["input_ids"] = torch.cat([gen["input_ids"], resp], dim=1)
    batch["attention_mask"] = torch.cat([gen["attention_mask"], mask.to(gen["attention_mask"].dtype)], dim=1)
    if "mm_token_type_ids" in gen:
        batch["mm_token_type_ids"] = (batch["input_ids"] == bundle.image_token_id).long()
    return Rollout(reps, texts, batch, resp, mask, p, truncated)


def rollout_from_texts(bundle, records: list, texts: list[str]) -> Rollout:
    """A :class:`Rollout` for given responses (one per record, already query-major), e.g. to score references."""
    from umedfast.model import collate_chat

    tok = bundle.tokenizer
    gen = collate_chat(bundle, records, for_generation=True)
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    L = max(len(r) for r in rows)
    resp = torch.full((len(rows), L), tok.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        resp[i, :len(r)] = torch.tensor(r)
    return _assemble(bundle, list(records), gen, resp.to(gen["input_ids"].device))


def select_rows(batch: dict, idx: torch.Tensor, bundle) -> dict:
    """Rows ``idx`` of a scoring batch (handles Qwen2-VL's flattened ``pixel_values``)."""
    out = {}
    for key, v in batch.items():
        if key == "pixel_values" and bundle.arch != "llava":
            thw = batch["image_grid_thw"]
            counts = (thw[:, 0] * thw[:, 1] * thw[:, 2]).tolist()
            starts = [0]
            for c in counts:
                starts.append(starts[-1] + c)
            out[key] = torch.cat([v[starts[i]:starts[i + 1]] for i in idx.tolist()])
        elif torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch["input_ids"].shape[0]:
            out[key] = v[idx]
        else:
            out[key] = v
    return out


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument of ``model.forward``: transformers renames ``past_key_values`` to ``cache``
    (the old name is deprecated, to be removed in 5.40); older releases know only ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefix_shared_hidden(model, batch: dict, k: int, prompt_width: int, length: int, bundle):
    """Last hidden states Float[B, L, H] at positions P-1 .. P+L-2 with the prompt run ONCE per query.

    Rows must be query-major groups of ``k`` candidates sharing one prompt (image + query). The prompt's KV cache
    is repeated K times (``DynamicCache.batch_repeat_interleave``: differentiable, so training forwards work) and
    only the response tokens run over it; positions (arange) and masks are those of the full forward, log-probs
    agree to ~1e-6 and gradients to float rounding. 3.4x faster than the full no-grad forward at the demo's sizes
    (P=118, L=48, K=8). LLaVA layout; Qwen2-VL's M-RoPE would need its position ids passed explicitly.
    Returns (hidden, base HF model owning ``lm_head``).
    """
    from umedfast.model import model_inputs

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids, P = batch["input_ids"], prompt_width
    first = model_inputs(select_rows(batch, torch.arange(0, ids.shape[0], k, device=ids.device), bundle))
    first["input_ids"], first["attention_mask"] = first["input_ids"][:, :P], first["attention_mask"][:, :P]
    out = base.model(**first, use_cache=True, return_dict=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    h_last = out.last_hidden_state[:, -1:].repeat_interleave(k, 0)
    if length == 1:
        return h_last, base
    rest = base.model(input_ids=ids[:, P:P + length - 1], attention_mask=batch["attention_mask"][:, :P + length - 1],
                      **{_cache_kwarg(base.model): cache}, use_cache=False, return_dict=True)
    return torch.cat([h_last, rest.last_hidden_state], 1), base


def _can_share_prefix(model, bundle, k: int, n_rows: int) -> bool:
    # DDP must see its own forward (gradient hooks) and FSDP2 its root forward (the root's weights are gathered
    # there): keep the full forward for both; Qwen2-VL needs M-RoPE positions
    from umedfast.train.fsdp import is_sharded

    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    return k > 1 and n_rows % k == 0 and bundle is not None and bundle.arch == "llava" and not ddp \
        and not is_sharded(model)


def head_logprobs_entropy(base, hidden: torch.Tensor, response_ids: torch.Tensor, temperature: float = 1.0):
    """(logprobs Float32[B, L], entropy Float32[B, L]) of ``response_ids`` [B, L] under ``softmax(logits / T)``,
    from the last hidden states ``hidden`` [B, L, H] and the LM head of ``base``, through the fused kernel
    (``umedfast.kernels``): the [B, L, V] logits are never materialized (Triton on GPU, the vocabulary-chunked torch
    path on CPU)."""
    from umedfast.kernels import token_logprobs_entropy

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
    from umedfast.model import model_inputs

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
    from umedfast.model import model_inputs

    if _can_share_prefix(model, bundle, k, response_ids.shape[0]):
        with torch.no_grad():
            h, base = prefix_shared_hidden(model, batch, k, prompt_width, response_ids.shape[1], bundle)
            return head_logprobs_entropy(base, h, response_ids, temperature)[0]
    with torch.no_grad():
        logits = model(**model_inputs(batch), use_cache=False).logits
    length = response_ids.shape[1]
    return gather_logprobs(_tempered(logits[:, prompt_width - 1:prompt_width - 1 + length], temperature), response_ids)
