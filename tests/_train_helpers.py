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
