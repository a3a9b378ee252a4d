"""Stage 2: PPO with Abnormal-Aware Rewarding (AAR) and a critic; GRPO / RLOO on the same loop.

One iteration (a short script, every piece is a pure function from ``umedfast.rl`` or a helper in this package):

1. take the next ``queries_per_step`` training queries (sharded across ranks) and sample K candidates each;
2. one no-grad scoring forward: old log-probs and values; VRR through the fused kernel; reference log-probs from
   the frozen SFT policy (LoRA: adapters disabled; full fine-tune: a frozen copy);
3. rewards: judge relevance + ALR/max_K + VRR/max_K (weights ``w_*``; 0 = ablation);
4. advantages: GAE over response tokens (sequence reward on the last token, per-token KL penalty) + whitening,
   or a group baseline (GRPO / RLOO, KL then enters the loss as k3);
5. ``ppo_epochs`` passes of minibatch updates with the clipped policy loss, clipped value loss and entropy bonus.

Writes ``OUTPUT/ppo/metrics.jsonl`` + TensorBoard events, checkpoints, ``OUTPUT/ppo/final`` and ``eval.json``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from tqdm.auto import tqdm

from umedfast.config import TrainConfig
from umedfast.rl import (gae_advantages, group_advantages, kl_penalty, masked_mean, policy_loss, token_rewards,
                         value_loss)
from umedfast.train.aar import score_rollout
from umedfast.train.checkpoint import EpochOrder, latest_checkpoint, load_training_state, save_training_state
from umedfast.train.common import load_policy, load_records, resolve_device, seed_everything, trainable, warmup_cosine
from umedfast.train.distributed import Dist, all_gather_floats, all_reduce_sum, barrier, use_fsdp, wrap_ddp
from umedfast.train.fsdp import (RootPolicyWithValue, checkpoint_views, gathered_for_save, local_fraction, scalar,
                                 shard_model, shard_small)
from umedfast.train.length_check import check_generation_cap
from umedfast.train.metrics import MetricsLogger, NonFiniteGuard
from umedfast.train.rollout import policy_outputs, reference_logprobs, sample_candidates, select_rows
from umedfast.train.sft import evaluate


def global_whiten(x: torch.Tensor, mask: torch.Tensor, d: Dist, eps: float = 1e-8) -> torch.Tensor:
    """Whiten ``x`` [B, L] over the response tokens of ALL ranks (same statistics as one process would use)."""
    m = mask.float()
    stats = all_reduce_sum(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double(), d)
    n = stats[2].clamp_min(1.0)
    mean = stats[0] / n
    var = (stats[1] / n - mean ** 2).clamp_min(0.0) * n / (n - 1).clamp_min(1.0)
    return ((x - mean.float()) * torch.rsqrt(var.float() + eps)) * m


def minibatch_loss(p, d: Dist, lp, v, ent, old_lp, old_v, adv, ret, ref_lp, m) -> tuple[torch.Tensor, dict]:
    """PPO loss of one minibatch on this rank -> (loss, {"pg_loss", "vf_loss", "clip_frac", "entropy"}).

    Per-token Float[b, L] inputs (``ret`` None = critic-free: no value loss, k3 KL in the loss). Token means are
    taken over the minibatch of ALL ranks: local sum / (global token count / world), so DDP's gradient average is
    the gradient one process computes on the whole global minibatch, even when ranks hold different token counts
    (a per-rank mean would weight a short rank's tokens more). Every rank must call it (one scalar all-reduce).
    """
    den = (all_reduce_sum(m.sum().cpu(), d) / d.world).clamp_min(1.0 / d.world).to(m.device)
    pg, cf = policy_loss(lp, old_lp, adv, m, p.clip_eps, denom=den)
    loss = pg
    if ret is not None:
        vf = value_loss(v, old_v, ret, m, p.value_clip, denom=den)
        loss = loss + p.vf_coef * vf
    else:
        vf = torch.zeros(())
        loss = loss + 0.0 * v.sum()  # keep the value head in DDP's graph (no unused parameters)
        if p.kl_coef:
            loss = loss + p.kl_coef * masked_mean(kl_penalty(lp, ref_lp, "k3"), m, denom=den)
    ent_m = masked_mean(ent, m, denom=den)
    if p.ent_coef:
        loss = loss - p.ent_coef * ent_m
    return loss, {"pg_loss": pg, "vf_loss": vf, "clip_frac": cf, "entropy": ent_m}


def init_path(cfg: TrainConfig) -> str:
    """The policy stage 2 starts from: ``ppo.init_from``, else the SFT output, else ``model.name``."""
    if cfg.ppo.init_from:
        return cfg.ppo.init_from
    sft_final = Path(cfg.output_dir) / "sft" / "final"
    return str(sft_final) if (sft_final / "config.json").is_file() else cfg.model.name


def build_policy_and_reference(cfg: TrainConfig, device: str):
    """(bundle, reference model or None). LoRA: SFT adapters (if any) are merged, fresh adapters are trained and the
    reference is the model with adapters disabled. Full fine-tune: the reference is a frozen copy."""
    from umedfast.model import LoraSettings, add_lora

    bundle = load_policy(cfg, device, init_path(cfg), lora=False)
    if bundle.has_adapters:  # an SFT checkpoint trained with LoRA: its adapters become part of the reference
        bundle.model = bundle.model.merge_and_unload()
    if cfg.model.lora:
        m = cfg.model
        add_lora(bundle, LoraSettings(r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout))
        return bundle, None
    ref = copy.deepcopy(bundle.model).eval().requires_grad_(False)
    return bundle, ref


def ref_logprobs(bundle, ref, batch, resp, p, k=1, temperature=1.0):
    if ref is not None:
        return reference_logprobs(ref, batch, resp, p, k=k, bundle=bundle, temperature=temperature)
    from umedfast.model import adapters_disabled

    with adapters_disabled(bundle) as m:
        return reference_logprobs(m, batch, resp, p, k=k, bundle=bundle, temperature=temperature)


def run_ppo(cfg: TrainConfig, d: Dist = Dist(), *, resume: bool = False) -> dict:
    """Train stage 2 and return ``{"steps", "eval", "summary"}``."""
    from umedfast.model import PolicyWithValue, ValueHead, hidden_size, save_checkpoint
    from umedfast.rewards.judge import make_judge

    p = cfg.ppo
    run_dir = Path(cfg.output_dir) / "ppo"
    device = resolve_device(cfg, d)
    if p.queries_per_step % d.world:
        raise ValueError(f"ppo.queries_per_step={p.queries_per_step} must be divisible by the world size {d.world}")
    # sampling is keyed by (seed, step, query, candidate) (umedfast.train.sampling), not by this RNG: any world
    # size samples the same candidates
    seed_everything(cfg.seed + 1000)
    train, held = load_records(cfg, d)
    bundle, ref = build_policy_and_reference(cfg, device)
    if d.is_main:  # a truncated rollout loses its last steps (the class) and teaches the policy to write less
        check_generation_cap(bundle.tokenizer, train, p.max_new_tokens, "ppo.max_new_tokens")
    vh = ValueHead(hidden_size(bundle.base_model)).to(device)
    pwv = PolicyWithValue(bundle, vh)
    pwv.eval()  # no dropout: sampling, scoring and updates see the same function
    fsdp = use_fsdp(cfg.parallel, d)
    if fsdp:  # policy, frozen reference and value head sharded; every forward goes through a root module
        shard_model(bundle.model, d, device)
        if ref is not None:
            shard_model(ref, d, device)
        shard_small(vh, d, device)
        ddp = scorer = RootPolicyWithValue(pwv)
    else:
        ddp, scorer = wrap_ddp(pwv, d, device), pwv  # no-grad scoring skips DDP's hooks
    pol_params = trainable(bundle.model)
    opt = torch.optim.AdamW([{"params": pol_params, "lr": p.lr}, {"params": list(vh.parameters()), "lr": p.value_lr}],
                            weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(p.steps, p.warmup_ratio, p.min_lr_ratio))
    order = EpochOrder(len(train), seed=cfg.seed + 1)
    judge = make_judge(cfg.judge.kind, **({} if cfg.judge.kind == "rubric" else dict(
        base_url=cfg.judge.base_url, model=cfg.judge.model, api_key_env=cfg.judge.api_key_env,
        concurrency=cfg.judge.concurrency, timeout_s=cfg.judge.timeout_s, retries=cfg.judge.retries,
        neutral=cfg.judge.neutral)))
    step = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        m_, o_, v_ = checkpoint_views(bundle.model, opt, d, value_head=vh, opt_root=pwv)
        st = load_training_state(ckpt, model=m_, value_head=v_, optimizer=o_, scheduler=sched,
                                 order=order, d=d, device=device)
        step = st["step"]
    log = MetricsLogger(run_dir, enabled=d.is_main)
    guard = NonFiniteGuard()
    bar = tqdm(total=p.steps, initial=step, desc="ppo", unit="it", disable=not (cfg.progress and d.is_main))
    use_critic = p.advantage == "gae"
    while step < p.steps:
        # 1. rollouts
        epoch, idx = order.next_batch(p.queries_per_step)
        mine = [train[i] for i in idx][d.rank::d.world]
        ro = sample_candidates(bundle, mine, k=p.k, temperature=p.temperature, top_p=p.top_p,
                               max_new_tokens=p.max_new_tokens, seed=cfg.seed, step=step, synced_gpus=fsdp)
        mask, resp, pw = ro.response_mask.to(device), ro.response_ids, ro.prompt_width
        # 2. scoring forward (old log-probs, values), reference, VRR inside the rewards. With one epoch over one
        # minibatch the policy has not moved since sampling: the training forward IS the scoring forward, so take
        # the old log-probs / values from it (detached) and skip one full forward (TRL does the same).
        single_pass = p.ppo_epochs == 1 and p.minibatch_size >= resp.shape[0]
        with torch.no_grad():
            if not single_pass:
                old_lp, old_v, _ = policy_outputs(scorer, ro.batch, resp, pw, k=p.k, bundle=bundle,
                                                  temperature=p.temperature)
            ref_lp = ref_logprobs(bundle, ref, ro.batch, resp, pw, k=p.k, temperature=p.temperature)
        rw = score_rollout(bundle, ro, judge, p, box_format=cfg.data.box_format)
        guard.add("reward_nonfinite", rw.combined.nonfinite)
        seq_r = rw.combined.total.to(device)
        if single_pass:
            first = policy_outputs(ddp, ro.batch, resp, pw, need_entropy=True, k=p.k, bundle=bundle,
                                   temperature=p.temperature)
            old_lp, old_v = first[0].detach(), first[1].detach()
        # 3. advantages
        kl = kl_penalty(old_lp, ref_lp, p.kl_estimator)
        if use_critic:
            adv, ret = gae_advantages(token_rewards(seq_r, kl, mask, p.kl_coef), old_v, mask, p.gamma, p.lam)
            if p.whiten_advantages:
                adv = global_whiten(adv, mask, d)
        else:
            adv, ret = group_advantages(seq_r, mask, p.k, p.advantage), None
        # 4. PPO epochs over minibatches
        stats = {"pg_loss": 0.0, "vf_loss": 0.0, "clip_frac": 0.0, "entropy": 0.0}
        n_upd, B = 0, resp.shape[0]
        for e in range(p.ppo_epochs):
            # shuffle whole query groups so a minibatch holds complete groups of K (the prompt runs once per group);
            # seeded by (seed, step, epoch): a resumed run reshuffles the same way
            gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 101 + e)
            grouped = p.minibatch_size % p.k == 0 and B % p.k == 0
            perm = (torch.randperm(B // p.k, generator=gen)[:, None] * p.k + torch.arange(p.k)).flatten() \
                if grouped else torch.randperm(B, generator=gen)
            for s in range(0, B, p.minibatch_size):
                mb = perm[s:s + p.minibatch_size]
                if single_pass:  # the whole batch, already forwarded with grad above (row order does not matter)
                    mb = torch.arange(B)
                    lp, v, ent = first
                else:
                    sub = select_rows(ro.batch, mb, bundle)
                    lp, v, ent = policy_outputs(ddp, sub, resp[mb], pw, need_entropy=True,
                                                k=p.k if grouped else 1, bundle=bundle, temperature=p.temperature)
                loss, parts = minibatch_loss(p, d, lp, v, ent, old_lp[mb], old_v[mb], adv[mb],
                                             ret[mb] if use_critic else None, ref_lp[mb], mask[mb])
                if not guard.ok("ppo_loss", loss):
                    loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0  # every rank must still join the all-reduce
                loss.backward()
                if p.max_grad_norm > 0:
                    gn = scalar(torch.nn.utils.clip_grad_norm_(pol_params + list(vh.parameters()), p.max_grad_norm))
                    if not guard.ok("ppo_grad_norm", gn):
                        opt.zero_grad(set_to_none=True)
                opt.step()
                opt.zero_grad(set_to_none=True)
                for key, val in parts.items():
                    stats[key] += float(val.detach())
                n_upd += 1
        # per-rank values are sum_r / (N / world): their mean over ranks is the mean over all tokens
        stats = dict(zip(stats, (all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.float64), d)
                                 / d.world).tolist()))
        sched.step()
        step += 1
        # 5. metrics (reward statistics over all ranks)
        g = lambda t: all_gather_floats(t.float().tolist(), d)  # noqa: E731
        mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
        row = {"reward": mean(g(rw.combined.total)), "r_llm": mean(g(rw.r_llm)), "alr": mean(g(rw.alr)),
               "iou": mean(g(rw.iou)), "vrr": mean(g(rw.vrr)), "format_ok": mean(g(rw.format_ok)),
               "class_written": mean(g(rw.class_written)),
               "kl": float(all_reduce_sum((kl * mask).sum().cpu(), d)) / max(1.0, float(all_reduce_sum(
                   mask.sum().cpu(), d))),
               "resp_len": mean(g(mask.sum(1).cpu())), "lr": sched.get_last_lr()[0], "epoch": epoch,
               "ids": [train[i].id for i in idx], **{k_: v_ / max(1, n_upd) for k_, v_ in stats.items()},
               "sample": ro.texts[0]}  # one response per step, to read what the policy is learning
        if step % cfg.log_every == 0 or step == p.steps:
            log.log(step, row)
        bar.update(1)
        bar.set_postfix(R=f"{row['reward']:.2f}", llm=f"{row['r_llm']:.2f}", alr=f"{row['alr']:.2f}",
                        vrr=f"{row['vrr']:.3f}", iou=f"{row['iou']:.2f}", kl=f"{row['kl']:.3f}")
        if (p.save_every and step % p.save_every == 0) or step == p.steps:
            m_, o_, v_ = checkpoint_views(bundle.model, opt, d, value_head=vh, opt_root=pwv)
            save_training_state(run_dir, step, model=m_, value_head=v_, optimizer=o_, scheduler=sched,
                                order=order, d=d)
    bar.close()
    with gathered_for_save([bundle.model, bundle.base_model, vh], d):
        if d.is_main:
            save_checkpoint(run_dir / "final", bundle, vh)
    barrier(d)
    ev = evaluate(cfg, bundle, held, run_dir / "eval.json", d, p.eval_max_new_tokens, "ppo.eval_max_new_tokens")
    summary = log.summary({"steps": step, "nonfinite": guard.counts, "eval": ev, "judge": getattr(judge, "stats", {}),
                           "parallel": cfg.parallel, "param_fraction_per_rank": local_fraction(pwv)})
    log.close()
    return {"steps": step, "eval": ev, "summary": summary, "bundle": bundle}
