"""Stage 1: abnormal-aware instruction tuning (SFT).

Response-only cross-entropy, AdamW, linear warmup + cosine, gradient accumulation, gradient clipping, bf16 autocast
on GPU, DDP under torchrun, atomic resumable checkpoints, and an evaluation on the held-out split at the end of every
epoch that writes ``OUTPUT/sft/eval.json``. The final policy is saved to ``OUTPUT/sft/final`` (save_pretrained
layout) for stage 2.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from umedfast.config import TrainConfig
from umedfast.data.loader import train_feed
from umedfast.errors import UserError
from umedfast.model import model_inputs, save_checkpoint
from umedfast.train.data_order import EpochOrder
from umedfast.train.distributed import Dist, all_reduce_sum, barrier, shard, use_fsdp, wrap_ddp
from umedfast.train.fsdp import checkpoint_views, gathered_for_save, local_fraction, no_sync, scalar, shard_model
from umedfast.train.heldout import EvalWriter, evaluate
from umedfast.train.interrupt import Interrupted, stop_agreed
from umedfast.train.lr_schedule import warmup_cosine
from umedfast.train.metrics import MetricsLogger, NonFiniteGuard
from umedfast.train.policy import load_policy, trainable
from umedfast.train.run_data import load_records
from umedfast.train.runtime import autocast, resolve_device, seed_everything
from umedfast.train.training_state import latest_checkpoint, load_training_state, save_training_state


def response_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over response tokens.

    logits Float[B, T, V]; labels Long[B, T] with -100 outside the response. Returns (sum, number of tokens).
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    n = int((shift_labels != -100).sum())
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, n


def run_sft(cfg: TrainConfig, d: Dist = Dist(), *, resume: bool = False, write_eval: EvalWriter | None = None) -> dict:
    """Train stage 1 and return ``{"steps", "eval", "summary", "bundle"}``. ``write_eval`` writes ``eval.json``
    (``umedfast.train.heldout``; the CLI passes ``umedfast.eval.mau.evaluate_and_write``)."""
    s = cfg.sft
    run_dir = Path(cfg.output_dir) / "sft"
    device = resolve_device(cfg, d)
    seed_everything(cfg.seed)
    train, held = load_records(cfg, d)
    bundle = load_policy(cfg, device)
    model = bundle.model
    model.train()
    ddp = shard_model(model, d, device) if use_fsdp(cfg.parallel, d) else wrap_ddp(model, d, device)
    params = trainable(model)
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    micro = s.batch_size * d.world  # global micro-batch
    order = EpochOrder(len(train), seed=cfg.seed)
    per_epoch = order.batches_per_epoch(micro) // s.grad_accum
    if per_epoch == 0:
        raise UserError(f"{len(train)} training records cannot fill one optimizer step of "
                        f"{micro * s.grad_accum} records (sft.batch_size x processes x sft.grad_accum): lower "
                        "sft.batch_size or add data")
    total = per_epoch * s.epochs
    if s.max_steps:
        total = min(total, s.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, s.warmup_ratio, s.min_lr_ratio))
    step, last_eval = 0, None
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        m_, o_, _ = checkpoint_views(model, opt, d)
        st = load_training_state(ckpt, model=m_, optimizer=o_, scheduler=sched, order=order, d=d, device=device)
        step = st["step"]
        last_eval = st["extra"].get("eval")
    # on resume, rows logged after the restored checkpoint (a killed run's last steps) are dropped: each step once
    log = MetricsLogger(run_dir, enabled=d.is_main, keep_through=step if resume else None)
    guard = NonFiniteGuard()
    bar = tqdm(total=total, initial=step, desc="sft", unit="step", disable=not (cfg.progress and d.is_main))
    dtype = next(model.parameters()).dtype
    # images decoded + preprocessed by data.workers processes, in the order of `order` (umedfast/data/loader.py)
    feed = train_feed(cfg, d, bundle, train, order, micro, (total - step) * s.grad_accum, what="sft")
    while step < total:
        batches, ids, epoch, t_step = [], [], order.epoch, time.perf_counter()
        for _ in range(s.grad_accum):
            epoch, idx = order.next_batch(micro)
            ids += [train[i].id for i in idx]
            batches.append(feed.next_usable(shard(idx, d)).batch)
        data_wait = feed.pop_wait()
        # normalize by the global number of response tokens of this optimizer step (DDP then averages ranks)
        n_local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        n_global = float(all_reduce_sum(torch.tensor(float(n_local)), d))
        loss_sum = torch.zeros(())
        for j, b in enumerate(batches):
            with no_sync(ddp, d, sync=j == len(batches) - 1), autocast(device, dtype):
                logits = ddp(**model_inputs(b)).logits
                ce, _ = response_ce_sum(logits, b["labels"])
                loss = ce * d.world / max(n_global, 1.0)
            loss.backward()
            loss_sum += ce.detach().cpu()
        mean_loss = float(all_reduce_sum(loss_sum, d)) / max(n_global, 1.0)
        if guard.ok("sft_loss", mean_loss):
            gnorm = scalar(torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)) if s.max_grad_norm > 0 else None
            if gnorm is None or guard.ok("sft_grad_norm", gnorm):
                opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        step += 1
        if step % cfg.log_every == 0 or step == total:
            log.log(step, {"loss": mean_loss, "lr": sched.get_last_lr()[0], "epoch": epoch, "tokens": n_global,
                           "ids": ids, "data_wait_s": data_wait, "step_s": time.perf_counter() - t_step,
                           "bad_images": feed.bad_images})
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.3f}", ep=epoch)
        end_of_epoch = step % per_epoch == 0 or step == total
        if end_of_epoch and (s.eval_every_epoch or step == total):
            model.eval()
            last_eval = evaluate(cfg, bundle, held, run_dir / "eval.json", d, s.eval_max_new_tokens,
                                 "sft.eval_max_new_tokens", write_eval) or last_eval
            model.train()
            if last_eval is not None:
                log.log(step, {f"eval_{k}": v for k, v in last_eval.items() if isinstance(v, (int, float))})
        saved = None
        stop = stop_agreed(d)
        if (s.save_every and step % s.save_every == 0) or step == total or stop:
            # Ctrl-C: checkpoint at this step boundary (model, optimizer, scheduler and data order agree), then stop
            m_, o_, _ = checkpoint_views(model, opt, d)
            saved = save_training_state(run_dir, step, model=m_, optimizer=o_, scheduler=sched, order=order, d=d,
                                        extra={"eval": last_eval})
        if stop and step < total:
            feed.close()
            bar.close()
            log.close()
            raise Interrupted("sft", step, saved)
    bar.close()
    feed.close()
    with gathered_for_save([model, bundle.base_model], d):
        if d.is_main:
            save_checkpoint(run_dir / "final", bundle)
    barrier(d)
    summary = log.summary({"steps": step, "nonfinite": guard.counts, "eval": last_eval, "parallel": cfg.parallel,
                           "bad_images": feed.bad_images,
                           "param_fraction_per_rank": local_fraction(model)})
    log.close()
    return {"steps": step, "eval": last_eval, "summary": summary, "bundle": bundle}
