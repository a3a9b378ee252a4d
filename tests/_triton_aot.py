"""Ahead-of-time Triton compiles for an H100 (sm_90) on a machine with no GPU, shared by the kernel tests."""
import json
import os
import subprocess
import sys

import pytest


def compile_for_sm90(script: str) -> dict:
    """Run ``script`` (which compiles kernels for sm_90 and prints one JSON line last) in a fresh interpreter-free
    process, since triton cannot mix interpreted and compiled kernels in one process. Returns the parsed JSON;
    skips the calling test when the triton install has no usable ptxas (the script prints {"skip": reason})."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(f"no usable ptxas in this triton install: {res['skip']}")
    return res
