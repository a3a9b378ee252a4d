"""ALR matching/shaping and the AAR combination, on numbers checkable by hand."""
import math

import pytest
import torch

from umedfast.boxes import format_box
from umedfast.rewards.alr import _giou_ref, _iou_pairwise_ref, alr_from_text, alr_score
from umedfast.rewards.combine import combine_rewards, normalize_by_group_max


def test_alr_single_box_iou():
    r = alr_score([(0.0, 0.0, 0.5, 0.5)], [(0.0, 0.0, 0.5, 1.0)])
    assert r.reward == pytest.approx(0.5) and r.iou == pytest.approx(0.5) and r.format_ok


def test_alr_one_to_one_matching_and_extra_boxes():
    gt = [(0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 0.7, 0.7)]
    # predictions in the opposite order must still match exactly
    assert alr_score(gt[::-1], gt).reward == pytest.approx(1.0)
    # one perfect box of two: 1/2; the same box twice cannot match both targets: still 1/2
    assert alr_score([gt[0]], gt).reward == pytest.approx(0.5)
    assert alr_score([gt[0], gt[0]], gt).reward == pytest.approx(0.5)
    # an extra wrong box costs: (1 + 1 + 0) / 3
    assert alr_score(gt + [(0.9, 0.9, 1.0, 1.0)], gt).reward == pytest.approx(2 / 3)


def test_alr_normal_image_and_unparsable():
    assert alr_score([], []).reward == 1.0
    assert alr_score([(0.1, 0.1, 0.2, 0.2)], []).reward == 0.0
    r = alr_score([], [(0.1, 0.1, 0.2, 0.2)])
    assert r.reward == 0.0 and not r.format_ok
    t = alr_from_text("a lesion, no coordinates here", [(0.1, 0.1, 0.2, 0.2)])
    assert t.reward == 0.0 and not t.format_ok


def test_alr_from_text_norm1000():
    gt = (0.1, 0.2, 0.3, 0.4)
    text = f"Nodule located at {format_box(gt, 'norm1000')}."
    assert alr_from_text(text, [gt]).reward == pytest.approx(1.0, abs=1e-3)


def test_giou_shaping_gives_signal_to_misses():
    gt = [(0.0, 0.0, 0.1, 0.1)]
    near = alr_score([(0.2, 0.0, 0.3, 0.1)], gt, giou_weight=0.5)
    far = alr_score([(0.8, 0.8, 0.9, 0.9)], gt, giou_weight=0.5)
    assert near.iou == 0.0 and far.iou == 0.0
    assert near.reward > far.reward > 0.0
    # near: hull 0.3 x 0.1 = 0.03, union 0.02 -> GIoU = -1/3 -> 0.5 * (2/3) / 2
    assert near.reward == pytest.approx(0.5 * (1 - 1 / 3) / 2, rel=1e-4)
    assert alr_score(gt, gt, giou_weight=0.5).reward == pytest.approx(1.0)


def test_box_l1_shaping_rewards_near_misses_and_not_hedged_boxes():
    """The corner-accuracy term: exact box 1, a mean corner error of one target size 0, and under position noise its expected
    value peaks at the true size, where expected IoU peaks at a wider box (the hedge PPO learned)."""
    gt = [(0.50, 0.50, 0.54, 0.54)]
    assert alr_score(gt, gt, l1_weight=0.5).reward == pytest.approx(1.0)
    near = alr_score([(0.58, 0.50, 0.62, 0.54)], gt, l1_weight=1.0)  # 2 sizes right: mean corner error = 1 size
    nearer = alr_score([(0.55, 0.50, 0.59, 0.54)], gt, l1_weight=1.0)  # no overlap, 1.25 sizes right
    assert near.iou == 0.0 and near.reward == pytest.approx(0.0, abs=1e-6)
    assert nearer.iou == 0.0 and nearer.reward == pytest.approx(1 - 0.025 / 0.04, abs=1e-5)
    assert alr_score([(0.55, 0.50, 0.59, 0.54)], gt).reward == 0.0  # IoU alone: flat 0

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(600, 4, generator=g) * 0.02

    def expected(size, **kw):
        c = 0.52
        return sum(alr_score([(c - size / 2 + n[0], c - size / 2 + n[1], c + size / 2 + n[2], c + size / 2 + n[3])],
                             gt, **kw).reward for n in noise.tolist()) / len(noise)

    sizes = [0.04, 0.05, 0.06, 0.07]
    iou_best = max(sizes, key=lambda s: expected(s))
    l1_best = max(sizes, key=lambda s: expected(s, l1_weight=0.8))
    assert iou_best >= 0.06 and l1_best <= 0.05, (iou_best, l1_best)


def test_reference_iou_formulas():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 3.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    iou = _iou_pairwise_ref(a, b)
    assert iou[0, 0].item() == pytest.approx(1 / 7) and iou[1, 0].item() == 0.0
    assert _giou_ref(a[:1], b).item() == pytest.approx(1 / 7 - (9 - 7) / 9)


def test_normalize_by_group_max_guards_zero():
    x = torch.tensor([0.2, 0.4, 0.0, 0.0, 0.0, 0.0])
    assert normalize_by_group_max(x, 3).tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        normalize_by_group_max(x, 4)


def test_combine_weights_class_gate_penalty_and_nan():
    k = 2
    llm = torch.tensor([0.5, 1.0, 0.2, float("nan")])
    alr = torch.tensor([0.3, 0.6, 0.0, 0.0])
    vrr = torch.tensor([0.1, 0.4, 0.2, 0.1])
    written = torch.tensor([True, True, False, True])
    fmt = torch.tensor([True, True, False, False])
    c = combine_rewards(llm, alr, vrr, k, class_written=written, format_ok=fmt, format_penalty=0.1)
    # query 0: llm + alr/0.6 + vrr/0.4
    assert c.total[0].item() == pytest.approx(0.5 + 0.5 + 0.25)
    assert c.total[1].item() == pytest.approx(1.0 + 1.0 + 1.0)
    # query 1: alr max 0 -> 0; vrr of row 2 gated (class not written), row 3 is the max -> 1
    assert c.total[2].item() == pytest.approx(0.2 + 0.0 + 0.0 - 0.1)
    assert c.total[3].item() == pytest.approx(0.0 + 0.0 + 1.0 - 0.1)  # NaN llm replaced by 0
    assert c.nonfinite == 1 and all(math.isfinite(v) for v in c.total.tolist())
    off = combine_rewards(llm.nan_to_num(), alr, vrr, k, w_alr=0.0, w_vrr=0.0)
    assert off.total.tolist() == pytest.approx([0.5, 1.0, 0.2, 0.0])


def test_combine_raw_alr_keeps_absolute_box_quality():
    # a group whose best box has IoU 0.05 earns that box a full 1.0 under "max"; "none" keeps 0.05
    alr = torch.tensor([0.05, 0.0, 0.9, 0.45])
    zeros = torch.zeros(4)
    by_max = combine_rewards(zeros, alr, zeros, 2)
    raw = combine_rewards(zeros, alr, zeros, 2, alr_norm="none")
    assert by_max.alr.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.5])
    assert raw.alr.tolist() == pytest.approx([0.05, 0.0, 0.9, 0.45])
    with pytest.raises(ValueError, match="normalization"):
        combine_rewards(zeros, alr, zeros, 2, vrr_norm="mean")
