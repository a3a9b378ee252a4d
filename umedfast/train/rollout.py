"""Stage-2 rollouts: sample K candidates per query with KV-cache generation and assemble them into a ``Rollout``.

Layout: the batch is query-major (rows ``q*K .. q*K+K-1`` are the candidates of query ``q``). Sequences keep the
left-padded prompt of generation followed by the sampled tokens, so the tokens scored are exactly the tokens sampled
(no decode/re-encode round trip). ``P`` is the padded prompt width, ``L`` the longest response.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList

from umedfast.model.collate import collate_chat, model_inputs, select_rows
from umedfast.train.sampling import CounterGumbelSampler, row_keys


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
    tok = bundle.tokenizer
    gen = collate_chat(bundle, records, for_generation=True)
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    L = max(len(r) for r in rows)
    resp = torch.full((len(rows), L), tok.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        resp[i, :len(r)] = torch.tensor(r)
    return _assemble(bundle, list(records), gen, resp.to(gen["input_ids"].device))


