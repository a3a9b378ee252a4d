"""MAU records: JSONL round trip, path rules, validation errors, targets, image loading (8- and 16-bit)."""
import json

import numpy as np
import pytest
from PIL import Image

from umedfast.data import Finding, MAURecord, load_image, read_mau, record_targets, write_mau


def _rec(img, **kw):
    d = dict(id="r1", image=str(img), source="nih", modality="X-ray",
             findings=[{"label": "nodule", "box_xyxy": [10.0, 20.0, 30.0, 60.0]}], query="q?", response="a.",
             split="val", image_size=[100, 200], meta={"k": 1})
    d.update(kw)
    return MAURecord(**d)


def test_round_trip_relative_and_absolute(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    inside = tmp_path / "data" / "images" / "a.png"
    outside = tmp_path / "elsewhere.png"
    recs = [_rec(inside), _rec(outside, id="r2", findings=[])]
    path = write_mau(recs, tmp_path / "data" / "set.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["image"] == "images/a.png"  # stored relative to the JSONL folder
    assert lines[1]["image"] == str(outside)  # outside the folder: absolute
    back = read_mau(path)
    assert [r.image for r in back] == [str(inside), str(outside)]
    assert back[0].findings == recs[0].findings and back[0].split == "val" and back[0].meta == {"k": 1}
    assert back[1].is_normal and back[0].labels == ["nodule"]


def test_relative_path_may_not_escape(tmp_path):
    d = _rec("x").to_dict()
    d["image"] = "../../etc/passwd"
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_rec("ok.png").to_dict()) + "\n" + json.dumps(d) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: image path .* leaves"):
        read_mau(p)


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.pop("query"), "missing field"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d.update(findings=[{"label": "x", "box_xyxy": [1, 2, 3]}]), "4 numbers"),
    (lambda d: d.update(findings=[{"box_xyxy": [1, 2, 3, 4]}]), "needs 'label'"),
])
def test_validation_errors_name_file_and_line(tmp_path, mutate, msg):
    d = _rec("a.png").to_dict()
    mutate(d)
    p = tmp_path / "x.jsonl"
    p.write_text("\n" + json.dumps(d) + "\n")
    with pytest.raises(ValueError, match=rf"x\.jsonl:2: .*{msg}"):
        read_mau(p)


def test_invalid_json_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"x\.jsonl:1: invalid JSON"):
        read_mau(p)


def test_record_targets_unit_boxes():
    t = record_targets(_rec("a.png"))
    assert t == [("nodule", pytest.approx((0.1, 0.1, 0.3, 0.3)))]
    with pytest.raises(ValueError, match="image_size"):
        record_targets(_rec("a.png", image_size=[0, 0]))


def test_finding_fields():
    f = Finding("kvasir", "/x.jpg", "endoscopy", "polyp", (1.0, 2.0, 3.0, 4.0), (10, 10))
    assert f.meta == {} and f.box_xyxy[2] == 3.0


def test_load_image_8bit_gray_to_rgb(tmp_path):
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    im = load_image(_rec(tmp_path / "g.png"))
    assert im.mode == "RGB" and np.array_equal(np.asarray(im)[..., 1], arr)


def test_load_image_16bit_windowed(tmp_path):
    hu = np.array([[-1000, -160, 40], [240, 1000, 0]], dtype=np.int32)  # HU values
    Image.fromarray((hu + 32768).astype(np.uint16)).save(tmp_path / "ct.png")
    im = load_image(_rec(tmp_path / "ct.png", meta={"window": [-160, 240]}))
    g = np.asarray(im)[..., 0]
    # window [-160, 240] -> 0..255: -1000 clips to 0, 40 is the middle, 1000 clips to 255
    assert g[0, 0] == 0 and g[0, 1] == 0 and abs(int(g[0, 2]) - 127) <= 1 and g[1, 0] == 255 and g[1, 1] == 255
    assert abs(int(g[1, 2]) - round(160 / 400 * 255)) <= 1
    plain = np.asarray(load_image(str(tmp_path / "ct.png")))[..., 0]  # no window: min-max scaled
    assert plain.min() == 0 and plain.max() == 255
