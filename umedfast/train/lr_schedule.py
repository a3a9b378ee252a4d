"""Learning-rate schedule of both stages: linear warmup, then cosine down to a floor (a LambdaLR factor)."""
from __future__ import annotations

import math


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """LambdaLR factor: linear warmup to 1 over ``warmup_ratio * total`` steps, then cosine down to ``min_lr_ratio``."""
    warm = int(round(warmup_ratio * total_steps))

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f
