"""Box text formats and conversions: exact strings, tolerant parsing, fuzzed round trips."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from umedfast import boxes
from umedfast.boxes import (FORMATS, format_box, parse_boxes, pixels_to_unit, quantization_step, unit_to_pixels,
                            xywh_to_xyxy, yolo_to_xyxy)

SIZE = (640, 480)


def test_formats_listed():
    assert {"norm1000", "shikra", "minigptv2", "qwen25_abs"} <= set(FORMATS)
    assert boxes.DEFAULT_FORMAT == "norm1000"


@pytest.mark.parametrize("fmt,expected", [
    ("norm1000", "[100,250,500,1000]"),
    ("shikra", "[0.100,0.250,0.500,1.000]"),
    ("minigptv2", "{<10><25><50><100>}"),
    ("qwen25_abs", "[64,120,320,480]"),
])
def test_format_exact(fmt, expected):
    assert format_box((0.1, 0.25, 0.5, 1.0), fmt, image_size=SIZE) == expected


def test_format_orders_and_clamps():
    assert format_box((0.5, 1.2, -0.1, 0.2)) == "[0,200,500,1000]"


def test_format_errors_are_loud():
    with pytest.raises(ValueError, match="unknown box format"):
        format_box((0, 0, 1, 1), "nope")
    with pytest.raises(ValueError, match="image_size"):
        format_box((0, 0, 1, 1), "qwen25_abs")
    with pytest.raises(ValueError, match="non-finite"):
        format_box((0, float("nan"), 1, 1))


def approx_box(a, b, tol=1e-9):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_parse_styles_and_order():
    text = ("Lesion A at [100, 200, 300, 400]; lesion B at (500,600),(700,800) and "
            "C {<10><20><30><40>} then (1 2 3 4).")
    got = parse_boxes(text)
    assert len(got) == 4
    assert approx_box(got[0], (0.1, 0.2, 0.3, 0.4))
    assert approx_box(got[1], (0.5, 0.6, 0.7, 0.8))
    assert approx_box(got[2], (0.01, 0.02, 0.03, 0.04))  # numbers scaled by the requested format
    assert approx_box(got[3], (0.001, 0.002, 0.003, 0.004))


def test_parse_missing_brackets_swapped_clamped():
    assert approx_box(parse_boxes("box 100, 200, 300, 400 here")[0], (0.1, 0.2, 0.3, 0.4))
    assert approx_box(parse_boxes("box [100, 200, 300, 400 and more")[0], (0.1, 0.2, 0.3, 0.4))
    assert approx_box(parse_boxes("[300,400,100,200]")[0], (0.1, 0.2, 0.3, 0.4))
    assert approx_box(parse_boxes("[-50,200,1300,400]")[0], (0.0, 0.2, 1.0, 0.4))
    assert approx_box(parse_boxes("{<10><20><30><140>}", "minigptv2")[0], (0.1, 0.2, 0.3, 1.0))


def test_parse_drops_non_finite_and_keeps_alignment():
    got = parse_boxes("[nan, 1, 2, 3] [inf,0,1,1] [1e999,0,5,5] [100,100,200,200]")
    assert len(got) == 1 and approx_box(got[0], (0.1, 0.1, 0.2, 0.2))


@pytest.mark.parametrize("text", ["", "no box here", "[1,2,3]", "T2-weighted slice 12 of 40", None, 123, b"[1,2,3,4]",
                                  "[a,b,c,d]", "1234", "[[[[", "(1,2),(3)"])
def test_parse_garbage_gives_empty(text):
    assert parse_boxes(text) == []


def test_parse_bad_format_or_size_gives_empty():
    assert parse_boxes("[1,2,3,4]", "nope") == []
    assert parse_boxes("[1,2,3,4]", "qwen25_abs") == []
    assert parse_boxes("[1,2,3,4]", "qwen25_abs", image_size=(0, 10)) == []
    assert approx_box(parse_boxes("[64,120,320,480]", "qwen25_abs", image_size=SIZE)[0], (0.1, 0.25, 0.5, 1.0))


def test_numbers_glued_to_words_are_not_boxes():
    assert parse_boxes("slices 1 2 3 4mm") == []
    assert parse_boxes("version 1.2.3.4") == []


def test_conversions():
    assert xywh_to_xyxy((10, 20, 30, 40)) == (10, 20, 40, 60)
    assert yolo_to_xyxy((0.5, 0.5, 0.2, 0.4)) == pytest.approx((0.4, 0.3, 0.6, 0.7))
    assert yolo_to_xyxy((0.5, 0.5, 0.2, 0.4), image_size=(100, 200)) == pytest.approx((40, 60, 60, 140))
    assert pixels_to_unit((64, 120, 320, 480), SIZE) == pytest.approx((0.1, 0.25, 0.5, 1.0))
    assert unit_to_pixels((0.1, 0.25, 0.5, 1.0), SIZE) == pytest.approx((64, 120, 320, 480))
    with pytest.raises(ValueError):
        pixels_to_unit((0, 0, 1, 1), (0, 5))


unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.tuples(unit, unit, unit, unit), st.sampled_from(sorted(FORMATS)),
       st.tuples(st.integers(1, 4096), st.integers(1, 4096)))
def test_round_trip_within_quantization(b, fmt, size):
    ref = boxes.clip_box01(b)
    text = format_box(b, fmt, image_size=size)
    got = parse_boxes(f"The lesion is at {text}.", fmt, image_size=size)
    assert len(got) == 1
    qx, qy = quantization_step(fmt, size)
    for i, (g, r) in enumerate(zip(got[0], ref)):
        assert abs(g - r) <= (qx if i % 2 == 0 else qy) + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(unit, unit, unit, unit), min_size=0, max_size=5), st.sampled_from(["norm1000", "shikra",
                                                                                               "minigptv2"]))
def test_several_boxes_in_order(bs, fmt):
    text = " and ".join(f"box {i}: {format_box(b, fmt)}" for i, b in enumerate(bs))
    got = parse_boxes(text, fmt)
    assert len(got) == len(bs)
    q, _ = quantization_step(fmt)
    for g, b in zip(got, bs):
        assert all(abs(x - y) <= q + 1e-9 for x, y in zip(g, boxes.clip_box01(b)))


box_chars = st.sampled_from(list("0123456789.,;-+eE []()<>{}naifNAIF\n\t") + ["nan", "inf", "1e999", "to"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(box_chars, max_size=80).map("".join)),
       st.sampled_from(sorted(FORMATS) + ["bogus"]))
def test_arbitrary_text_never_raises(text, fmt):
    got = parse_boxes(text, fmt, image_size=(97, 53))
    assert isinstance(got, list)
    for b in got:
        assert len(b) == 4 and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in b)
        assert b[0] <= b[2] and b[1] <= b[3]


def test_long_adversarial_text_is_fast_enough():
    # Regression guard against catastrophic backtracking: a pathological input must still parse (no timing assert).
    text = "[1" + " " * 20000 + "x" + ",1" * 5000
    assert isinstance(parse_boxes(text), list)


def test_runs_of_more_than_four_numbers_are_not_boxes():
    # A half-trained model writes "[25,4,32,4,4,429]": its first four numbers are not a box, nor is any 4-window.
    assert parse_boxes("[25,4,32,4,4,429]") == []
    assert parse_boxes("1 2 3 4 5") == []
    assert parse_boxes("[25,4,32,4,4,429] then [100,200,300,400]") == [(0.1, 0.2, 0.3, 0.4)]
