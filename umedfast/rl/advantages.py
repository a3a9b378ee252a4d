"""Advantage estimators over response tokens.

Shapes: ``B`` sequences, ``T`` response positions (right-padded), ``mask [B, T]`` is 1 on real response tokens.
GAE uses a critic; GRPO and RLOO are critic-free group baselines over the ``K`` candidates of each query
(the batch is laid out query-major: rows ``q*K .. q*K+K-1`` are the candidates of query ``q``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last true position of each row of ``mask [B, T]`` -> ``Long[B]`` (0 for an empty row)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.zeros_like(pos)).max(dim=1).values


def token_rewards(seq_reward: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: ``-kl_coef * kl_t`` on every response token, plus the sequence reward on the last one.

    seq_reward: Float[B]; kl: Float[B, T] (per-token KL estimate to the reference); mask: [B, T] -> Float[B, T].
    """
    m = mask.to(kl.dtype)
    r = -kl_coef * kl * m
    idx = last_token_index(mask)
    r[torch.arange(r.shape[0], device=r.device), idx] += seq_reward.to(r.dtype) * m.any(dim=1).to(r.dtype)
    return r


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016) over response tokens.

    rewards, values: Float[B, T]; mask: [B, T] (right-padded response tokens). The value after the last response
    token is 0 (the episode ends). Returns ``(advantages, returns)`` Float[B, T], zero outside the mask, with
    ``returns = advantages + values`` (the critic's regression target).
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    b, t = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for i in reversed(range(t)):
        next_v = values[:, i + 1] if i + 1 < t else torch.zeros_like(last)
        delta = rewards[:, i] + gamma * next_v - values[:, i]
        last = delta + gamma * lam * last
        last = last * m[:, i]  # padding positions carry nothing back
        adv[:, i] = last
    return adv, (adv + values) * m


def span_advantages(full: Tensor, kl_reward: Tensor, mask: Tensor, in_box: Tensor, after_box: Tensor,
                    box_gain: Tensor, rest_gain: Tensor, gamma: float = 1.0) -> Tensor:
    """Credit each span of an answer with the part of the reward it can still change (causal credit assignment).

    ``full`` Float[B, T]: the whole-answer advantages (kept on the tokens before the first box: the Detection
    decision, how many findings, whether to write a box at all). ``in_box`` / ``after_box`` Bool[B, T]
    (``umedfast.model.box_token_spans``): the box tokens get ``box_gain`` Float[B] (the candidate's localization
    reward minus its query's baseline for it) and the tokens after the first box get ``rest_gain`` Float[B] (the
    rest of the reward minus its baseline). Both add the KL reward still to come (discounted by ``gamma``),
    ``kl_reward`` Float[B, T] (per token, ``-kl_coef * kl_t``).

    Why: the tokens after the boxes cannot change the boxes, so the localization reward is pure noise for the
    class they write, and the relevance / VRR outcome of the class is noise for the box coordinates (a box token
    credited with VRR learns whatever raises the class tokens' attention, e.g. a wider box). Tokens before the
    first box keep the whole return: they choose whether a box is written. Returns Float[B, T], 0 outside ``mask``.
    """
    gain = torch.where(in_box.bool(), box_gain.to(full)[:, None], rest_gain.to(full)[:, None])  # [B, T]
    return credit_tokens(full, kl_reward, mask, in_box.bool() | after_box.bool(), gain, gamma)


def credit_tokens(adv: Tensor, kl_reward: Tensor, mask: Tensor, where: Tensor, gain: Tensor,
                  gamma: float = 1.0) -> Tensor:
    """Float[B, T]: ``adv`` with the tokens in ``where`` Bool[B, T] re-credited with ``gain`` Float[B, T] plus the
    KL reward still to come from each token on (``kl_reward`` Float[B, T] = ``-kl_coef * kl_t``, discounted by
    ``gamma``); 0 outside ``mask``. The one place span and coordinate advantages replace a token's credit."""
    kl_togo = gae_advantages(kl_reward, torch.zeros_like(kl_reward), mask, gamma, 1.0)[0]  # the return to go
    return torch.where(where.bool(), gain.to(adv) + kl_togo, adv) * mask.to(adv.dtype)


def inverse_mean_weights(seq_reward: Tensor, k: int, floor: float, min_mean: float = 0.1) -> Tensor:
    """Float[B] -> Float[B]: ``1 / max(mean_K(r) - floor, min_mean)`` per query group, repeated over its K rows.

    Scaling a query's policy-gradient terms by ``1 / E[R_q]`` turns the objective ``sum_q E[R_q]`` into
    ``sum_q log E[R_q]`` (``floor``: the lowest reward reachable, so ``R - floor >= 0``). Why: for a binary decision
    with success probability ``p``, the plain policy gradient on its logit is ``p (1 - p) * gap``, so a query the
    policy mostly gets wrong (small ``p``: a rare class, e.g. a normal chest X-ray) pulls ``p / (1 - p)`` times less
    than cross-entropy would, and over images it cannot yet tell apart the common answer can win ("rich get
    richer"). With the ``1 / p`` factor each query pulls like its cross-entropy term ``(y - p)``. Measured on the
    demo over 3 seeds: no gain (docs/training.md, ``ppo.query_weight``)."""
    g = _groups(seq_reward, k)
    w = 1.0 / (g.mean(dim=1) - floor).clamp_min(min_mean)
    return w.repeat_interleave(k)


def _groups(seq_reward: Tensor, k: int) -> Tensor:
    if seq_reward.numel() % k != 0:
        raise ValueError(f"batch of {seq_reward.numel()} rewards is not a multiple of the group size K={k}")
    return seq_reward.view(-1, k)


def grpo_advantages(seq_reward: Tensor, k: int, scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024): ``(r - mean_group) / (std_group + eps)``; Float[B] -> Float[B].

    ``scale_std=False`` gives Dr.GRPO's unscaled variant. std is the unbiased group std (0 when K == 1).
    """
    g = _groups(seq_reward, k)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale_std and k > 1:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def rloo_advantages(seq_reward: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``; Float[B] -> Float[B].

    Equals ``K/(K-1) * (r_i - mean_group)``. K == 1 has no baseline: the reward itself is returned.
    """
    g = _groups(seq_reward, k)
    if k == 1:
        return g.reshape(-1).clone()
    loo = (g.sum(dim=1, keepdim=True) - g) / (k - 1)
    return (g - loo).reshape(-1)


def group_advantages(seq_reward: Tensor, mask: Tensor, k: int, kind: str) -> Tensor:
    """Broadcast a critic-free sequence advantage (``kind`` in {"grpo", "rloo"}) to every response token -> [B, T]."""
    if kind == "grpo":
        a = grpo_advantages(seq_reward, k)
    elif kind == "rloo":
        a = rloo_advantages(seq_reward, k)
    else:
        raise ValueError(f"unknown group advantage {kind!r}; expected 'grpo' or 'rloo'")
    return a[:, None].to(torch.float32) * mask.to(torch.float32)
