"""Ctrl-C during training: the first SIGINT asks the loop to stop at the next step boundary, the second aborts.

The training loops call :func:`stop_requested` once per optimizer step (after the step's update, where model,
optimizer, scheduler and data order agree) and, when it is true, save a checkpoint and raise :class:`Interrupted`.
The CLI turns :class:`Interrupted` (and a plain ``KeyboardInterrupt``) into one line that says how to resume, and
exit status 130.
"""
from __future__ import annotations

import contextlib
import signal
import threading

_requested = threading.Event()


class Interrupted(KeyboardInterrupt):
    """Raised by a training loop after it stopped cleanly on Ctrl-C; ``checkpoint`` is the saved directory or None."""

    def __init__(self, stage: str, step: int, checkpoint=None):
        super().__init__(f"{stage} interrupted at step {step}")
        self.stage, self.step, self.checkpoint = stage, step, checkpoint


def stop_requested() -> bool:
    """True once Ctrl-C was pressed inside :func:`graceful_sigint` (the loop should checkpoint and stop)."""
    return _requested.is_set()


def stop_agreed(d) -> bool:
    """:func:`stop_requested` on any rank of ``d`` (a ``umedfast.train.distributed.Dist``): torchrun delivers Ctrl-C
    to each rank at slightly different steps, so all ranks stop together and the checkpoint's collectives line up.
    Every rank must call it at the same step boundary (one scalar all-reduce when ``d.world > 1``)."""
    stop = stop_requested()
    if d.world > 1:  # imported here: the CLI imports this module before torch (one-line refusals take < 1 s)
        import torch

        from umedfast.train.distributed import all_reduce_sum

        stop = float(all_reduce_sum(torch.tensor(float(stop)), d)) > 0
    return stop


@contextlib.contextmanager
def graceful_sigint():
    """Within this block the first SIGINT only sets the stop flag; a second one raises ``KeyboardInterrupt`` at once.

    Only the main thread of the main interpreter can install signal handlers; elsewhere this is a no-op.
    """
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
