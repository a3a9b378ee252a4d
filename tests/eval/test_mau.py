"""MAU metrics on hand-made records and responses whose scores can be checked by hand."""
from types import SimpleNamespace

import pytest

from umedfast.answers import ClassNamer, says_normal
from umedfast.boxes import format_box
from umedfast.eval.mau import mau_metrics, score_samples

W, H = 200, 100  # non-square so pixel -> unit conversion is exercised


def rec(rid, source, findings, size=(W, H)):
    """A record with findings [(label, (x1, y1, x2, y2) in unit coords)] stored in pixels like MAURecord."""
    fs = [{"label": lab, "box_xyxy": [b[0] * size[0], b[1] * size[1], b[2] * size[0], b[3] * size[1]]}
          for lab, b in findings]
    try:
        from umedfast.data import MAURecord
        return MAURecord(id=rid, image=f"/nonexistent/{rid}.png", source=source, modality="x", findings=fs,
                         query="q", response="r", split="test", image_size=list(size), meta={})
    except ImportError:
        return SimpleNamespace(id=rid, image=f"/nonexistent/{rid}.png", source=source, modality="x", findings=fs,
                               query="q", response="r", split="test", image_size=list(size), meta={})


def answer(label_text, boxes=()):
    loc = " and ".join(format_box(b) for b in boxes) if boxes else "none"
    return (f"Detection: an abnormal region is present. Localization: the region is at {loc}. "
            f"Recognition: the finding is {label_text}.")


NORMAL = ("Detection: no abnormality is detected. Localization: not applicable. "
          "Recognition: the image appears normal.")
SYN = {"nih": {"Nodule": ["pulmonary nodule", "nodular opacity"], "Mass": ["mass"], "Effusion": ["pleural effusion"]},
       "tbx": {"ActiveTuberculosis": ["active tuberculosis"],
               "PulmonaryTuberculosis": ["pulmonary tuberculosis", "tuberculosis"]}}
B1 = (0.1, 0.2, 0.5, 0.6)


def test_perfect_answer_scores_one():
    m = mau_metrics([rec("a", "nih", [("Nodule", B1)])], [answer("a Nodule", [B1])], synonyms=SYN)
    assert m["accuracy"] == 1.0 and m["format_ok"] == 1.0 and m["n"] == 1
    assert m["mean_iou"] == pytest.approx(1.0, abs=2e-3)  # norm1000 rounds to 1/1000
    assert m["acc_iou50"] == 1.0
    assert set(m["per_source"]) == {"nih"}


def test_synonym_names_the_class_and_wrong_or_extra_class_fails():
    r = rec("a", "nih", [("Nodule", B1)])
    s = score_samples([r] * 4, [answer("a nodular opacity", [B1]), answer("a mass", [B1]),
                                answer("a nodule or a mass", [B1]), answer("an opacity", [B1])], synonyms=SYN)
    assert [x["correct"] for x in s] == [True, False, False, False]
    assert s[2]["named"] == ["Mass", "Nodule"]


def test_longest_mention_wins_between_overlapping_synonyms():
    namer = ClassNamer(SYN["tbx"])
    assert namer.named("signs of active tuberculosis in the upper lobe") == {"ActiveTuberculosis"}
    assert namer.named("tuberculosis") == {"PulmonaryTuberculosis"}
    assert namer.named("ActiveTuberculosis") == {"ActiveTuberculosis"}
    assert namer.named("tuberculosisX") == set()  # whole words only


def test_normal_images():
    r = rec("n", "nih", [])
    s = score_samples([r] * 6, [NORMAL, NORMAL + " A small nodule is seen.", answer("a nodule", [B1]),
                                "Detection: nothing. Localization: none. Recognition: a chest film.",
                                NORMAL.replace("not applicable", format_box(B1)),
                                "Detection: nothing abnormal is seen. Localization: none. Recognition: -"],
                      synonyms=SYN)
    assert [x["correct"] for x in s] == [True, False, False, False, False, True]
    assert s[0]["iou"] is None and s[0]["format_ok"] is True  # no box is expected on a normal image
    assert says_normal("No abnormal findings.") and not says_normal("An abnormal opacity.")
    m = mau_metrics([r], [NORMAL], synonyms=SYN)
    assert m["mean_iou"] is None and m["acc_iou50"] is None and m["accuracy"] == 1.0


