"""MAU-Synth: determinism, coverage (classes, normals, two lesions), box sizes, and that class and location are
readable from the pixels (a nearest-centroid classifier on box crops; lesion contrast against its surround)."""
import hashlib
from collections import Counter

import numpy as np
import pytest

from umedfast.boxes import parse_boxes
from umedfast.data import load_image, read_mau, record_targets
from umedfast.data import synth


def _digest(d):
    h = hashlib.sha256()
    for p in sorted((d / "images").iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth_big")
    return d, synth.generate(400, d, seed=1, progress=False, workers=1)


def test_deterministic_and_independent_of_workers(tmp_path):
    a = synth.generate(24, tmp_path / "a", seed=7, progress=False, workers=1)
    b = synth.generate(24, tmp_path / "b", seed=7, progress=False, workers=2)
    c = synth.generate(24, tmp_path / "c", seed=8, progress=False, workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert [(r.findings, r.response, r.split) for r in a] == [(r.findings, r.response, r.split) for r in b]
    assert (tmp_path / "a" / "mau_synth.jsonl").read_text().replace("/a/", "/b/") == \
        (tmp_path / "b" / "mau_synth.jsonl").read_text().replace("/a/", "/b/")


def test_coverage(big):
    d, recs = big
    assert len(recs) == 400 and len(read_mau(d / "mau_synth.jsonl")) == 400
    labels = Counter(f["label"] for r in recs for f in r.findings)
    assert len(labels) >= 8 and min(labels.values()) >= 5, labels
    assert set(r.source for r in recs) == set(synth.SYNTH_SOURCES)
    assert set(r.modality for r in recs) == {"CT", "X-ray", "endoscopy"}
    n_findings = Counter(len(r.findings) for r in recs)
    assert n_findings[0] >= 20 and n_findings[2] >= 10
    splits = Counter(r.split for r in recs)
    assert splits["train"] > splits["val"] > 10 and splits["test"] > 10


def test_boxes_sizes_and_text(big):
    _, recs = big
    for r in recs:
        assert r.image_size == [224, 224]
        for lab, (x1, y1, x2, y2) in record_targets(r):
            side = max(x2 - x1, y2 - y1)
            assert 0.07 <= side <= 0.45, (r.id, lab, side)
            assert lab in r.response
        got = parse_boxes(r.response)
        assert len(got) == len(r.findings)
        for g, (_, t) in zip(got, record_targets(r)):
            assert max(abs(a - b) for a, b in zip(g, t)) <= 0.0005 + 1e-9
        boxes = [f["box_xyxy"] for f in r.findings]
        if len(boxes) == 2:  # two lesions never overlap
            (a, b) = boxes
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _features(img: np.ndarray, box):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    crop = img[y1:y2, x1:x2].astype(np.float32) / 255.0
    gray = crop.mean(axis=2)
    gy, gx = np.gradient(gray)
    ring = img[max(0, y1 - 8):y2 + 8, max(0, x1 - 8):x2 + 8].astype(np.float32).mean() / 255.0
    return np.array([gray.mean(), gray.std(), np.hypot(gx, gy).mean() * 10, (x2 - x1) / 224 * 3, (y2 - y1) / 224 * 3,
                     (gray > 0.8).mean(), gray.mean() - ring, *(crop.reshape(-1, 3).mean(0) - gray.mean())])


def test_class_readable_from_pixels(big):
    """A nearest-centroid classifier on hand features of the box crop separates the classes on held-out images."""
    _, recs = big
    X, y, is_train = [], [], []
    for r in recs:
        img = np.asarray(load_image(r))
        for f in r.findings:
            X.append(_features(img, f["box_xyxy"]))
            y.append(f["label"])
            is_train.append(r.split == "train")
    X, y, is_train = np.array(X), np.array(y), np.array(is_train)
    mu, sd = X[is_train].mean(0), X[is_train].std(0) + 1e-6
    Xn = (X - mu) / sd
    classes = sorted(set(y))
    cent = np.stack([Xn[is_train & (y == c)].mean(0) for c in classes])
    pred = np.array(classes)[np.argmin(((Xn[~is_train, None] - cent[None]) ** 2).sum(-1), axis=1)]
    acc = (pred == y[~is_train]).mean()
    assert acc >= 0.8, acc


def test_lesion_stands_out_from_surround(big):
    """Location is visible: the box content differs from the ring of pixels around it in most lesions."""
    _, recs = big
    diffs = []
    for r in recs[:150]:
        img = np.asarray(load_image(r)).astype(np.float32).mean(axis=2) / 255.0
        for f in r.findings:
            x1, y1, x2, y2 = (int(v) for v in f["box_xyxy"])
            inner = img[y1:y2, x1:x2]
            outer = img[max(0, y1 - 10):y2 + 10, max(0, x1 - 10):x2 + 10]
            ring_mean = (outer.sum() - inner.sum()) / max(1, outer.size - inner.size)
            diffs.append(abs(inner.mean() - ring_mean))
    assert np.mean(np.array(diffs) > 0.04) >= 0.9


def test_normal_images_have_no_lesion_text(big):
    _, recs = big
    normals = [r for r in recs if r.is_normal]
    assert normals and all(parse_boxes(r.response) == [] and "normal" in r.response for r in normals)


def test_compact_style_and_format(tmp_path):
    recs = synth.generate(12, tmp_path, seed=3, box_format="minigptv2", style="compact", progress=False)
    for r in recs:
        assert len(r.response.split()) <= 40
        if r.findings:
            assert "{<" in r.response
            assert len(parse_boxes(r.response, "minigptv2")) == len(r.findings)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth.generate(-1, tmp_path)
