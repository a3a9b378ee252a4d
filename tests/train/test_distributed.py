"""torchrun with 2 processes (gloo on CPU), under DDP and under FSDP2, gives the same SFT and PPO results as 1 process
with the same global batch.

PPO is comparable because sampling is keyed by (seed, step, query, candidate) rather than by a per-rank RNG stream,
and every token mean is taken over the tokens of all ranks. Each rank's minibatch covers its whole shard
(``minibatch_size`` >= local batch), with 2 PPO epochs so the separate scoring forward and two updates per step run.
"""
import json
import shutil
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import metrics, run, TINY

ARGS = ["sft.epochs=1", "sft.batch_size={bs}", "sft.grad_accum=2", "sft.max_steps=3", "sft.eval_every_epoch=false", "seed=0",
        "sft.lr=2e-3", "sft.warmup_ratio=0", "ppo.steps=2", "ppo.queries_per_step=2", "ppo.k=2",
        "ppo.max_new_tokens=6", "ppo.minibatch_size=4", "ppo.ppo_epochs=2", "ppo.lr=1e-3", "ppo.value_lr=1e-2"]
PPO_KEYS = ("reward", "r_llm", "alr", "iou", "vrr", "kl", "resp_len", "pg_loss", "vf_loss", "clip_frac", "entropy")


def _args(bs):
    return [a.format(bs=bs) for a in ARGS]


