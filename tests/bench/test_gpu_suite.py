"""bench/gpu_suite.py: the CPU dry run (plan, every pytest selection collected, the table written) and the table
built from a pytest-benchmark JSON. The real run needs a GPU; this keeps it runnable for the day one is lent."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_dry_run_collects_every_selection_and_writes_the_table(tmp_path):
    """Six subprocesses that each import torch/transformers and collect a pytest selection: ~1-3 min on 2 busy cores
    (hence `slow`). The CUDA-test step collects the two CUDA test files here (the real run collects all of tests/)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "bench/gpu_suite.py", "--dry-run", "--out", str(tmp_path), "--tests",
                          "tests/kernels/test_kernels_cuda.py", "tests/ops/test_ops.py"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_suite.json").read_text())
    import importlib

    n_configs = len(importlib.import_module("umedfast.kernels.vrr_attention").configs_for(128, torch.bfloat16))
    r = res["results"]
    assert list(r) == ["build", "tests", "vrr", "vrr_variants", "iou", "logprob", "ppo"]
    assert "pip install -e . --no-build-isolation" in r["build"]["cmd"] and r["build"]["dry_run"]
    assert r["tests"]["rc"] == 0 and r["tests"]["collected"] >= 20  # tests/kernels/test_kernels_cuda.py alone has 21
    assert r["vrr"]["rc"] == 0 and r["vrr"]["collected"] == 24  # 4 shapes x 6 providers
    # sdpa_cudnn / sdpa_flash + each variant x (each config at D=128 bf16 + tuned) + auto-tuned
    assert r["vrr_variants"]["rc"] == 0 and r["vrr_variants"]["collected"] == 2 + 4 * (n_configs + 1) + 1
    assert r["iou"]["rc"] in (0, 5)  # CUDA cases are parametrized by the devices present: none on CPU
    assert r["logprob"]["rc"] == 0 and r["logprob"]["collected"] == 4
    assert r["ppo"]["rc"] == 0 and "ppo config ok tiny-qwen2-vl" in r["ppo"]["tail"]
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "DRY RUN on CPU: nothing measured" in md and "GPU: none" in md and f"torch {torch.__version__}" in md
    assert "| vrr | dry run |" in md


def test_table_from_benchmark_json():
    g = _suite()
    data = {"benchmarks": [
        {"name": "test_vrr_cuda[B4H32N2048D128c-umedfast_vrr]", "stats": {"median": 0.01},
         "extra_info": {"ms": 0.47, "extra_mib": 1.5, "tflops": 146.2, "device": "NVIDIA H200", "provider": "x"}},
        {"name": "test_paired_iou[cuda-N16777216-umedfast]", "stats": {"median": 0.0002},
         "extra_info": {"peak_mem_mb": 67.1, "gbps": 2100.0}},
    ]}
    rows = g.bench_rows(data)
    assert rows[0]["ms"] == 0.47 and rows[0]["peak_mb"] == 1.6 and "device" not in rows[0]["extra"]
    assert rows[1]["ms"] == 0.2 and rows[1]["peak_mb"] == 67.1
    info = {"torch": "2.11.0+cu130", "cuda": "13.0", "triton": "3.6.0", "transformers": "5.17.0", "python": "3.12",
            "date": "2026-12-01 10:00 UTC", "host": "h", "gpu": "NVIDIA H200", "capability": "9.0", "driver": "580"}
    md = g.markdown(info, {"vrr": {"rc": 0, "seconds": 100, "rows": rows}}, dry=False)
    assert "GPU: NVIDIA H200" in md and "| vrr | ok | 100 | 2 cases |" in md
    assert "| test_vrr_cuda[B4H32N2048D128c-umedfast_vrr] | 0.47 | 1.6 | tflops=146.2, provider=x |" in md
