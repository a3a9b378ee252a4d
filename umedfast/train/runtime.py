"""Where and how a training process runs: device, seeds, CPU threads, weight dtype and autocast."""
from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from umedfast.config import TrainConfig, threads_value
from umedfast.train.distributed import Dist

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(cfg: TrainConfig, d: Dist) -> str:
    if cfg.device == "auto":
        return f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device")
        return f"cuda:{d.local_rank}"
    return "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _cpu_times(cpus) -> dict[int, tuple[int, int]] | None:
    """{cpu: (idle ticks, total ticks)} from /proc/stat for the given CPU ids (None where it cannot be read)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    out = {}
    for ln in lines:
        name, *vals = ln.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]
            out[int(name[3:])] = (v[3] + v[4], sum(v))  # idle + iowait, all states
    return out or None


def free_cores(window_s: float = 0.3) -> tuple[int, int, str]:
    """(free cores, usable cores, how it was measured) for ``threads: auto``.

    Usable = the CPUs this process may run on (``os.sched_getaffinity``). Free = the idle share of those CPUs
    over ``window_s`` seconds (/proc/stat), rounded, at least 1; where /proc/stat is unreadable, usable minus
    the 1-minute load average. Under contention fewer OpenMP threads are much faster (a thread that waits on a
    taken core stalls the others at every parallel region), so this errs on the side of fewer threads."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    usable = len(cpus)
    a = _cpu_times(set(cpus))
    if a is not None:
        time.sleep(window_s)
        b = _cpu_times(set(cpus)) or {}
        idle = sum((b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in a if c in b)
        free = int(idle + 0.5)
        how = f"{idle:.1f} of {usable} usable cores idle over {window_s:.1f} s"
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        free = int(usable - load + 0.5)
        how = f"load average {load:.2f} on {usable} usable cores"
    return max(1, min(usable, free)), usable, how


def setup_threads(cfg: TrainConfig, local_world: int = 1) -> int:
    """Set torch's intra-op threads from ``cfg.threads`` (``auto``, N, or 0 = torch default); returns the count.

    ``auto`` picks the cores free at start, shared among the ``local_world`` processes of this machine, and logs
    the choice (override with ``threads=N``)."""
    t = threads_value(cfg.threads)
    if t == "auto":
        free, usable, how = free_cores()
        n = max(1, free // max(1, local_world))
        logging.getLogger("umedfast.threads").info(
            "threads auto: %d torch thread(s) (%s%s); set threads=N to choose", n, how,
            f", {local_world} processes" if local_world > 1 else "")
        torch.set_num_threads(n)
    elif t > 0:
        torch.set_num_threads(t)
    return torch.get_num_threads()


def model_dtype(cfg: TrainConfig, device: str) -> torch.dtype:
    if cfg.model.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if cfg.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be auto or one of {sorted(DTYPES)}")
    return DTYPES[cfg.model.dtype]


def autocast(device: str, dtype: torch.dtype):
    """bf16 autocast on GPU for fp32 weights; a no-op context on CPU (CPU autocast is slower than fp32 here)."""
    if device.startswith("cuda") and dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
