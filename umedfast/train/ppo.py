"""Stage 2: PPO with Abnormal-Aware Rewarding (AAR) and a critic; GRPO / RLOO on the same loop.

The iteration itself lives in :mod:`umedfast.train.ppo_step` (rollout -> score -> advantages -> update -> stats,
the same functions the benchmark times). This module is the script around it: data order, LR schedule,
checkpoints, Ctrl-C, metrics and the final evaluation.

Writes ``OUTPUT/ppo/metrics.jsonl`` + TensorBoard events, checkpoints, ``OUTPUT/ppo/final`` and ``eval.json``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from umedfast.config import TrainConfig
from umedfast.data.loader import train_feed
from umedfast.model import save_checkpoint
from umedfast.train.data_order import EpochOrder
from umedfast.train.distributed import Dist, barrier, shard
from umedfast.train.fsdp import checkpoint_views, gathered_for_save, local_fraction
from umedfast.train.heldout import EvalWriter, evaluate
from umedfast.train.interrupt import Interrupted, stop_agreed
from umedfast.train.length_check import check_generation_cap
from umedfast.train.lr_schedule import warmup_cosine
from umedfast.train.metrics import MetricsLogger
from umedfast.train.ppo_step import build_state, ppo_step
from umedfast.train.run_data import load_records, ppo_query_records
from umedfast.train.runtime import resolve_device, seed_everything
from umedfast.train.training_state import latest_checkpoint, load_training_state, save_training_state


def run_ppo(cfg: TrainConfig, d: Dist = Dist(), *, resume: bool = False, write_eval: EvalWriter | None = None) -> dict:
    """Train stage 2 and return ``{"steps", "eval", "summary", "bundle"}``. ``write_eval``: see ``run_sft``."""
    p = cfg.ppo
    run_dir = Path(cfg.output_dir) / "ppo"
    device = resolve_device(cfg, d)
    if p.queries_per_step % d.world:
        raise ValueError(f"ppo.queries_per_step={p.queries_per_step} must be divisible by the world size {d.world}")
    # sampling is keyed by (seed, step, query, candidate) (umedfast.train.sampling), not by this RNG: any world
    # size samples the same candidates
    seed_everything(cfg.seed + 1000)
    train, held = load_records(cfg, d)
    train = ppo_query_records(cfg, d, train)  # SFT's training records, or fresh ones (data.synth_ppo_n)
    st = build_state(cfg, d, device)
    if d.is_main:  # a truncated rollout loses its last steps (the class) and teaches the policy to write less
        check_generation_cap(st.bundle.tokenizer, train, p.max_new_tokens, "ppo.max_new_tokens")
    sched = torch.optim.lr_scheduler.LambdaLR(st.optimizer, warmup_cosine(p.steps, p.warmup_ratio, p.min_lr_ratio))
    order = EpochOrder(len(train), seed=cfg.seed + 1)

    def views():  # (model, optimizer, value head) as checkpoints hold them (FSDP2: full-state views)
        return checkpoint_views(st.bundle.model, st.optimizer, d, value_head=st.value_head,
                                opt_root=st.policy_with_value)

    def save(step_: int):
        m_, o_, v_ = views()
        return save_training_state(run_dir, step_, model=m_, value_head=v_, optimizer=o_, scheduler=sched,
                                   order=order, d=d)

    step = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        m_, o_, v_ = views()
        step = load_training_state(ckpt, model=m_, value_head=v_, optimizer=o_, scheduler=sched, order=order, d=d,
                                   device=device)["step"]
    log = MetricsLogger(run_dir, enabled=d.is_main)
    bar = tqdm(total=p.steps, initial=step, desc="ppo", unit="it", disable=not (cfg.progress and d.is_main))
    # query prompts (image decode + processor) prepared by data.workers processes in `order` (umedfast/data/loader.py)
    feed = train_feed(cfg, d, st.bundle, train, order, p.queries_per_step, p.steps - step, for_generation=True,
                      what="ppo")
    while step < p.steps:
        t_step = time.perf_counter()
        epoch, idx = order.next_batch(p.queries_per_step)
        fed = feed.next_usable(shard(idx, d))
        row = ppo_step(st, [train[i] for i in fed.indices], step, prompts=fed.batch)
        sched.step()
        step += 1
        row.update(lr=sched.get_last_lr()[0], epoch=epoch, ids=[train[i].id for i in idx],
                   data_wait_s=feed.pop_wait(), step_s=time.perf_counter() - t_step, bad_images=feed.bad_images)
        if step % cfg.log_every == 0 or step == p.steps:
            log.log(step, row)
        bar.update(1)
        bar.set_postfix(R=f"{row['reward']:.2f}", llm=f"{row['r_llm']:.2f}", alr=f"{row['alr']:.2f}",
                        vrr=f"{row['vrr']:.3f}", iou=f"{row['iou']:.2f}", kl=f"{row['kl']:.3f}")
        saved = None
        if (p.save_every and step % p.save_every == 0) or step == p.steps:
            saved = save(step)
        if stop_agreed(d):  # Ctrl-C on any rank: checkpoint at this step boundary (as the periodic save does)
            saved = saved or save(step)
            feed.close()
            bar.close()
            log.close()
            raise Interrupted("ppo", step, saved)
    bar.close()
    feed.close()
    with gathered_for_save([st.bundle.model, st.bundle.base_model, st.value_head], d):
        if d.is_main:
            save_checkpoint(run_dir / "final", st.bundle, st.value_head)
    barrier(d)
    ev = evaluate(cfg, st.bundle, held, run_dir / "eval.json", d, p.eval_max_new_tokens, "ppo.eval_max_new_tokens",
                  write_eval)
    summary = log.summary({"steps": step, "nonfinite": st.guard.counts, "eval": ev,
                           "judge": getattr(st.judge, "stats", {}), "parallel": cfg.parallel,
                           "bad_images": feed.bad_images,
                           "param_fraction_per_rank": local_fraction(st.policy_with_value)})
    log.close()
    return {"steps": step, "eval": ev, "summary": summary, "bundle": st.bundle}
