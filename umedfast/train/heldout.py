"""Held-out evaluation during training: each stage's ``eval.json``, written through an injected ``EvalWriter``.

Training does not import ``umedfast.eval``: the command line (``umedfast.cli.train``) passes
``umedfast.eval.mau.evaluate_and_write`` as ``write_eval`` to ``run_sft`` / ``run_ppo``; without one a stage trains
and saves but writes no ``eval.json``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from umedfast.config import TrainConfig
from umedfast.data.loader import resolve_workers
from umedfast.train.distributed import Dist, barrier
from umedfast.train.fsdp import is_sharded
from umedfast.train.length_check import check_generation_cap

# (bundle, records, out_path, *, batch_size, max_new_tokens, box_format, progress, workers) -> metrics dict;
# writes out_path (workers: image decode processes, data.workers resolved for the model's device)
EvalWriter = Callable[..., dict]


def evaluate(cfg: TrainConfig, bundle, held: list, out_path: Path, d: Dist, max_new_tokens: int,
             cap_name: str = "eval_max_new_tokens", write_eval: EvalWriter | None = None) -> dict | None:
    """Greedy generation on the held-out records and ``eval.json`` (main rank only; others wait). Warns when
    ``max_new_tokens`` (config key ``cap_name``) would cut reference answers short.

    A sharded (FSDP2) model's forwards are collectives: every rank generates the same records then (in lockstep),
    the others write to a scratch directory that is removed. ``write_eval`` None: nothing is evaluated (None)."""
    if write_eval is None:
        return None
    metrics = None
    sharded = is_sharded(bundle.model)
    if held and d.is_main:
        check_generation_cap(bundle.tokenizer, held, max_new_tokens, cap_name)
    if held and (d.is_main or sharded):
        scratch = None if d.is_main else Path(tempfile.mkdtemp(prefix=f"umedfast_eval_rank{d.rank}_"))
        metrics = write_eval(bundle, held, scratch / out_path.name if scratch else out_path,
                             batch_size=cfg.eval_batch_size, max_new_tokens=max_new_tokens,
                             box_format=cfg.data.box_format, progress=cfg.progress and d.is_main,
                             workers=resolve_workers(cfg.data.workers,
                                                     device=str(next(bundle.model.parameters()).device)))
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
            metrics = None
    barrier(d)
    return metrics
