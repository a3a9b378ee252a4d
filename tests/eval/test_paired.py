"""Paired run comparison over real eval.predictions.jsonl files written by the evaluation code."""
import json

import pytest

from umedfast.cli.eval import main as eval_main
from umedfast.eval.mau import evaluate_and_write
from umedfast.eval.paired import mcnemar_exact, paired_deltas, read_predictions

N_ABN, N_NORMAL = 40, 10


def _records():
    recs = [{"id": f"r{i:03d}", "source": "nih", "split": "test", "image_size": [100, 100],
             "findings": [{"label": "nodule", "box_xyxy": [10, 10, 30, 30]}]} for i in range(N_ABN)]
    recs += [{"id": f"n{i:03d}", "source": "nih", "split": "test", "image_size": [100, 100], "findings": []}
             for i in range(N_NORMAL)]
    return recs


def _answer(label, box):
    return f"Detection: one abnormal region. Localization: {box}, upper left. Recognition: it is {label}."


NORMAL = "Detection: nothing abnormal is seen. Localization: no box. Recognition: normal image."


def _write(tmp_path, name, responses):
    out = tmp_path / name / "eval.json"
    out.parent.mkdir()
    evaluate_and_write(None, _records(), out, responses=responses, progress=False)
    return out.parent


@pytest.fixture()
def runs(tmp_path):
    # A: half the nodules named as "mass" with a loose box; B: every nodule named with a tight box
    a = [_answer("nodule" if i < N_ABN // 2 else "mass", "[100,100,400,400]") for i in range(N_ABN)] + [NORMAL] * 10
    b = [_answer("nodule", "[100,100,300,300]") for _ in range(N_ABN)] + [NORMAL] * N_NORMAL
    return _write(tmp_path, "a", a), _write(tmp_path, "b", b)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 2) == pytest.approx(2 * sum(__import__("math").comb(12, i) for i in range(3)) / 4096)


def test_clear_gain_is_detected_and_identical_runs_are_not(runs):
    a, b = (read_predictions(r) for r in runs)
    d = {x.metric: x for x in paired_deltas(a, b)}
    acc = d["accuracy"]
    assert acc.delta == pytest.approx(20 / 50) and acc.n == 50
    assert acc.significant and acc.lo > 0 and acc.p_value < 1e-5
    assert d["mean_iou"].n == N_ABN and d["mean_iou"].delta == pytest.approx(1.0 - 4 / 9)  # tight box vs 2x larger
    assert d["mean_iou"].significant
    same = {x.metric: x for x in paired_deltas(a, a)}
    assert all(x.delta == 0 and not x.significant for x in same.values())
    assert same["accuracy"].p_value == 1.0


def test_different_records_are_refused(runs):
    a, b = (read_predictions(r) for r in runs)
    b.pop(next(iter(b)))
    with pytest.raises(ValueError, match="different records"):
        paired_deltas(a, b)


def test_compare_command_prints_and_writes_json(runs, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    assert eval_main(["compare", str(runs[0]), str(runs[1]), "--names", "sft,ppo", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ppo vs sft" in text and "B better" in text
    data = json.loads(out.read_text())
    assert data["a"] == "sft" and {x["metric"] for x in data["deltas"]} == {"accuracy", "mean_iou", "acc_iou50"}
