"""Template writer: labels verbatim, parseable boxes in every format, normal answers, determinism, variety."""
import pytest

from umedfast.boxes import FORMATS, parse_boxes, quantization_step
from umedfast.data import MAURecord, record_targets
from umedfast.data.templates import apply_template, where_words, write_query, write_response


def _rec(i, findings, size=(512, 384)):
    return MAURecord(id=f"id{i}", image="x.png", source="synth-nih", modality="X-ray", findings=findings, query="",
                     response="", image_size=list(size))


TWO = [{"label": "nodule", "box_xyxy": [10, 20, 60, 70]}, {"label": "pleural thing", "box_xyxy": [300, 100, 500, 380]}]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("style", ["full", "compact"])
def test_labels_verbatim_and_boxes_parse_back(fmt, style):
    r = apply_template(_rec(1, TWO), fmt=fmt, style=style)
    for f in TWO:
        assert f["label"] in r.response
    got = parse_boxes(r.response, fmt, image_size=tuple(r.image_size))
    want = [b for _, b in record_targets(r)]
    assert len(got) == 2
    qx, qy = quantization_step(fmt, tuple(r.image_size))
    for g, w in zip(got, want):
        assert all(abs(a - b) <= q + 1e-9 for a, b, q in zip(g, w, (qx, qy, qx, qy)))
    assert r.meta["box_format"] == fmt and r.query


@pytest.mark.parametrize("style", ["full", "compact"])
def test_normal_says_so_and_has_no_box(style):
    for i in range(6):
        r = apply_template(_rec(i, []), style=style)
        assert parse_boxes(r.response) == []
        assert "no abnormal" in r.response.lower() or "nothing abnormal" in r.response.lower()
        assert "normal" in r.response.lower()


def test_steps_in_order_and_deterministic():
    a = write_response(TWO[:1], (512, 384), "X-ray", key="k")
    assert a == write_response(TWO[:1], (512, 384), "X-ray", key="k")
    assert a.index("Detection") < a.index("Localization") < a.index("Recognition")


def test_several_phrasings_and_compact_length():
    full = {write_response(TWO[:1], (512, 384), "X-ray", key=f"k{i}") for i in range(30)}
    assert len(full) >= 5
    qs = {write_query("CT", key=f"k{i}") for i in range(30)}
    assert len(qs) >= 3
    for i in range(30):
        n = len(write_response(TWO[:1], (512, 384), "X-ray", key=f"k{i}", style="compact").split())
        n += len(write_query("X-ray", key=f"k{i}", style="compact").split())
        assert 15 <= n <= 50


def test_where_words():
    assert where_words((0.0, 0.0, 0.2, 0.2)) == "upper left"
    assert where_words((0.4, 0.4, 0.6, 0.6)) == "central"
    assert where_words((0.8, 0.4, 1.0, 0.6)) == "middle right"


def test_unknown_style():
    with pytest.raises(ValueError, match="style"):
        write_query("CT", key="a", style="nope")
