"""Data order of training: a deterministic per-epoch permutation consumed in equal global batches; its
``(epoch, pos)`` state goes into checkpoints so a resumed run continues the same order."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from umedfast.errors import UserError


@dataclass
class EpochOrder:
    """Deterministic per-epoch permutation of ``n`` items, consumed in global batches that never cross an epoch.

    Its state is ``(epoch, pos)``; restoring it continues the same permutation, so no item is seen twice in an
    epoch across a kill/resume. A tail shorter than the batch is skipped (every global batch has the same size, so
    every rank gets the same share).
    """

    n: int
    seed: int = 0
    epoch: int = 0
    pos: int = 0

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def batches_per_epoch(self, size: int) -> int:
        return self.n // size

    def next_batch(self, size: int) -> tuple[int, list[int]]:
        """Return ``(epoch, indices)`` of the next global batch of ``size`` and advance."""
        if size > self.n:
            raise ValueError(f"batch of {size} is larger than the {self.n} training records")
        if self.pos + size > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self.permutation(self.epoch)[self.pos:self.pos + size]
        self.pos += size
        return self.epoch, idx

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        if s["n"] != self.n or s["seed"] != self.seed:
            raise UserError(f"checkpoint was taken on {s['n']} records with seed {s['seed']}, this run has "
                            f"{self.n} with seed {self.seed}: the data changed, cannot resume")
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
