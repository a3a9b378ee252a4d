"""The input pipeline (umedfast/data/loader.py): the same batches whatever ``data.workers`` is, exact resume after
kill -9 with 0 and 2 workers, torchrun shards, corrupt images counted and skipped (never a worker crash), the
evaluation cache, and ``data.workers`` refusals. Real PNG files (8-bit MAU-Synth and a 16-bit CT slice), real
worker processes, real training subprocesses.
"""
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from umedfast.data import read_mau, synth
from umedfast.data.loader import Feed, OrderShards, clear_eval_cache, collate_spec, resolve_workers
from umedfast.train.data_order import EpochOrder

from _train_helpers import TINY, env, metrics, run, sigkill_after_checkpoint, train_cmd


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """18 MAU-Synth records (64 px PNGs) + 2 records on a 16-bit 96x80 CT slice windowed from HU."""
    root = tmp_path_factory.mktemp("pipe")
    recs = synth.generate(18, root, seed=0, image_size=64, progress=False)
    hu = np.linspace(-1000, 1500, 96 * 80, dtype=np.float32).reshape(80, 96)
    ct = root / "ct16.png"
    Image.fromarray((hu + 32768).astype(np.uint16)).save(ct)  # PIL writes mode I;16
    assert Image.open(ct).mode.startswith("I")
    for j in range(2):
        r = synth.generate(1, root / f"x{j}", seed=j + 7, image_size=64, progress=False)[0]
        r.id, r.image, r.meta, r.image_size = f"ct-{j}", str(ct), {"window": [-160, 240]}, [96, 80]
        recs.append(r)
    return recs


@pytest.fixture(scope="module")
def bundle():
    from umedfast.model import TinySizes, load_vlm

    return load_vlm("tiny-llava", dtype=torch.float32, device="cpu", seed=0,
                    tiny=TinySizes(text_layers=1, text_hidden=64))


def _corrupt(path: Path, how: str) -> Path:
    if how == "truncated":  # a real PNG cut in the middle of its image data (a broken download)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(b"this is not an image at all\n" * 10)
    return path


def _batches(feed: Feed, expects):
    return [feed.next(e) for e in expects]


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------------- order
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_follow_the_epoch_order_and_equal_in_process_collation(records, bundle, workers):
    """Batches of 6 into a 4th epoch (crossing epoch ends, tail of 2 skipped) hold exactly the EpochOrder's records and
    the very tensors ``collate_chat`` builds in the training process (16-bit CT records included)."""
    from umedfast.model import collate_chat

    order = EpochOrder(len(records), seed=5)
    feed = Feed(records, OrderShards(order, 6, 10), collate_spec(bundle), workers=workers, model=bundle.model)
    try:
        for _ in range(10):
            _, idx = order.next_batch(6)
            fed = feed.next(idx)
            assert fed.indices == idx and not fed.bad
            _same(fed.batch, collate_chat(bundle, [records[i] for i in idx]))
        assert order.epoch == 3  # 20 records // 6 = 3 batches per epoch
    finally:
        feed.close()


def test_worker_count_does_not_change_the_batches_and_torchrun_shards(records, bundle):
    """0, 1 and 2 workers give identical batch sequences; ranks 0/1 of 2 get idx[0::2] / idx[1::2] of the same
    global batch (what sft.py and ppo.py did before the pipeline)."""
    order = EpochOrder(len(records), seed=1)
    seqs = {}
    for w in (0, 1, 2):
        feed = Feed(records, OrderShards(order, 6, 7), collate_spec(bundle), workers=w, for_generation=True)
        seqs[w] = _batches(feed, [None] * 7)
        feed.close()
    for w in (1, 2):
        for a, b in zip(seqs[0], seqs[w]):
            assert a.indices == b.indices
            _same(a.batch, b.batch)
    ref = EpochOrder(len(records), seed=1)
    for fed in seqs[0]:
        assert fed.indices == ref.next_batch(6)[1]
    ranks = [list(OrderShards(order, 6, 7, rank=r, world=2)) for r in (0, 1)]
    ref = EpochOrder(len(records), seed=1)
    for a, b in zip(*ranks):
        idx = ref.next_batch(6)[1]
        assert a == idx[0::2] and b == idx[1::2]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_feed_rebuilt_from_a_saved_order_continues_at_the_next_sample(records, bundle, workers):
    """Workers prefetch ahead, but the order a checkpoint stores is the loop's (advanced as batches are consumed):
    a feed rebuilt from it yields exactly the batches the first one would have yielded next."""
    order = EpochOrder(len(records), seed=2)
    feed = Feed(records, OrderShards(order, 4, 12), collate_spec(bundle), workers=workers)
    for _ in range(7):  # epoch 1 has started; 2 workers x prefetch 2 hold up to 4 batches beyond this point
        feed.next(order.next_batch(4)[1])
    saved = order.state_dict()
    rest = [feed.next(order.next_batch(4)[1]) for _ in range(5)]
    feed.close()
    again = EpochOrder(len(records), seed=2)
    again.load_state_dict(saved)
    feed2 = Feed(records, OrderShards(again, 4, 5), collate_spec(bundle), workers=workers)
    for want in rest:
        got = feed2.next(again.next_batch(4)[1])
        assert got.indices == want.indices
        _same(got.batch, want.batch)
    feed2.close()


