"""One stage-2 PPO iteration, in five named pieces that the trainer, the benchmark and the tests all call.

    ro     = rollout(st, queries, step)          # sample K candidates per query (clean sampling config)
    sc     = score(st, ro)                       # old log-probs, values, reference log-probs, AAR rewards
    adv, ret = advantages(st, ro, sc)            # GAE (critic, k1 KL in the reward) or a group baseline
    losses = update(st, ro, sc, adv, ret, step)  # ppo_epochs x minibatches: clipped policy / value loss, entropy
    row    = step_stats(st, ro, sc, losses)      # metrics of the iteration (reduced over ranks)

``ppo_step`` runs the five in order; ``umedfast.train.ppo.run_ppo`` is a short loop over ``ppo_step`` (data order,
scheduler, checkpoints, Ctrl-C), and ``bench/bench_ppo_step.py`` times the same function. Rows are query-major
(rows ``q*K .. q*K+K-1`` are the candidates of query ``q``); ``B`` rows, ``L`` response positions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from umedfast.config import PPOConfig, RewardsConfig, TrainConfig
from umedfast.model import PolicyWithValue, ValueHead, adapters_disabled, box_token_spans, hidden_size
from umedfast.model.collate import select_rows
from umedfast.rewards.judge import make_judge
from umedfast.rl import (credit_tokens, gae_advantages, group_advantages, inverse_mean_weights, kl_penalty,
                         masked_mean, policy_loss, rloo_advantages, span_advantages, token_rewards, value_loss)
from umedfast.train.coordinate_credit import coordinate_gains
from umedfast.train.distributed import Dist, all_gather_floats, all_reduce_sum, use_fsdp, wrap_ddp
from umedfast.train.fsdp import RootPolicyWithValue, scalar, shard_model, shard_small
from umedfast.train.logprobs import policy_outputs, reference_logprobs
from umedfast.train.metrics import NonFiniteGuard
from umedfast.train.policy import build_policy_and_reference, trainable
from umedfast.train.rollout import Rollout, sample_candidates
from umedfast.train.rollout_rewards import score_rollout


@dataclass
class PPOState:
    """Everything one iteration needs. ``train_module`` carries gradients (DDP / FSDP2 root wrapper or the bare
    ``PolicyWithValue``); ``scorer`` is the same model for no-grad scoring; ``ref`` the frozen reference copy or None
    (LoRA: the policy with its adapters disabled)."""

    cfg: PPOConfig
    bundle: object
    ref: object
    value_head: torch.nn.Module
    train_module: torch.nn.Module
    scorer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    policy_params: list
    judge: object
    policy_with_value: torch.nn.Module  # the bare PolicyWithValue (checkpoint views, parameter fraction)
    d: Dist = field(default_factory=Dist)
    device: str = "cpu"
    seed: int = 0
    box_format: str = "norm1000"
    synced_gpus: bool = False
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)


@dataclass
class Scored:
    """Scoring of a rollout. Float[B, L]: ``old_lp`` (sampling policy), ``old_v`` (critic), ``ref_lp`` (reference),
    ``kl`` (k-estimator of the config, per token); ``seq_reward`` Float[B] (AAR total minus penalties); ``rewards``
    the parts (``umedfast.train.rollout_rewards.RolloutRewards``); ``first`` = (lp, v, entropy) WITH grad when one minibatch
    of one epoch covers the batch (the training forward is then also the scoring forward), else None."""

    old_lp: torch.Tensor
    old_v: torch.Tensor
    ref_lp: torch.Tensor
    kl: torch.Tensor
    seq_reward: torch.Tensor
    rewards: object
    first: tuple | None = None


# --------------------------------------------------------------------------------------------------- building
def build_state(cfg: TrainConfig, d: Dist, device: str) -> PPOState:
    """Policy (+ value head), frozen reference, optimizer and judge from a training config (wraps for DDP/FSDP2)."""
    p = cfg.ppo
    bundle, ref = build_policy_and_reference(cfg, device)
    vh = ValueHead(hidden_size(bundle.base_model)).to(device)
    pwv = PolicyWithValue(bundle, vh)
    pwv.eval()  # no dropout: sampling, scoring and updates see the same function
    fsdp = use_fsdp(cfg.parallel, d)
    if fsdp:  # policy, frozen reference and value head sharded; every forward goes through a root module
        shard_model(bundle.model, d, device)
        if ref is not None:
            shard_model(ref, d, device)
        shard_small(vh, d, device)
        train_module = scorer = RootPolicyWithValue(pwv)
    else:
        train_module, scorer = wrap_ddp(pwv, d, device), pwv  # no-grad scoring skips DDP's hooks
    pol = trainable(bundle.model)
    opt = torch.optim.AdamW([{"params": pol, "lr": p.lr}, {"params": list(vh.parameters()), "lr": p.value_lr}],
                            weight_decay=0.0)
    judge = make_judge(cfg.judge)
    return PPOState(p, bundle, ref, vh, train_module, scorer, opt, pol, judge, pwv, d, device, cfg.seed,
                    cfg.data.box_format, fsdp, rewards=cfg.rewards)


# --------------------------------------------------------------------------------------------------- 1. rollout
def rollout(st: PPOState, queries: list, step: int, prompts: dict | None = None) -> Rollout:
    """K sampled candidates per query; sampling is keyed by (seed, step, query id, candidate), world-size free.
    ``prompts``: the queries already collated for generation (the input pipeline's batch), else collated here."""
    p = st.cfg
    ro = sample_candidates(st.bundle, queries, k=p.k, temperature=p.temperature, top_p=p.top_p,
                           max_new_tokens=p.max_new_tokens, seed=st.seed, step=step, synced_gpus=st.synced_gpus,
                           prompts=prompts)
    if p.baseline == "greedy":  # ReMax anchor: what the policy answers at evaluation (argmax), one per query
        ro.anchor = sample_candidates(st.bundle, queries, k=1, temperature=1.0, top_p=1.0,
                                      max_new_tokens=p.max_new_tokens, synced_gpus=st.synced_gpus, greedy=True,
                                      prompts=prompts)
    return ro


# --------------------------------------------------------------------------------------------------- 2. score
def single_pass(p: PPOConfig, batch_rows: int) -> bool:
    """One epoch over one minibatch: the policy has not moved since sampling, so the training forward IS the
    scoring forward (TRL does the same)."""
    return p.ppo_epochs == 1 and p.minibatch_size >= batch_rows


def reference_lp(st: PPOState, ro: Rollout) -> torch.Tensor:
    """Float[B, L] log-probs of the sampled tokens under the frozen reference (SFT) policy, at the sampling T."""
    p, pw = st.cfg, ro.prompt_width
    if st.ref is not None:
        return reference_logprobs(st.ref, ro.batch, ro.response_ids, pw, k=p.k, bundle=st.bundle,
                                  temperature=p.temperature)

    with adapters_disabled(st.bundle) as m:
        return reference_logprobs(m, ro.batch, ro.response_ids, pw, k=p.k, bundle=st.bundle,
                                  temperature=p.temperature)


def sequence_reward(p: PPOConfig, total: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Float[B]: the AAR total minus ``truncation_penalty`` for a response that hit the cap without EOS."""
    return total - p.truncation_penalty * truncated.to(total.dtype)


def score(st: PPOState, ro: Rollout) -> Scored:
    """Old log-probs and values, reference log-probs, per-token KL and the AAR rewards of ``ro``."""
    p, mask, resp, pw = st.cfg, ro.response_mask.to(st.device), ro.response_ids, ro.prompt_width
    one = single_pass(p, resp.shape[0])
    with torch.no_grad():
        if not one:
            old_lp, old_v, _ = policy_outputs(st.scorer, ro.batch, resp, pw, k=p.k, bundle=st.bundle,
                                              temperature=p.temperature)
        ref_lp = reference_lp(st, ro)
    rw = score_rollout(st.bundle, ro, st.judge, st.rewards, p.k, box_format=st.box_format)
    st.guard.add("reward_nonfinite", rw.combined.nonfinite)
    seq_r = sequence_reward(p, rw.combined.total, ro.truncated).to(st.device)
    first = None
    if one:
        first = policy_outputs(st.train_module, ro.batch, resp, pw, need_entropy=True, k=p.k, bundle=st.bundle,
                               temperature=p.temperature)
        old_lp, old_v = first[0].detach(), first[1].detach()
    kl = kl_penalty(old_lp, ref_lp, p.kl_estimator) * mask
    return Scored(old_lp, old_v, ref_lp, kl, seq_r, rw, first)


# --------------------------------------------------------------------------------------------------- 3. advantages
def global_whiten(x: torch.Tensor, mask: torch.Tensor, d: Dist, eps: float = 1e-8, shift: bool = True) -> torch.Tensor:
    """Whiten ``x`` [B, L] over the response tokens of ALL ranks (same statistics as one process would use).
    ``shift=False`` only scales (keeps the sign an explicit baseline gave each token)."""
    m = mask.float()
    stats = all_reduce_sum(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double(), d)
    n = stats[2].clamp_min(1.0)
    mean = stats[0] / n
    var = (stats[1] / n - mean ** 2).clamp_min(0.0) * n / (n - 1).clamp_min(1.0)
    return ((x - mean.float() if shift else x) * torch.rsqrt(var.float() + eps)) * m


def uniform_groups(seq_reward: torch.Tensor, k: int, tol: float = 1e-6) -> torch.Tensor:
    """Bool[B]: rows whose query group of K has (numerically) one reward value, i.e. no preference to learn."""
    g = seq_reward.view(-1, k)
    return ((g.max(1).values - g.min(1).values) <= tol).repeat_interleave(k)


def update_mask(p: PPOConfig, ro: Rollout, sc: Scored, device) -> torch.Tensor:
    """Float[B, L] tokens that enter the losses: the response mask, minus skipped uniform groups (if asked)."""
    m = ro.response_mask.to(device)
    if p.skip_uniform_groups and p.k > 1:
        m = m * (~uniform_groups(sc.seq_reward, p.k)).to(m.dtype)[:, None]
    return m


def box_spans(bundle, ro: Rollout, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_box, after_box) Bool[B, L] over the response positions (``umedfast.model.box_token_spans``)."""
    shape = ro.response_ids.shape
    in_box = torch.zeros(shape, dtype=torch.bool)
    after = torch.zeros(shape, dtype=torch.bool)
    for b in range(shape[0]):
        n = int(ro.response_mask[b].sum())
        ib, ab = box_token_spans(bundle.tokenizer, ro.response_ids[b, :n])
        in_box[b, :n], after[b, :n] = torch.tensor(ib, dtype=torch.bool), torch.tensor(ab, dtype=torch.bool)
    return in_box.to(device), after.to(device)


def span_gains(p: PPOConfig, sc: Scored, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(box_gain, rest_gain) Float[B]: each candidate's localization part (weighted, normalized ALR) and the rest of
    its sequence reward, each minus its query's baseline for that part: the greedy anchor's part
    (``baseline=greedy``), else the leave-one-out mean of the other K-1 candidates."""
    alr = sc.rewards.combined.alr.to(sc.seq_reward)
    rest = sc.seq_reward - alr
    if p.baseline == "greedy":
        a_alr = sc.rewards.anchor_alr.to(alr)
        a_rest = sequence_reward(p, sc.rewards.anchor_total, ro.anchor.truncated).to(alr) - a_alr
        return alr - a_alr.repeat_interleave(p.k), rest - a_rest.repeat_interleave(p.k)
    return rloo_advantages(alr, p.k), rloo_advantages(rest, p.k)


def anchored_values(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, k: int,
                    baseline: str, anchor_reward: torch.Tensor | None = None) -> torch.Tensor:
    """Float[B, L]: the critic's values re-anchored on a per-query baseline ``b_q``: ``b_q + V(s_t) - V(s_0)``.

    With lam = 1, GAE over these values gives ``A_t = G_t - b_q - (V(s_t) - V(s_0))``: at the first token the
    advantage is the candidate's return against its own query's baseline (an image-specific baseline that a
    linear critic on shared features cannot supply: it averages normal and abnormal images at the decision
    token), and later tokens are still credited by the critic's change. ``baseline``: "group" = leave-one-out
    mean of the other K-1 candidates' returns ``G_0`` (RLOO); "greedy" = ``anchor_reward`` Float[Q], the reward of
    the query's greedy answer (ReMax). ``rewards`` Float[B, L] are the per-token rewards (KL + sequence reward).
    """
    g0 = gae_advantages(rewards, torch.zeros_like(values), mask, gamma, 1.0)[0][:, 0]  # return from the start
    groups = g0.view(-1, k)
    if baseline == "group":
        b = ((groups.sum(1, keepdim=True) - groups) / max(1, k - 1)).flatten()
    elif baseline == "greedy":
        b = anchor_reward.to(values).repeat_interleave(k)
    else:
        raise ValueError(f"unknown baseline {baseline!r}")
    return (b[:, None] + values - values[:, :1]) * mask.to(values.dtype)


def advantages(st: PPOState, ro: Rollout, sc: Scored) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(advantages Float[B, L], returns Float[B, L] or None for the critic-free estimators).

    GAE: per-token reward ``-kl_coef * k1_t`` plus the sequence reward on the last token (``kl_estimator`` must be
    k1 or k2 here; validate() refuses k3), GAE(gamma, lam) over the critic's values, whitened over the response
    tokens of all ranks. ``span_advantages``: the box tokens and the tokens after the first box are then
    re-credited with their own part of the reward (``umedfast.rl.span_advantages``); ``coord_advantages``: the
    tokens of each box coordinate with that coordinate's own error (``umedfast.train.coordinate_credit``). GRPO /
    RLOO: the group baseline, broadcast over tokens (KL then enters the loss as k3).
    """
    p, mask = st.cfg, ro.response_mask.to(st.device)
    if p.advantage == "gae":
        r = token_rewards(sc.seq_reward, sc.kl, mask, p.kl_coef)
        adv, ret = gae_advantages(r, sc.old_v, mask, p.gamma, p.lam)
        if p.baseline != "critic":  # the policy's advantages against a per-query baseline; the critic keeps
            anchor = None if ro.anchor is None else sequence_reward(p, sc.rewards.anchor_total, ro.anchor.truncated)
            v = anchored_values(sc.old_v, r, mask, p.gamma, p.k, p.baseline, anchor)  # (the critic keeps its returns)
            adv = gae_advantages(r, v, mask, p.gamma, p.lam)[0]
        if p.span_advantages:  # box tokens: the localization reward only; tokens after the first box: the rest
            in_box, after = box_spans(st.bundle, ro, st.device)
            box_gain, rest_gain = span_gains(p, sc, ro)
            adv = span_advantages(adv, -p.kl_coef * sc.kl, mask, in_box, after, box_gain.to(adv), rest_gain.to(adv),
                                  gamma=p.gamma)
        if p.coord_advantages:  # each coordinate's tokens: its own error against the query's baseline
            gain, where = coordinate_gains(st.bundle.tokenizer, ro, p.k, st.box_format,
                                           st.rewards.w_alr * p.coord_scale, p.baseline == "greedy")
            adv = credit_tokens(adv, -p.kl_coef * sc.kl, mask, where.to(st.device), gain.to(adv), gamma=p.gamma)
        if p.query_weight == "inverse_mean":  # sum_q log E[R_q]: rare / still-wrong queries keep their pull
            floor = -(st.rewards.format_penalty + p.truncation_penalty)
            adv = adv * inverse_mean_weights(sc.seq_reward, p.k, floor).to(adv)[:, None]
        if p.whiten_advantages:
            # a per-query baseline (group, greedy) already centres each query; re-centring on the batch mean moves
            # the greedy anchor's zero (an answer as good as greedy is pushed up), which center_advantages accepts
            # in exchange for sampled tokens no longer being pushed down on average
            shift = p.baseline == "critic" or p.center_advantages
            adv = global_whiten(adv, update_mask(p, ro, sc, st.device), st.d, shift=shift)
        return adv, ret
    return group_advantages(sc.seq_reward, mask, p.k, p.advantage), None


# --------------------------------------------------------------------------------------------------- 4. update
def minibatch_loss(p: PPOConfig, d: Dist, lp, v, ent, old_lp, old_v, adv, ret, ref_lp, m,
                   policy_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """PPO loss of one minibatch on this rank -> (loss, {"pg_loss", "vf_loss", "clip_frac", "entropy"}).

    Per-token Float[b, L] inputs (``ret`` None = critic-free: no value loss, k3 KL in the loss). Token means are
    taken over the minibatch of ALL ranks: local sum / (global token count / world), so DDP's gradient average is
    the gradient one process computes on the whole global minibatch, even when ranks hold different token counts.
    The value head reads a detached hidden state (``umedfast.model.value``), so ``vf_coef`` scales the critic's
    gradient only. ``policy_weight`` 0 (critic warm-up) keeps the policy terms in the graph with zero gradient.
    Every rank must call it (one scalar all-reduce).
    """
    den = (all_reduce_sum(m.sum().cpu(), d) / d.world).clamp_min(1.0 / d.world).to(m.device)
    pg, cf = policy_loss(lp, old_lp, adv, m, p.clip_eps, denom=den)
    ent_m = masked_mean(ent, m, denom=den)
    pol = pg - p.ent_coef * ent_m if p.ent_coef else pg
    if ret is not None:
        vf = value_loss(v, old_v, ret, m, p.value_clip, denom=den)
        vterm = p.vf_coef * vf
    else:
        vf = torch.zeros(())
        vterm = 0.0 * v.sum()  # keep the value head in DDP's graph (no unused parameters)
        if p.kl_coef:
            pol = pol + p.kl_coef * masked_mean(kl_penalty(lp, ref_lp, "k3"), m, denom=den)
    loss = policy_weight * pol + vterm
    return loss, {"pg_loss": pg, "vf_loss": vf, "clip_frac": cf, "entropy": ent_m}


def minibatch_order(p: PPOConfig, n_rows: int, seed: int, step: int, epoch: int) -> tuple[torch.Tensor, bool]:
    """(row permutation Long[B], grouped). Whole query groups are shuffled when the minibatch holds whole groups
    (the prompt then runs once per group); seeded by (seed, step, epoch), so a resumed run reshuffles the same."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) * 101 + epoch)
    grouped = p.minibatch_size % p.k == 0 and n_rows % p.k == 0
    if grouped:
        return (torch.randperm(n_rows // p.k, generator=gen)[:, None] * p.k + torch.arange(p.k)).flatten(), True
    return torch.randperm(n_rows, generator=gen), False


def clip_and_step(st: PPOState) -> None:
    """Clip the policy's and the critic's gradients SEPARATELY (each its own norm), then one AdamW step."""
    p = st.cfg
    for params, limit, name in ((st.policy_params, p.max_grad_norm, "ppo_grad_norm"),
                                (list(st.value_head.parameters()), p.value_max_grad_norm, "value_grad_norm")):
        if limit > 0:
            gn = scalar(torch.nn.utils.clip_grad_norm_(params, limit))
            if not st.guard.ok(name, gn):
                st.optimizer.zero_grad(set_to_none=True)
    st.optimizer.step()
    st.optimizer.zero_grad(set_to_none=True)


def update(st: PPOState, ro: Rollout, sc: Scored, adv: torch.Tensor, ret: torch.Tensor | None,
           step: int) -> dict:
    """``ppo_epochs`` passes of minibatch updates -> mean {"pg_loss", "vf_loss", "clip_frac", "entropy"} over
    updates and ranks. During the first ``critic_warmup_steps`` iterations only the critic learns."""
    p, bundle = st.cfg, st.bundle
    resp, pw, B = ro.response_ids, ro.prompt_width, ro.response_ids.shape[0]
    mask = update_mask(p, ro, sc, st.device)
    pw_weight = 0.0 if step < p.critic_warmup_steps else 1.0
    stats = {"pg_loss": 0.0, "vf_loss": 0.0, "clip_frac": 0.0, "entropy": 0.0}
    n_upd = 0
    for e in range(p.ppo_epochs):
        perm, grouped = minibatch_order(p, B, st.seed, step, e)
        for s in range(0, B, p.minibatch_size):
            mb = perm[s:s + p.minibatch_size]
            if sc.first is not None:  # the whole batch, already forwarded with grad in score()
                mb = torch.arange(B)
                lp, v, ent = sc.first
            else:
                sub = select_rows(ro.batch, mb, bundle)
                lp, v, ent = policy_outputs(st.train_module, sub, resp[mb], pw, need_entropy=True,
                                            k=p.k if grouped else 1, bundle=bundle, temperature=p.temperature)
            loss, parts = minibatch_loss(p, st.d, lp, v, ent, sc.old_lp[mb], sc.old_v[mb], adv[mb],
                                         ret[mb] if ret is not None else None, sc.ref_lp[mb], mask[mb], pw_weight)
            if not st.guard.ok("ppo_loss", loss):
                loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0  # every rank must still join the all-reduce
            loss.backward()
            clip_and_step(st)
            for key, val in parts.items():
                stats[key] += float(val.detach())
            n_upd += 1
    # per-rank values are sum_r / (N / world): their mean over ranks is the mean over all tokens
    red = all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.float64), st.d) / st.d.world
    return {k: v / max(1, n_upd) for k, v in zip(stats, red.tolist())}


# --------------------------------------------------------------------------------------------------- 5. stats
def step_stats(st: PPOState, ro: Rollout, sc: Scored, losses: dict) -> dict:
    """Metrics of one iteration, reward statistics over all ranks (every rank must call it)."""
    d, rw = st.d, sc.rewards
    mask = ro.response_mask.to(st.device)
    g = lambda t: all_gather_floats(t.float().tolist(), d)  # noqa: E731
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    tok = all_reduce_sum(torch.stack([sc.kl.sum(), mask.sum()]).double().cpu(), d)
    row = {"reward": mean(g(sc.seq_reward.cpu())), "r_llm": mean(g(rw.r_llm)), "alr": mean(g(rw.alr)),
           "iou": mean(g(rw.iou)), "vrr": mean(g(rw.vrr)), "format_ok": mean(g(rw.format_ok)),
           "class_written": mean(g(rw.class_written)), "truncated": mean(g(ro.truncated)),
           "kl": float(tok[0]) / max(1.0, float(tok[1])), "resp_len": mean(g(mask.sum(1).cpu())), **losses,
           "sample": ro.texts[0]}  # one response per step, to read what the policy is learning
    if rw.anchor_total is not None:  # the greedy answer is what evaluation measures
        row["greedy_reward"] = mean(g(rw.anchor_total))
    if st.cfg.k > 1:
        row["uniform_groups"] = mean(g(uniform_groups(sc.seq_reward.cpu(), st.cfg.k)))
    return row


# --------------------------------------------------------------------------------------------------- all of it
def ppo_step(st: PPOState, queries: list, step: int, phases: dict | None = None, prompts: dict | None = None) -> dict:
    """rollout -> score -> advantages -> update -> stats for this rank's ``queries``; returns the metrics row.
    ``phases`` (optional) collects the wall seconds of each piece: {name: [seconds, ...]}. ``prompts``: the
    queries' generation batch from the input pipeline (``umedfast.data.loader``), else collated in the rollout."""
    t = [time.perf_counter()]

    def tick(name):
        if phases is not None:
            now = time.perf_counter()
            phases.setdefault(name, []).append(now - t[0])
            t[0] = now

    ro = rollout(st, queries, step, prompts)
    tick("rollout")
    sc = score(st, ro)
    tick("score")
    adv, ret = advantages(st, ro, sc)
    tick("advantages")
    losses = update(st, ro, sc, adv, ret, step)
    tick("update")
    row = step_stats(st, ro, sc, losses)
    tick("stats")
    return row
