"""Kill a real training process with SIGKILL and resume it: same number of steps, no sample twice in an epoch."""
import pytest
from _train_helpers import metrics, run, sigkill_after_checkpoint, train_cmd

from umedfast.train.data_order import EpochOrder


def test_epoch_order_resumes_the_same_permutation():
    a = EpochOrder(10, seed=3)
    first = [a.next_batch(3) for _ in range(2)]
    b = EpochOrder(10, seed=3)
    b.load_state_dict(a.state_dict())
    rest_a = [a.next_batch(3) for _ in range(3)]
    rest_b = [b.next_batch(3) for _ in range(3)]
    assert rest_a == rest_b
    epoch0 = [i for e, ids in first + rest_a if e == 0 for i in ids]
    assert len(epoch0) == 9 and len(set(epoch0)) == 9  # 3 batches of 3 (tail of 1 skipped)
    assert rest_a[1][0] == 1  # the 4th batch of 3 starts epoch 1


def _steps_by_epoch(rows):
    last = {}
    for r in rows:  # steps redone after the kill appear twice; the resumed run's entry is the one that counted
        if "ids" in r:
            last[r["step"]] = r
    return last


@pytest.mark.slow  # end to end: trains through the CLI
def test_sigkill_then_resume(tmp_path):
    out = tmp_path / "run"
    args = ["--stage", "sft", "sft.epochs=3", "sft.batch_size=4", "sft.save_every=1", "sft.eval_every_epoch=false"]
    sigkill_after_checkpoint(out, args, step=3, timeout=180)
    killed_at = max(r["step"] for r in metrics(out / "sft" / "metrics.jsonl"))
    run(train_cmd(out, *args, "--resume"))
    rows = _steps_by_epoch(metrics(out / "sft" / "metrics.jsonl"))
    steps = sorted(rows)
    # every optimizer step 1..total exactly once after dedup, total = epochs * (n_train // 4)
    assert steps == list(range(1, steps[-1] + 1))
    assert killed_at < steps[-1]
    by_epoch: dict[int, list] = {}
    for s in steps:
        by_epoch.setdefault(int(rows[s]["epoch"]), []).extend(rows[s]["ids"])
    assert sorted(by_epoch) == [0, 1, 2]
    for e, ids in by_epoch.items():
        assert len(ids) == len(set(ids)), f"epoch {e} saw a sample twice"
    per_epoch = len(by_epoch[0]) // 4
    assert steps[-1] == 3 * per_epoch
    assert (out / "sft" / "final" / "config.json").is_file()
    # only complete checkpoints remain, the newest is the last step
    names = sorted(p.name for p in (out / "sft" / "checkpoints").iterdir())
    assert names[-1] == f"step-{steps[-1]:08d}" and not any(n.startswith(".tmp") for n in names[-1:])
