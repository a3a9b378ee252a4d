"""Coordinate advantages (ppo.coord_advantages): where each coordinate is written, its error, and its credit,
on numbers checkable by hand and on the tiny model's real tokenizer."""
from types import SimpleNamespace

import pytest
import torch

from umedfast.boxes import parse_boxes, parse_boxes_with_spans
from umedfast.config import ConfigError, load_config
from umedfast.data.records import MAURecord
from umedfast.rewards.alr import corner_errors
from umedfast.rl import credit_tokens, gae_advantages


@pytest.fixture(scope="module")
def tok():
    from umedfast.model import load_vlm

    return load_vlm("tiny-llava", seed=0).tokenizer


def test_spans_point_at_the_numbers_and_follow_swapped_corners():
    text = "Localization: [420,250, 250,429] and (10, 20, 30, 40)."
    parsed = parse_boxes_with_spans(text)
    assert [b for b, _ in parsed] == parse_boxes(text)
    (box, spans), (box2, spans2) = parsed
    assert box == pytest.approx((0.25, 0.25, 0.42, 0.429))
    # x1 > x2 was written: the x1 of the ordered box is the third number, so the spans swap with the values
    assert [text[s:e] for s, e in spans] == ["250", "250", "420", "429"]
    assert spans[0][0] > spans[1][0]  # the third number is written after the second
    assert [text[s:e] for s, e in spans2] == ["10", "20", "30", "40"]
    assert parse_boxes_with_spans(None) == [] and parse_boxes_with_spans("no box") == []


def test_corner_errors_by_hand():
    gt = [(0.6, 0.6, 0.9, 0.9), (0.1, 0.2, 0.5, 0.6)]  # sizes 0.3 x 0.3 and 0.4 x 0.4
    pred = [(0.1, 0.1, 0.5, 0.5), (0.0, 0.0, 0.01, 0.01), (0.6, 0.6, 0.8, 0.8)]
    out = corner_errors(pred, gt)
    assert out[0][0] == 1 and out[0][1] == pytest.approx([0.0, 0.25, 0.0, 0.25], abs=1e-5)  # y off by 0.1 / 0.4
    assert out[1] is None  # a far box, every corner more than a target size off: unmatched
    assert out[2][0] == 0 and out[2][1] == pytest.approx([0.0, 0.0, 1 / 3, 1 / 3], abs=1e-5)
    # a near miss that does not overlap still gets errors (IoU alone is 0 there); the cap bounds a far corner
    (t, err), = corner_errors([(0.0, 0.6, 0.25, 0.9)], [(0.3, 0.6, 0.6, 0.9)], cap=0.5)
    assert t == 0 and err == pytest.approx([0.5, 0.0, 0.5, 0.0], abs=1e-5)
    assert corner_errors([], gt) == [] and corner_errors(pred[:1], []) == [None]


def test_credit_tokens_replaces_the_selected_tokens_and_adds_the_kl_to_go():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    adv = torch.full((2, 4), 2.0)
    kl_r = -0.1 * mask
    where = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    gain = torch.tensor([[9.0, 0.5, -0.5, 9.0], [9.0, 9.0, 0.25, 7.0]])
    out = credit_tokens(adv, kl_r, mask, where, gain)
    kl_togo = gae_advantages(kl_r, torch.zeros_like(kl_r), mask, 1.0, 1.0)[0]
    assert kl_togo[0].tolist() == pytest.approx([-0.4, -0.3, -0.2, -0.1])
    assert out[0].tolist() == pytest.approx([2.0, 0.5 - 0.3, -0.5 - 0.2, 2.0])
    assert out[1].tolist() == pytest.approx([2.0, 2.0, 0.25 - 0.1, 0.0])  # padding stays 0


