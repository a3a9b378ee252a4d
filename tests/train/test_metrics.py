"""Metrics: JSONL + TensorBoard event files + summary; the non-finite guard counts instead of propagating."""
import json
import math

import torch

from umedfast.train.lr_schedule import warmup_cosine
from umedfast.train.metrics import MetricsLogger, NonFiniteGuard


def test_logger_writes_jsonl_tensorboard_and_summary(tmp_path):
    log = MetricsLogger(tmp_path)
    for s in range(1, 9):
        log.log(s, {"loss": 1.0 / s, "reward": float(s), "ids": ["a"]})
    summ = log.summary({"nonfinite": {}})
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and rows[0]["ids"] == ["a"]
    assert summ["reward_last_quarter"] == (7 + 8) / 2
    assert json.loads((tmp_path / "summary.json").read_text())["logged_steps"] == 8
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_guard_counts_nonfinite():
    g = NonFiniteGuard()
    assert g.ok("loss", torch.tensor(1.0))
    assert not g.ok("loss", torch.tensor(float("nan")))
    assert not g.ok("loss", float("inf"))
    g.add("reward", 3)
    assert g.counts == {"loss": 2, "reward": 3} and g.total == 5


def test_warmup_cosine_schedule():
    f = warmup_cosine(10, 0.2, 0.1)
    assert [round(f(i), 6) for i in (0, 1)] == [0.5, 1.0]
    assert f(2) == 1.0 and math.isclose(f(10), 0.1) and f(6) < f(3)
