"""Resumable training checkpoints, written atomically: weights, optimizer, scheduler, RNG states and the data-order
position (``umedfast.train.data_order``) they restore.

A checkpoint is ``<run>/checkpoints/step-00000012/``::

    model.safetensors       trainable module state (whole model, or the peft model with its adapters)
    value_head.safetensors  critic head (PPO with GAE)
    optimizer.pt scheduler.pt   torch.save of plain state dicts (read back with weights_only=True)
    rng-rank<r>.pt          torch CPU/CUDA generator states of rank r
    state.json              step, data order position, python/numpy RNG states, extra counters

It is first written to ``.tmp-step-...`` and renamed into place once complete, so a process killed at any moment
(SIGKILL included) leaves either the previous checkpoint or the new one, never a torn one. ``latest_checkpoint``
ignores temporary directories. Only the newest ``keep`` checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from umedfast.train.data_order import EpochOrder
from umedfast.train.distributed import Dist, barrier

STEP_PREFIX = "step-"


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _py_np_state() -> dict:
    v, inner, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [v, list(inner), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _restore_py_np(s: dict) -> None:
    v, inner, gauss = s["python"]
    random.setstate((v, tuple(inner), gauss))
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest complete checkpoint under ``run_dir/checkpoints`` (None if there is none)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
                  and (p / "state.json").is_file())
    return done[-1] if done else None


def previous_run(run_dir: str | Path) -> str | None:
    """What an earlier run left in a stage directory (complete checkpoints, logged steps), or None if nothing.

    A fresh (non-resumed) run there would append its metrics to the old ones and could later be resumed from the
    old run's checkpoints, so the CLI refuses it."""
    run_dir = Path(run_dir)
    found = []
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        found.append(f"checkpoint {ckpt.name}")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    return ", ".join(found) or None


def save_training_state(run_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer, scheduler=None,
                        value_head: torch.nn.Module | None = None, order: EpochOrder | None = None,
                        extra: dict | None = None, d: Dist = Dist(), keep: int = 2) -> Path:
    """Write a checkpoint for ``step`` atomically; every rank must call it (each writes its RNG state)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f".tmp-{STEP_PREFIX}{step:08d}"
    if d.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier(d)
    torch.save(_rng_state(), tmp / f"rng-rank{d.rank}.pt")
    if d.is_main:
        save_model(model, str(tmp / "model.safetensors"))
        if value_head is not None:
            save_model(value_head, str(tmp / "value_head.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = {"step": int(step), "order": order.state_dict() if order else None, "extra": extra or {},
                 "world": d.world, **_py_np_state()}
    barrier(d)
    if d.is_main:
        with open(tmp / "state.json", "w") as f:  # written last: its presence marks the directory complete
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in root.iterdir() if p.name.startswith(STEP_PREFIX))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def load_training_state(ckpt: str | Path, *, model: torch.nn.Module, optimizer, scheduler=None,
                        value_head: torch.nn.Module | None = None, order: EpochOrder | None = None,
                        d: Dist = Dist(), device: str = "cpu") -> dict:
    """Restore everything ``save_training_state`` wrote; returns ``state.json`` (``step``, ``extra``)."""
    ckpt = Path(ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    load_model(model, str(ckpt / "model.safetensors"), device=device)
    if value_head is not None:
        load_model(value_head, str(ckpt / "value_head.safetensors"), device=device)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
    if scheduler is not None and (ckpt / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    if order is not None and state.get("order"):
        order.load_state_dict(state["order"])
    _restore_py_np(state)
    rng_file = ckpt / f"rng-rank{d.rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state
