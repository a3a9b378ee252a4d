"""torchrun data parallelism: process-group setup, sharding, reductions. A single process is world size 1.

Launch: ``torchrun --nproc_per_node=N -m umedfast.cli --config ...`` (or the ``umedfast-train`` script).
CPU uses the gloo backend, CUDA uses nccl with one device per local rank. Gradients are averaged by
``torch.nn.parallel.DistributedDataParallel``; rollouts are sharded so each rank generates and scores its own
queries, and reward statistics are all-reduced.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from umedfast.config import PARALLEL_MODES


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1 (idempotent); returns this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local)


def shard(items: list, d: Dist) -> list:
    """The part of a global batch this rank processes: items ``rank, rank + world, ...``."""
    return items[d.rank::d.world]


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over ranks (a copy; the input is untouched). Identity for one process."""
    if not d.enabled:
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_floats(values: list[float], d: Dist) -> list[float]:
    """Concatenate per-rank float lists (any lengths) on every rank, in rank order."""
    if not d.enabled:
        return list(values)
    objs: list = [None] * d.world
    dist.all_gather_object(objs, list(values))
    return [v for part in objs for v in part]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def broadcast_object(obj, d: Dist, src: int = 0):
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(module: torch.nn.Module, d: Dist, device: str) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when world > 1 (gradient all-reduce in buckets), else itself."""
    if not d.enabled:
        return module

    ids = [d.local_rank] if device.startswith("cuda") else None
    # VLMs carry parameters a forward never touches (e.g. CLIP's post_layernorm on the unused pooled output)
    return DDP(module, device_ids=ids, find_unused_parameters=True)


def check_parallel(parallel: str) -> None:
    """For configs built in code without ``umedfast.config.validate``: an unknown mode must not fall back to DDP."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")


def use_fsdp(parallel: str, d: Dist) -> bool:
    """FSDP2 applies under torchrun with world > 1; one process trains unsharded whatever ``parallel`` says."""
    check_parallel(parallel)
    return parallel == "fsdp2" and d.enabled


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