def test_a_feed_out_of_step_with_the_loop_is_an_error(records, bundle):
    order = EpochOrder(len(records), seed=0)
    feed = Feed(records, OrderShards(order, 4, 2), collate_spec(bundle))
    with pytest.raises(RuntimeError, match="out of step"):
        feed.next([0, 1, 2, 3])
    feed.next()
    with pytest.raises(RuntimeError, match="exhausted"):
        feed.next()


# --------------------------------------------------------------------------------------------------- corrupt images
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_images_are_counted_named_once_and_skipped(records, bundle, tmp_path, workers, caplog):
    import copy

    from umedfast.errors import UserError
    from umedfast.model import collate_chat

    recs = copy.deepcopy(records[:8])
    recs[1].image = str(_corrupt(tmp_path / "half.png", "truncated"))
    recs[6].image = str(_corrupt(tmp_path / "text.png", "garbage"))
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [1, 6], [0, 1, 2, 3]]
    with caplog.at_level(logging.WARNING, logger="umedfast.data.loader"):
        feed = Feed(recs, batches, collate_spec(bundle), workers=workers, model=bundle.model)
        fed = [feed.next(batches[0]), feed.next(batches[1])]
        with pytest.raises(UserError, match="every image of a data batch is unreadable.*half.png"):
            feed.next_usable(batches[2])
        fed.append(feed.next(batches[3]))
        feed.close()
    assert fed[0].indices == [0, 2, 3] and [b.index for b in fed[0].bad] == [1]
    assert fed[1].indices == [4, 5, 7] and fed[1].bad[0].path.endswith("text.png")
    _same(fed[0].batch, collate_chat(bundle, [recs[0], recs[2], recs[3]]))  # the rest of the batch proceeds
    assert feed.bad_images == 5  # every occurrence counted ...
    named = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(named) == 2 and any("half.png" in m for m in named)  # ... each path named once


@pytest.mark.slow  # end to end: trains through the CLI
def test_sft_and_ppo_run_past_a_corrupt_image_with_workers(tmp_path):
    """A MAU JSONL whose training image is truncated on disk: SFT and PPO with 2 workers finish, count it in
    metrics.jsonl and summary.json, and name the file once in the log (no Traceback, no dead worker)."""
    from umedfast.data import write_mau

    from umedfast.data import splits

    data = tmp_path / "data"
    recs = synth.generate(24, data, seed=3, image_size=64, progress=False)
    train = splits.select(recs, "train")
    first = EpochOrder(len(train), seed=0).next_batch(4)[1][0]  # SFT's first batch holds it
    bad = _corrupt(Path(train[first].image), "truncated")
    write_mau(recs, data / "mau.jsonl")
    out = tmp_path / "run"
    p = run(train_cmd(out, "--stage", "all", f"data.path={data / 'mau.jsonl'}", "data.workers=2", "sft.epochs=1",
                      "sft.batch_size=4", "sft.eval_every_epoch=false", "ppo.steps=3", "ppo.queries_per_step=4",
                      "ppo.k=2", "ppo.max_new_tokens=6", "ppo.minibatch_size=8"))
    assert "Traceback" not in p.stderr
    assert p.stderr.count(f"sft: unreadable image skipped (counted in bad_images): {bad}") == 1
    sft = [r for r in metrics(out / "sft" / "metrics.jsonl") if "loss" in r]
    assert len(sft) == len(train) // 4 and [r["bad_images"] for r in sft] == [1] * len(sft)
    assert json.loads((out / "sft" / "summary.json").read_text())["bad_images"] == 1
    for r in sft:
        assert 0 <= r["data_wait_s"] < r["step_s"]
    ppo_order = EpochOrder(len(train), seed=1)  # run_ppo: seed + 1
    in_ppo = sum(first in ppo_order.next_batch(4)[1] for _ in range(3))
    ppo = [r for r in metrics(out / "ppo" / "metrics.jsonl") if "reward" in r]
    assert len(ppo) == 3 and ppo[-1]["bad_images"] == in_ppo
    assert json.loads((out / "ppo" / "summary.json").read_text())["bad_images"] == in_ppo
    assert json.loads((out / "ppo" / "eval.json").read_text())["bad_images"] == 0