def test_iou_threshold_and_missing_box():
    gt = (0.0, 0.0, 0.5, 0.5)
    r = rec("a", "nih", [("Nodule", gt)])
    half = (0.0, 0.0, 0.5, 0.25)    # IoU 0.5
    less = (0.0, 0.0, 0.5, 0.2)     # IoU 0.4
    s = score_samples([r] * 3, [answer("nodule", [half]), answer("nodule", [less]), answer("nodule")], synonyms=SYN)
    assert s[0]["iou"] == pytest.approx(0.5, abs=1e-6) and s[0]["iou50"] is True
    assert s[1]["iou"] == pytest.approx(0.4, abs=1e-6) and s[1]["iou50"] is False
    assert s[2]["iou"] == 0.0 and s[2]["format_ok"] is False and s[2]["correct"] is True
    m = mau_metrics([r] * 3, [answer("nodule", [half]), answer("nodule", [less]), answer("nodule")], synonyms=SYN)
    assert m["mean_iou"] == pytest.approx(0.3, abs=1e-6)
    assert m["acc_iou50"] == pytest.approx(1 / 3)
    assert m["format_ok"] == pytest.approx(2 / 3)


def test_two_lesions_matched_one_to_one_and_extra_boxes_penalized():
    b2 = (0.6, 0.6, 0.9, 0.9)
    r = rec("a", "nih", [("Nodule", B1), ("Effusion", b2)])
    s = score_samples([r, r], [answer("a nodule and a pleural effusion", [b2, B1]),
                               answer("a nodule and a pleural effusion", [B1, b2, (0.0, 0.0, 0.05, 0.05)])],
                      synonyms=SYN)
    assert s[0]["correct"] and s[0]["iou"] == pytest.approx(1.0, abs=3e-3)
    assert s[1]["iou"] == pytest.approx(2 / 3, abs=3e-3)  # two exact matches / max(3 predicted, 2 truth)


def test_missing_step_fails_format():
    r = rec("a", "nih", [("Nodule", B1)])
    s = score_samples([r], [f"It is a nodule at {format_box(B1)}."], synonyms=SYN)
    assert s[0]["format_ok"] is False and s[0]["correct"] is True
    flat = answer("nodule").replace("none", "[25,4,32,4]")  # parses, but has zero area
    s = score_samples([r], [flat], synonyms=SYN)
    assert s[0]["pred_boxes"] and s[0]["format_ok"] is False and s[0]["iou"] == 0.0


def test_per_source_and_macro():
    recs = [rec("a", "nih", [("Nodule", B1)]), rec("b", "nih", [("Nodule", B1)]), rec("c", "tbx", [])]
    resp = [answer("nodule", [B1]), answer("mass", [B1]), NORMAL]
    m = mau_metrics(recs, resp, synonyms=SYN)
    assert m["per_source"]["nih"]["accuracy"] == 0.5 and m["per_source"]["nih"]["n"] == 2
    assert m["per_source"]["tbx"]["accuracy"] == 1.0
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["macro_accuracy"] == pytest.approx(0.75)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="responses"):
        mau_metrics([rec("a", "nih", [])], [], synonyms=SYN)


def test_negation_and_generic_words():
    tbl = {"dl": {"lesion": ["lesion", "abnormality"], "liver lesion": ["liver lesion", "liver"]},
           "ks": {"kidney stone": ["kidney stone", "stone"]}}
    liver = rec("a", "dl", [("liver lesion", B1)])
    unlabeled = rec("b", "dl", [("lesion", B1)])
    normal_ks = rec("c", "ks", [])
    s = score_samples([liver, liver, unlabeled, normal_ks, normal_ks],
                      [answer("a liver lesion; an abnormality is detected", [B1]),
                       answer("an abnormality", [B1]),
                       answer("a lesion", [B1]),
                       "Detection: no kidney stone is seen, the study is normal. Localization: none. "
                       "Recognition: none.",
                       "Detection: normal kidneys but a stone in the left ureter. Localization: none. Recognition: -"],
                      synonyms=tbl)
    assert [x["correct"] for x in s] == [True, False, True, True, False]
    namer = ClassNamer(SYN["nih"])
    assert namer.named("no effusion, but a nodule is seen") == {"Nodule"}
    assert namer.named("without evidence of pleural effusion or mass") == set()
