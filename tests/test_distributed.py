"""torchrun with 2 processes (gloo on CPU) gives the same SFT and PPO results as 1 process with the same global batch.

PPO is comparable because sampling is keyed by (seed, step, query, candidate) rather than by a per-rank RNG stream,
and every token mean is taken over the tokens of all ranks. Each rank's minibatch covers its whole shard
(``minibatch_size`` >= local batch), with 2 PPO epochs so the separate scoring forward and two updates per step run.
"""
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import metrics, run, TINY

ARGS = ["sft.epochs=1", "sft.batch_size={bs}", "sft.max_steps=3", "sft.eval_every_epoch=false", "seed=0",
        "sft.lr=2e-3", "sft.warmup_ratio=0", "ppo.steps=2", "ppo.queries_per_step=2", "ppo.k=2",
        "ppo.max_new_tokens=6", "ppo.minibatch_size=4", "ppo.ppo_epochs=2", "ppo.lr=1e-3", "ppo.value_lr=1e-2"]
PPO_KEYS = ("reward", "r_llm", "alr", "iou", "vrr", "kl", "resp_len", "pg_loss", "vf_loss", "clip_frac", "entropy")


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
    # PPO: the same candidates (texts, rewards), the same losses, the same updated weights
    r1 = [r for r in metrics(one / "ppo" / "metrics.jsonl") if "reward" in r]
    r2 = [r for r in metrics(two / "ppo" / "metrics.jsonl") if "reward" in r]
    assert len(r1) == len(r2) == 2
    for a, b in zip(r1, r2):
        assert a["ids"] == b["ids"] and a["sample"] == b["sample"]
        for key in PPO_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), key
    assert any(r["vf_loss"] > 0 for r in r1) and any(r["pg_loss"] != 0 for r in r1)
    sft = load_file(str(one / "sft" / "final" / "model.safetensors"))
    for name in ("model.safetensors", "value_head.safetensors"):
        p1, p2 = (load_file(str(o / "ppo" / "final" / name)) for o in (one, two))
        assert p1.keys() == p2.keys()
        if name.startswith("model"):  # how far PPO moved the policy from its SFT start
            moved = max(float((p1[k] - sft[k]).abs().max()) for k in p1)
            assert moved > 1e-3, "PPO did not move the policy"
        worst = max(float((p1[k] - p2[k]).abs().max()) for k in p1)
        assert worst < 1e-4, f"2-rank PPO {name} differs from 1-rank by {worst}"


def _loss_worker(rank: int, world: int, init: str, out: str):
    """One rank of the minibatch-loss check: DDP over a tiny policy, this rank's rows, gradients to ``out`` for the
    global normalization and for per-rank means (``Dist()``: each rank divides by its own token count)."""
    import torch.distributed as dist

    from umedfast.train.distributed import Dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for name, d in (("global", Dist(rank, world)), ("per_rank", Dist())):
            net = _tiny_policy()
            _backward(torch.nn.parallel.DistributedDataParallel(net), _rows(), slice(2 * rank, 2 * rank + 2), d)
            torch.save({n: p.grad for n, p in net.named_parameters()}, f"{out}/{name}{rank}.pt")
    finally:
        dist.destroy_process_group()


def _tiny_policy():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 6)  # logits over 5 tokens + one value


def _rows():
    """4 rows x 5 positions with very different response lengths (rank 0 holds the long ones)."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(4, 5, 3, generator=g)
    toks = torch.randint(0, 5, (4, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]).float()
    old_lp = torch.randn(4, 5, generator=g) * 0.1 - 1.6
    return feats, toks, mask, old_lp, torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)


def _backward(net, rows, sl, d):
    from umedfast.config import PPOConfig
    from umedfast.train.ppo import minibatch_loss

    feats, toks, mask, old_lp, adv, ret = (t[sl] for t in rows)
    out = net(feats)
    lp = torch.log_softmax(out[..., :5], -1).gather(-1, toks[..., None])[..., 0]
    v = out[..., 5]
    p = PPOConfig(ent_coef=0.01)
    ent = -(torch.softmax(out[..., :5], -1) * torch.log_softmax(out[..., :5], -1)).sum(-1)
    loss, _ = minibatch_loss(p, d, lp, v, ent, old_lp, v.detach() * 0.9, adv, ret, lp.detach(), mask)
    loss.backward()


def test_ppo_minibatch_loss_two_ranks_equal_one_rank(tmp_path):
    """DDP-averaged gradients of ``minibatch_loss`` on 2 gloo ranks with unequal token counts equal the 1-process
    gradient on all rows; per-rank token means (the negative control) do not."""
    import torch.multiprocessing as mp

    from umedfast.train.distributed import Dist

    mp.spawn(_loss_worker, args=(2, f"file://{tmp_path}/rdv", str(tmp_path)), nprocs=2, join=True)
    net = _tiny_policy()
    _backward(net, _rows(), slice(0, 4), Dist())
    for rank in range(2):
        for name in ("global", "per_rank"):
            got = torch.load(tmp_path / f"{name}{rank}.pt", weights_only=True)
            worst = max(float((got[n] - p.grad).abs().max()) for n, p in net.named_parameters())
            if name == "global":
                assert worst < 1e-6, worst  # float32 sums in another order
            else:
                assert worst > 1e-3, worst  # the short rank's tokens weigh more