def _torchrun(out, *extra):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "umedfast.cli",
         "--output-dir", str(out), "--stage", "all", *_args(2), *TINY, *extra], timeout=300)


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The 1-process reference run (global SFT batch 4, 2 PPO queries x K=2)."""
    out = tmp_path_factory.mktemp("dist") / "one"
    run([sys.executable, "-m", "umedfast.cli", "--output-dir", str(out), "--stage", "all", *_args(4), *TINY])
    return out


def _weights(path):
    return load_file(str(path))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _assert_same_run(one, two):
    """SFT and PPO of ``two`` (2 ranks) equal ``one`` (1 process). Tolerance: 1e-4 on weights. Ranks sum gradients
    in another order (float32 rounding ~1e-7 relative); AdamW divides by sqrt(v), so an element whose gradient is
    near 0 can move by a visible fraction of lr (2e-3 here): 1.3e-5 measured after 3 SFT steps, vs updates of 1e-3+."""
    l1 = [r["loss"] for r in metrics(one / "sft" / "metrics.jsonl") if "loss" in r]
    l2 = [r["loss"] for r in metrics(two / "sft" / "metrics.jsonl") if "loss" in r]
    assert len(l1) == len(l2) == 3
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
    ids1 = [r["ids"] for r in metrics(one / "sft" / "metrics.jsonl") if "ids" in r]
    ids2 = [r["ids"] for r in metrics(two / "sft" / "metrics.jsonl") if "ids" in r]
    assert ids1 == ids2  # the same global batches, split across ranks
    assert l1[-1] < l1[0]  # it trained
    worst = _max_diff(_weights(one / "sft" / "final" / "model.safetensors"),
                      _weights(two / "sft" / "final" / "model.safetensors"))
    assert worst < 1e-4, f"2-rank SFT weights differ from 1-rank by {worst}"
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
    sft = _weights(one / "sft" / "final" / "model.safetensors")
    p1 = _weights(one / "ppo" / "final" / "model.safetensors")
    assert max(float((p1[k] - sft[k]).abs().max()) for k in p1) > 1e-3, "PPO did not move the policy"
    for name in ("model.safetensors", "value_head.safetensors"):
        worst = _max_diff(_weights(one / "ppo" / "final" / name), _weights(two / "ppo" / "final" / name))
        assert worst < 1e-4, f"2-rank PPO {name} differs from 1-rank by {worst}"


@pytest.mark.slow  # end to end: trains through the CLI
def test_two_ranks_equal_one_rank(one, tmp_path):
    two = tmp_path / "two"
    shutil.copytree(one / "data", two / "data")  # share the generated data so both runs see identical records
    _torchrun(two)
    _assert_same_run(one, two)


@pytest.mark.slow  # end to end: trains through the CLI
def test_fsdp2_equals_one_rank_and_resumes(one, tmp_path):
    """FSDP2 (sharded weights, gradients and AdamW state) gives the 1-process result too; its checkpoints are full
    ``save_pretrained`` / safetensors files, and resuming from the step-1 checkpoint redoes step 2 exactly."""
    two = tmp_path / "fsdp"
    shutil.copytree(one / "data", two / "data")
    _torchrun(two, "parallel=fsdp2", "ppo.save_every=1")
    _assert_same_run(one, two)
    for stage in ("sft", "ppo"):  # each rank really holds half of the weights (rank 0 gets the odd rows)
        assert 0.45 < json.loads((two / stage / "summary.json").read_text())["param_fraction_per_rank"] < 0.6
        assert json.loads((one / stage / "summary.json").read_text())["param_fraction_per_rank"] == 1.0
    final = two / "ppo" / "final"
    assert (final / "config.json").is_file() and (final / "value_head.safetensors").is_file()
    before = {n: _weights(final / n) for n in ("model.safetensors", "value_head.safetensors")}
    ckpts = two / "ppo" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000001", "step-00000002"]
    opt = torch.load(ckpts / "step-00000001" / "optimizer.pt", weights_only=True)
    assert opt["state"], "the full AdamW state was not gathered into the checkpoint"
    shutil.rmtree(ckpts / "step-00000002")
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "umedfast.cli",
         "--output-dir", str(two), "--stage", "ppo", "--resume", *_args(2), *TINY, "parallel=fsdp2",
         "ppo.save_every=1"], timeout=300)
    rows = [r for r in metrics(two / "ppo" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]  # the step-2 row past the restored checkpoint is dropped, then redone
    for name, w in before.items():
        assert _max_diff(w, _weights(final / name)) < 1e-6, name


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
    from umedfast.train.ppo_step import minibatch_loss

    feats, toks, mask, old_lp, adv, ret = (t[sl] for t in rows)
    out = net(feats)
    lp = torch.log_softmax(out[..., :5], -1).gather(-1, toks[..., None])[..., 0]
    v = out[..., 5]
    p = PPOConfig(ent_coef=0.01)
    ent = -(torch.softmax(out[..., :5], -1) * torch.log_softmax(out[..., :5], -1)).sum(-1)
    gae, _ = minibatch_loss(p, d, lp, v, ent, old_lp, v.detach() * 0.9, adv, ret, lp.detach(), mask)
    # the critic-free branch too (GRPO/RLOO: no value loss, k3 KL to a reference in the loss)
    group, _ = minibatch_loss(p, d, lp, v, ent, old_lp, None, adv, None, lp.detach() + 0.3 * adv, mask)
    (gae + group).backward()


def test_ppo_minibatch_loss_two_ranks_equal_one_rank(tmp_path):
    """DDP-averaged gradients of ``minibatch_loss`` (GAE and critic-free branches) on 2 gloo ranks with unequal
    token counts equal the 1-process gradient on all rows; per-rank token means (the negative control) do not."""
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


def test_parallel_mode_is_checked():
    from umedfast.train.distributed import Dist, use_fsdp

    assert use_fsdp("fsdp2", Dist(0, 2)) and not use_fsdp("ddp", Dist(0, 2))
    assert not use_fsdp("fsdp2", Dist())  # one process trains unsharded
    with pytest.raises(ValueError, match="parallel"):
        use_fsdp("zero3", Dist())


MAX_NEW = (2, 7)  # rank 0 stops long before rank 1


def _fsdp_generate_worker(rank: int, world: int, init: str, out: str, data: str):
    """Sample from an FSDP2-sharded tiny LLaVA, each rank its own query and its own length cap."""
    import torch.distributed as dist

    from umedfast.data import read_mau
    from umedfast.model import TinySizes, load_vlm
    from umedfast.train.distributed import Dist
    from umedfast.train.fsdp import shard_model
    from umedfast.train.rollout import sample_candidates

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        bundle = load_vlm("tiny-llava", tiny=TinySizes(text_layers=1, text_hidden=64))
        shard_model(bundle.model, Dist(rank, world), "cpu")
        rec = read_mau(data)[rank]
        ro = sample_candidates(bundle, [rec], k=2, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW[rank],
                               seed=5, step=1, synced_gpus=True)
        torch.save({"ids": ro.response_ids, "mask": ro.response_mask}, f"{out}/gen{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # end to end: trains through the CLI
def test_fsdp2_generation_synced_and_equal_to_unsharded(tmp_path):
    """Ranks that stop at different lengths do not hang (synced_gpus), and the sharded model samples exactly what
    the unsharded one does for the same query keys."""
    import torch.multiprocessing as mp

    from umedfast.data import read_mau, synth
    from umedfast.model import TinySizes, load_vlm
    from umedfast.train.rollout import sample_candidates

    synth.generate(6, tmp_path / "data", seed=0, image_size=64, progress=False)
    data = str(tmp_path / "data" / synth.JSONL_NAME)
    ctx = mp.start_processes(_fsdp_generate_worker, args=(2, f"file://{tmp_path}/rdv", str(tmp_path), data),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:  # a rank waiting in a collective the other never joins
            for p in ctx.processes:
                p.kill()
            pytest.fail("sharded generation hung: ranks stopping at different lengths are not synced")
    bundle = load_vlm("tiny-llava", tiny=TinySizes(text_layers=1, text_hidden=64))
    for rank, rec in enumerate(read_mau(data)[:2]):
        got = torch.load(tmp_path / f"gen{rank}.pt", weights_only=True)
        ref = sample_candidates(bundle, [rec], k=2, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW[rank],
                                seed=5, step=1)
        assert got["ids"].shape[1] == MAX_NEW[rank]
        assert torch.equal(got["ids"], ref.response_ids) and torch.equal(got["mask"], ref.response_mask)