# --------------------------------------------------------------------------------------------------- kill -9 + resume
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # end to end: trains through the CLI
@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_then_resume_sees_each_sample_once_in_order(tmp_path, workers):
    """SIGKILL a real SFT run mid-epoch, resume it: the optimizer steps' ids are exactly the EpochOrder sequence
    (no sample repeated or skipped, whatever the worker count), and the killed run's workers do not outlive it."""
    from umedfast.data import splits

    out = tmp_path / "run"
    args = ["--stage", "sft", "sft.epochs=3", "sft.batch_size=4", "sft.save_every=1", "sft.eval_every_epoch=false",
            f"data.workers={workers}"]
    kids: list[int] = []

    def record_workers(pid):
        kids[:] = _children(pid) or kids

    sigkill_after_checkpoint(out, args, step=4, timeout=240, watch=record_workers)
    assert len(kids) == workers, kids  # the worker processes really ran (0: none)
    t0 = time.time()
    while any(_alive(k) for k in kids) and time.time() - t0 < 20:
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids), "DataLoader workers outlived the killed trainer"
    run(train_cmd(out, *args, "--resume"))
    rows = {r["step"]: r for r in metrics(out / "sft" / "metrics.jsonl") if "ids" in r}
    train = splits.select(read_mau(out / "data" / synth.JSONL_NAME), "train")
    order = EpochOrder(len(train), seed=0)
    steps = 3 * (len(train) // 4)
    expect = [[train[i].id for i in order.next_batch(4)[1]] for _ in range(steps)]
    assert sorted(rows) == list(range(1, steps + 1))
    assert [rows[s]["ids"] for s in sorted(rows)] == expect


@pytest.mark.slow  # end to end: trains through the CLI
def test_torchrun_two_ranks_with_two_workers_each_keep_the_global_order(tmp_path):
    """2 ranks x 2 workers: the logged global batches are the EpochOrder's, and the loss equals 1 process with
    in-process loading (the same records reach the model)."""
    from umedfast.data import splits

    common = ["--stage", "sft", "sft.epochs=1", "sft.max_steps=3", "sft.eval_every_epoch=false", "seed=0"]
    one = tmp_path / "one"
    run(train_cmd(one, *common, "sft.batch_size=4", "data.workers=0"))
    two = tmp_path / "two"
    shutil.copytree(one / "data", two / "data")  # the same records (and the output folder exists for both ranks)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "umedfast.cli",
         "--output-dir", str(two), *common, "sft.batch_size=2", "data.workers=2", *TINY], timeout=300)
    r1 = [r for r in metrics(one / "sft" / "metrics.jsonl") if "loss" in r]
    r2 = [r for r in metrics(two / "sft" / "metrics.jsonl") if "loss" in r]
    train = splits.select(read_mau(one / "data" / synth.JSONL_NAME), "train")
    order = EpochOrder(len(train), seed=0)
    assert [r["ids"] for r in r2] == [r["ids"] for r in r1] == [[train[i].id for i in order.next_batch(4)[1]]
                                                                 for _ in range(3)]
    assert [r["loss"] for r in r2] == pytest.approx([r["loss"] for r in r1], rel=1e-4)


