"""Shared helpers for the training tests: a tiny config and a subprocess runner for ``umedfast-train``."""
import json
import os
import subprocess
import sys
from pathlib import Path

TINY = [
    "data.synth_n=40", "data.synth_image_size=64", "data.max_eval=2", "model.tiny_text_layers=1",
    "model.tiny_text_hidden=64", "eval_batch_size=2", "ppo.eval_max_new_tokens=6", "sft.eval_max_new_tokens=6",
    "progress=false", "threads=1",
]


def env(**extra) -> dict:
    e = dict(os.environ)
    # The VRR kernel's torch path on CPU (its Triton interpreter path is covered by the kernel's own tests).
    e.update({"TRITON_INTERPRET": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "OMP_NUM_THREADS": "1"})
    e.update(extra)
    return e


def train_cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "umedfast.cli", "--output-dir", str(out), *args, *TINY]


def run(cmd, timeout=240, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"{cmd}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-5000:]}"
    return p


def metrics(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def sigkill_when(proc: subprocess.Popen, ready, timeout: float = 180, watch=None) -> None:
    """Poll ``ready()`` until it is true, then SIGKILL the training process ``proc``; assert it was still running
    (else fail with its stderr) and that it died of the signal. ``watch(pid)`` is called on every poll and once
    just before the kill (e.g. to record its worker processes)."""
    import signal
    import time

    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if watch:
                watch(proc.pid)
            if ready():
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            err = err.decode() if isinstance(err, bytes) else err
            raise AssertionError("training ended before it could be killed: " + err[-2000:])
        if watch:
            watch(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def sigkill_after_checkpoint(out: Path, args: list[str], stage: str = "sft", step: int = 3, timeout: float = 180,
                             watch=None) -> None:
    """Start ``umedfast-train`` in a real process and SIGKILL it once checkpoint ``step`` of ``stage`` is complete
    on disk (``sigkill_when``)."""
    proc = subprocess.Popen(train_cmd(out, *args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = out / stage / "checkpoints"

    def checkpoint_written():
        done = [p for p in ckpts.glob("step-*") if (p / "state.json").exists()] if ckpts.exists() else []
        return any(int(p.name.split("-")[1]) >= step for p in done)

    sigkill_when(proc, checkpoint_written, timeout, watch)