def test_coordinate_token_slots_on_a_real_answer(tok):
    from umedfast.model import coordinate_token_slots

    text = "Detection: one abnormal region. Localization: [250,310,420,429], upper left. Recognition: nodule."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    boxes, slots = coordinate_token_slots(tok, ids, "norm1000")
    assert boxes == parse_boxes(text) and len(slots) == len(ids)
    for c, number in enumerate(["250", "310", "420", "429"]):
        spelled = tok.decode([t for t, s in zip(ids, slots) if s == c]).replace(",", "").strip()
        assert spelled == number
    assert set(slots) == {-1, 0, 1, 2, 3}
    assert coordinate_token_slots(tok, tok("Detection: normal.", add_special_tokens=False)["input_ids"],
                                  "norm1000")[0] == []


def _record(box_px):
    return MAURecord(id="r", image="x.png", source="s", modality="xray", findings=[{"label": "nodule",
                     "box_xyxy": box_px}], query="q", response="", image_size=[1000, 1000])


def _rollout(tok, rec, texts, anchor_text=None):
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    L = max(map(len, rows))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1.0
    anchor = None if anchor_text is None else SimpleNamespace(records=[rec], texts=[anchor_text])
    return SimpleNamespace(records=[rec] * len(texts), response_ids=ids, response_mask=mask, anchor=anchor)


def test_coordinate_gains_against_the_greedy_answer_and_the_group(tok):
    from umedfast.train.coordinate_credit import coordinate_gains

    rec = _record([200, 200, 400, 600])  # target 0.2 wide, 0.4 high
    texts = ["Localization: [220,200,400,500].", "Localization: [200,240,400,600].", "Detection: normal."]
    ro = _rollout(tok, rec, texts, anchor_text="Localization: [210,200,400,600].")
    gain, on = coordinate_gains(tok, ro, k=3, box_format="norm1000", w_alr=2.0, greedy_baseline=True)

    def per_coord(row):
        from umedfast.model import coordinate_token_slots
        n = int(ro.response_mask[row].sum())
        _, slots = coordinate_token_slots(tok, ro.response_ids[row, :n], "norm1000")
        return {s: gain[row, i].item() for i, s in enumerate(slots) if s >= 0}, slots

    g0, slots0 = per_coord(0)
    # anchor errors: x1 0.01 / 0.2 = 0.05, others 0; candidate 0: x1 0.1, y2 0.25 -> gain = 2 * (base - e)
    assert g0 == pytest.approx({0: 2 * (0.05 - 0.1), 1: 0.0, 2: 0.0, 3: 2 * (0.0 - 0.25)}, abs=1e-4)
    assert on[0, :len(slots0)].tolist() == [s >= 0 for s in slots0]
    g1, _ = per_coord(1)  # y1 off by 0.04 / 0.4 = 0.1; x1 is better than the anchor's
    assert g1 == pytest.approx({0: 2 * 0.05, 1: 2 * -0.1, 2: 0.0, 3: 0.0}, abs=1e-4)
    assert not on[2].any()  # no box: every token keeps the whole-answer advantage

    # no anchor: the baseline is the mean error of the other candidates that boxed the target
    ro.anchor = None
    gain, on = coordinate_gains(tok, ro, k=3, box_format="norm1000", w_alr=1.0, greedy_baseline=True)
    g0, _ = per_coord(0)
    assert g0 == pytest.approx({0: 0.0 - 0.1, 1: 0.1 - 0.0, 2: 0.0, 3: 0.0 - 0.25}, abs=1e-4)


def test_coordinate_advantages_are_refused_where_they_cannot_apply(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ppo:\n  advantage: grpo\n  k: 4\n  coord_advantages: true\n")
    with pytest.raises(ConfigError, match="coord_advantages"):
        load_config(str(cfg))
    cfg.write_text("ppo:\n  coord_advantages: true\nrewards:\n  w_alr: 0\n")
    with pytest.raises(ConfigError, match="w_alr"):
        load_config(str(cfg))
    cfg.write_text("ppo:\n  coord_advantages: true\n  coord_scale: -1\n")
    with pytest.raises(ConfigError, match="coord_scale"):
        load_config(str(cfg))
