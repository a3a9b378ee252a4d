"""torchrun with 2 processes (gloo on CPU) gives the same SFT result as 1 process with the same global batch, and
the sharded PPO stage runs to the end."""
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import metrics, run, TINY

ARGS = ["sft.epochs=1", "sft.batch_size={bs}", "sft.max_steps=3", "sft.eval_every_epoch=false", "seed=0",
        "sft.lr=2e-3", "sft.warmup_ratio=0", "ppo.steps=1", "ppo.queries_per_step=2", "ppo.k=2",
        "ppo.max_new_tokens=6", "ppo.minibatch_size=2", "ppo.ppo_epochs=1"]


def _args(bs):
    return [a.format(bs=bs) for a in ARGS]


def test_two_ranks_equal_one_rank(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "umedfast.cli", "--output-dir", str(one), "--stage", "all", *_args(4), *TINY])
    # share the generated data so both runs see identical records
    shutil.copytree(one / "data", two / "data")
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "umedfast.cli",
         "--output-dir", str(two), "--stage", "all", *_args(2), *TINY], timeout=300)
    l1 = [r["loss"] for r in metrics(one / "sft" / "metrics.jsonl") if "loss" in r]
    l2 = [r["loss"] for r in metrics(two / "sft" / "metrics.jsonl") if "loss" in r]
    assert len(l1) == len(l2) == 3
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
    ids1 = [r["ids"] for r in metrics(one / "sft" / "metrics.jsonl") if "ids" in r]
    ids2 = [r["ids"] for r in metrics(two / "sft" / "metrics.jsonl") if "ids" in r]
    assert ids1 == ids2  # the same global batches, split across ranks
    w1 = load_file(str(one / "sft" / "final" / "model.safetensors"))
    w2 = load_file(str(two / "sft" / "final" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert l1[-1] < l1[0]  # it trained
    assert worst < 1e-4, f"2-rank weights differ from 1-rank by {worst}"
    for out in (one, two):
        assert (out / "ppo" / "eval.json").is_file() and (out / "sft" / "eval.json").is_file()
        rows = [r for r in metrics(out / "ppo" / "metrics.jsonl") if "reward" in r]
        assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["reward"]))
