"""External-benchmark metrics on answers whose scores can be checked by hand."""
import itertools
import random

import pytest

from umedfast.data.benchmarks import BenchSample
from umedfast.eval.benchmark_metrics import (benchmark_metrics, closed_correct, open_recall, parse_choice, roc_auc)


def test_closed_yes_no_and_short_answers():
    assert closed_correct("Yes, there is a bleed.", "yes")
    assert not closed_correct("No. Yes would be wrong.", "yes")  # first yes/no word decides
    assert not closed_correct("There is a bleed.", "yes")
    assert closed_correct("It is in the left lung.", "Left")
    assert not closed_correct("It is in the right lung.", "left")
    assert closed_correct("The scan is a CT-scan", "ct scan")


def test_open_token_recall():
    assert open_recall("The liver and the spleen", "liver, spleen") == 1.0
    assert open_recall("the liver", "liver spleen") == 0.5
    assert open_recall("kidney", "liver") == 0.0
    assert open_recall("anything", "") == 0.0


def test_parse_choice():
    ch = ["MRI", "CT scan", "X-ray", "Ultrasound"]
    assert parse_choice("B", ch) == 1
    assert parse_choice("(C) X-ray", ch) == 2
    assert parse_choice("D: Ultrasound", ch) == 3
    assert parse_choice("I think the answer is A.", ch) == 0
    assert parse_choice("A CT scan of the chest", ch) == 1  # the article "A" is not option A
    assert parse_choice("no idea", ch) is None
    assert parse_choice("CT scan or MRI", ch) is None  # two options named: unreadable
    assert parse_choice("a CT scan", ["CT", "CT scan", "MRI", "PET"]) == 1  # the longer option contains "CT"


def _auc_bruteforce(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.9, 0.1]) == 1.0 and roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 1], [0.2, 0.3]) is None
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 30)
        labels = [rng.randint(0, 1) for _ in range(n)]
        if len(set(labels)) < 2:
            continue
        scores = [rng.choice([0.1, 0.2, 0.5, rng.random()]) for _ in range(n)]
        assert roc_auc(labels, scores) == pytest.approx(_auc_bruteforce(labels, scores))


def _s(i, bench, atype, answer, **kw):
    return BenchSample(id=str(i), benchmark=bench, image=None, question="q", answer=answer, answer_type=atype,
                       split="test", **kw)


def test_benchmark_metrics_aggregate_per_benchmark():
    samples = [_s(0, "vqa_rad", "closed", "yes"), _s(1, "vqa_rad", "closed", "no"),
               _s(2, "vqa_rad", "open", "liver spleen"),
               _s(3, "pmc_vqa", "choice", "CT", choices=["MRI", "CT", "PET", "US"], label=1),
               _s(4, "pmc_vqa", "choice", "MRI", choices=["MRI", "CT", "PET", "US"], label=0),
               _s(5, "pneumoniamnist", "binary", "yes", label=1), _s(6, "pneumoniamnist", "binary", "no", label=0),
               _s(7, "pneumoniamnist", "binary", "no", label=0)]
    responses = ["yes", "yes", "the liver", "B", "gibberish", "yes", "no", "yes"]
    scores = [0, 0, 0, 0, 0, 0.9, 0.2, 0.95]
    m = benchmark_metrics(samples, responses, scores)
    assert m["vqa_rad"] == {"n": 3, "closed_acc": 0.5, "n_closed": 2, "open_recall": 0.5, "n_open": 1}
    assert m["pmc_vqa"]["choice_acc"] == 0.5 and m["pmc_vqa"]["choice_unparsed"] == 1
    assert m["pneumoniamnist"]["auc"] == pytest.approx(0.5)
    assert m["pneumoniamnist"]["binary_acc"] == pytest.approx(2 / 3)
    assert "auc" not in benchmark_metrics(samples, responses)["pneumoniamnist"]
    with pytest.raises(ValueError):
        benchmark_metrics(samples, responses[:-1])
