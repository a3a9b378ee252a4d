"""External benchmark loaders on tiny files written here in each benchmark's real format."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from umedfast.data.benchmarks import (BenchmarkFormatError, load_benchmark, load_pmc_vqa, load_pneumoniamnist,
                                      load_slake, load_vqa_rad, materialize_images)


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (40, 80, 120)).save(path)


def test_vqa_rad_splits_types_and_images(tmp_path):
    _img(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    _img(tmp_path / "VQA_RAD Image Folder" / "synpic2.jpg")
    entries = [
        {"qid": "0", "phrase_type": "freeform", "image_name": "synpic1.jpg", "image_organ": "HEAD",
         "question": "Is there a bleed?", "answer": "Yes", "answer_type": "CLOSED", "question_type": "PRES"},
        {"qid": "1", "phrase_type": "test_freeform", "image_name": "synpic2.jpg", "image_organ": "CHEST",
         "question": "What organ is shown?", "answer": "lungs", "answer_type": "OPEN", "question_type": "ORGAN"},
        {"qid": "2", "phrase_type": "test_para", "image_name": "synpic2.jpg", "image_organ": "CHEST",
         "question": "How many nodules?", "answer": 2, "answer_type": "CLOSED ", "question_type": "COUNT"},
    ]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(entries))
    test = load_vqa_rad(tmp_path)
    assert [s.id for s in test] == ["vqa_rad-1", "vqa_rad-2"]
    assert [s.answer_type for s in test] == ["open", "closed"] and test[1].answer == "2"
    assert test[0].image.endswith("synpic2.jpg") and test[0].benchmark == "vqa_rad"
    train = load_vqa_rad(tmp_path, split="train")
    assert len(train) == 1 and "yes or no" in train[0].query
    assert len(load_benchmark("vqa_rad", tmp_path, split="all")) == 3


def test_vqa_rad_missing_image_and_bad_type(tmp_path):
    e = {"qid": "0", "phrase_type": "test_freeform", "image_name": "nothere.jpg", "question": "q", "answer": "a",
         "answer_type": "OPEN"}
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps([e]))
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        load_vqa_rad(tmp_path)
    assert load_vqa_rad(tmp_path, require_images=False)[0].image is None
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps([dict(e, answer_type="MAYBE")]))
    with pytest.raises(BenchmarkFormatError, match="entry 0"):
        load_vqa_rad(tmp_path, require_images=False)


def test_image_path_cannot_leave_root(tmp_path):
    root = tmp_path / "slake"
    root.mkdir()
    _img(tmp_path / "secret.jpg")
    e = {"img_id": 1, "img_name": "../secret.jpg", "question": "q", "answer": "a", "answer_type": "OPEN",
         "q_lang": "en", "qid": 0}
    (root / "test.json").write_text(json.dumps([e]))
    with pytest.raises(BenchmarkFormatError, match="leaves the dataset root"):
        load_slake(root)


def test_slake_english_only_by_default(tmp_path):
    _img(tmp_path / "imgs" / "xmlab1" / "source.jpg")
    base = {"img_id": 1, "img_name": "xmlab1/source.jpg", "location": "Abdomen", "modality": "MRI",
            "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"]}
    entries = [dict(base, qid=0, question="Is this an MRI?", answer="Yes", answer_type="CLOSED", q_lang="en"),
               dict(base, qid=1, question="这是什么模态?", answer="MRI", answer_type="OPEN", q_lang="zh"),
               dict(base, qid=2, question="Which organ is abnormal?", answer="Liver", answer_type="OPEN", q_lang="en")]
    (tmp_path / "test.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "validate.json").write_text(json.dumps(entries[:1]))
    en = load_slake(tmp_path)
    assert [s.id for s in en] == ["slake-test-0", "slake-test-2"]
    assert en[0].image.endswith("xmlab1/source.jpg") and en[0].meta["modality"] == "MRI"
    assert len(load_slake(tmp_path, lang=None)) == 3
    assert len(load_slake(tmp_path, split="val")) == 1
    (tmp_path / "test.json").write_text(json.dumps([{"img_name": "x.jpg"}]))
    with pytest.raises(BenchmarkFormatError, match="missing field"):
        load_slake(tmp_path)


def test_pmc_vqa_choices_and_label(tmp_path):
    _img(tmp_path / "images" / "PMC1_F1.jpg")
    _img(tmp_path / "images" / "PMC2_F2.jpg")
    with open(tmp_path / "test_2.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                    "Answer_label"])
        w.writerow(["PMC1_F1.jpg", "What modality?", "CT scan", " A:MRI ", " B:CT scan ", " C:X-ray ",
                    " D:Ultrasound ", "B"])
        w.writerow(["PMC2_F2.jpg", "Which side?", "Left", "A: Right", "B: Left", "C: Both", "D: None", ""])
    s = load_pmc_vqa(tmp_path)
    assert [x.label for x in s] == [1, 1]
    assert s[0].choices == ["MRI", "CT scan", "X-ray", "Ultrasound"] and s[0].answer == "CT scan"
    assert "B: CT scan" in s[0].query and s[0].image.endswith("PMC1_F1.jpg")


def test_pmc_vqa_missing_column(tmp_path):
    (tmp_path / "test_2.csv").write_text("Figure_path,Question,Answer\nx.jpg,q,a\n")
    with pytest.raises(BenchmarkFormatError, match="Choice A"):
        load_pmc_vqa(tmp_path)


def test_pneumoniamnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{sp}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for sp, n in
              (("train", 4), ("val", 2), ("test", 3))}
    arrays.update({f"{sp}_labels": rng.integers(0, 2, (n, 1), dtype=np.uint8) for sp, n in
                   (("train", 4), ("val", 2), ("test", 3))})
    np.savez_compressed(tmp_path / "pneumoniamnist.npz", **arrays)
    s = load_pneumoniamnist(tmp_path)
    assert len(s) == 3 and [x.label for x in s] == arrays["test_labels"].reshape(-1).tolist()
    assert s[0].image is None and s[0].pixels.shape == (28, 28)
    assert s[0].answer in ("yes", "no") and "yes or no" in s[0].query
    materialize_images(s, tmp_path / "png")
    im = Image.open(s[1].image)
    assert im.size == (28, 28) and np.array(im.convert("L")).tolist() == arrays["test_images"][1].tolist()
    with pytest.raises(ValueError, match="split"):
        load_pneumoniamnist(tmp_path, split="dev")
    (tmp_path / "bad").mkdir()
    np.savez(tmp_path / "bad" / "pneumoniamnist.npz", test_images=arrays["test_images"])
    with pytest.raises(BenchmarkFormatError, match="test_labels"):
        load_pneumoniamnist(tmp_path / "bad")


def test_broken_json_names_file_and_line(tmp_path):
    (tmp_path / "VQA_RAD Dataset Public.json").write_text('[\n  {"qid": 1,\n  oops\n]', encoding="utf-8")
    with pytest.raises(BenchmarkFormatError, match=r"VQA_RAD Dataset Public\.json: invalid JSON at line 3"):
        load_vqa_rad(tmp_path, require_images=False)