# --------------------------------------------------------------------------------------------------- evaluation
def test_evaluation_with_workers_equals_in_process_and_caches_batches(records, bundle, tmp_path, monkeypatch):
    import copy

    from umedfast.data import loader
    from umedfast.eval.mau import generate_responses

    clear_eval_cache()
    recs = copy.deepcopy(records[:7])
    recs[3].image = str(_corrupt(tmp_path / "cut.png", "truncated"))
    base = generate_responses(bundle, recs, batch_size=3, max_new_tokens=5, progress=False, workers=0)
    clear_eval_cache()
    bad: list = []
    with_workers = generate_responses(bundle, recs, batch_size=3, max_new_tokens=5, progress=False, workers=2,
                                      bad=bad)
    assert with_workers == base and base[3] == "" and all(base[i] for i in (0, 1, 2, 4, 5, 6))
    assert [b.index for b in bad] == [3]
    built = []
    real = loader.Feed
    monkeypatch.setattr(loader, "Feed", lambda *a, **k: built.append(1) or real(*a, **k))
    bad2: list = []
    again = generate_responses(bundle, recs, batch_size=3, max_new_tokens=5, progress=False, workers=2, bad=bad2)
    assert again == base and not built  # every batch from the cache: no image decoded again
    assert [b.index for b in bad2] == [3]  # the unreadable record is still counted
    other = generate_responses(bundle, recs[:4], batch_size=2, max_new_tokens=5, progress=False, workers=0)
    assert built and len(other) == 4 and other[3] == "" and all(other[:3])  # other batches: computed
    clear_eval_cache()


def test_evaluation_cache_misses_when_the_image_file_or_query_changes(records, bundle, tmp_path):
    import copy
    import shutil as sh

    from umedfast.data import loader

    recs = copy.deepcopy(records[:2])
    for r in recs:
        r.image = sh.copy(r.image, tmp_path / Path(r.image).name)
    fp = loader._fingerprint(bundle)
    key = loader._chunk_key(fp, recs)
    assert key is not None and loader._chunk_key(fp, copy.deepcopy(recs)) == key
    Image.new("RGB", (64, 64), (200, 10, 10)).save(recs[0].image)  # the file is replaced by another image
    os.utime(recs[0].image, ns=(1, 1))
    assert loader._chunk_key(fp, recs) != key
    changed = copy.deepcopy(recs)
    changed[1].query = "Where is the lesion?"
    assert loader._chunk_key(fp, changed) != loader._chunk_key(fp, recs)
    assert loader._chunk_key(fp, [{"image": Image.new("RGB", (8, 8)), "query": "q", "id": "x"}]) is None
    assert loader._chunk_key(fp + "x", recs) != loader._chunk_key(fp, recs)


def test_ppo_rollout_from_the_pipeline_batch_equals_collating_in_place(records, bundle):
    from umedfast.train.rollout import sample_candidates

    order = EpochOrder(len(records), seed=4)
    feed = Feed(records, OrderShards(order, 3, 1), collate_spec(bundle), for_generation=True, workers=2,
                model=bundle.model)
    fed = feed.next(order.next_batch(3)[1])
    feed.close()
    queries = [records[i] for i in fed.indices]
    kw = dict(k=2, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=0, step=3)
    a = sample_candidates(bundle, queries, prompts=fed.batch, **kw)
    b = sample_candidates(bundle, queries, **kw)
    assert a.texts == b.texts and torch.equal(a.response_ids, b.response_ids)


# --------------------------------------------------------------------------------------------------- config
def test_workers_auto_leaves_the_main_process_its_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(2)))
    assert resolve_workers("auto", device="cpu", torch_threads=1) == 1
    assert resolve_workers("auto", device="cpu", torch_threads=2) == 0
    assert resolve_workers("auto", device="cpu", torch_threads=1, local_world=2) == 0
    assert resolve_workers("3", device="cpu", torch_threads=2) == 3 and resolve_workers(0) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert resolve_workers("auto", device="cuda:0") == 4
    assert resolve_workers("auto", device="cuda:0", local_world=8) == 1


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_bad_workers_value_is_one_line_exit_2(tmp_path, value):
    p = subprocess.run([sys.executable, "-m", "umedfast.cli", "--output-dir", str(tmp_path / "r"),
                        f"data.workers={value}"], env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.workers must be auto or an integer >= 0" in lines[0], lines
